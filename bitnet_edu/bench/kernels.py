"""Race the ternary kernels against numpy float32 (OpenBLAS) and a 16-bit baseline at the 2B4T shapes.

    python -m bitnet_edu.bench kernels                       # 4 shapes, 1 and 2 threads, T = 1 and 128
    python -m bitnet_edu.bench kernels --quick --json r.json # small shapes (notebook FAST mode)
    python -m bitnet_edu.bench kernels --threads 2 --shapes 6912x2560 --kernels mad tl1

For a fair numpy baseline unset OpenBLAS's core-type override in this command only:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bitnet_edu.bench kernels``.

GEMV weights are cycled through ``--cold-mb`` of copies so they come from memory, not cache;
"GB/s" is packed weight bytes per second, to compare with the memory bandwidth measured in
the same run.  GOPS counts a multiply-add as 2 operations.  Every ratio is against numpy
float32 on the same shape, same thread count, same run, and against a 16-bit baseline: torch
bfloat16 when torch is installed, else a NumPy float16 GEMV (NumPy has no float16 BLAS: it
reads the same 2 bytes per weight but computes slowly, so it flatters the ternary kernels).
Published bitnet.cpp speedups (arXiv 2410.16144) are against llama.cpp **fp16**, 2 bytes per
weight; float32 reads twice that, so "x float32" is the larger, less honest number.

Every time is the median of ``repeat`` sweeps, with the quartiles and min/max kept (``ms_q1``,
``ms_q3``, ``ms_min``, ``ms_max``), and the 1-minute load average is recorded before and after:
on a busy machine (load > 0.5 per idle core you meant to use) the spread widens and the
medians move; ``format_table`` says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
from numba import njit, prange

from .. import kernels as K
from ..config import BitNetConfig

#: (out, in) of the 2B4T projections: q/o, k/v, gate/up, down
SHAPES_2B4T = list(BitNetConfig.preset("2b4t").matrix_shapes())
QUICK_SHAPES = [(512, 512), (1024, 1024)]
MAX_EST_S = 3.0  # skip a GEMM whose estimate (GEMV time x T) exceeds this


# --- helpers ------------------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _sum_bytes(a):
    """Sum of an int64 array: a pure streaming read, for the bandwidth figure."""
    s = np.int64(0)
    for i in prange(a.shape[0]):
        s += a[i]
    return s


def _blas_limit(threads):
    """Context manager limiting OpenBLAS threads (threadpoolctl), or a no-op without it."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(threads)
    except ImportError:  # pragma: no cover
        import contextlib
        return contextlib.nullcontext()


def _sweep_times(fn, copies, repeat):
    """Seconds per call of fn(copy), one figure per sweep through all copies (`repeat` sweeps)."""
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for c in copies:
            fn(c)
        ts.append((time.perf_counter() - t0) / len(copies))
    return ts


def spread(ts) -> dict:
    """median, quartiles, min and max of a list of times, and the relative spread (IQR/median)."""
    ts = np.asarray(ts, float)
    q1, med, q3 = np.percentile(ts, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(ts.min()),
            "max": float(ts.max()), "rel_iqr": float((q3 - q1) / med) if med > 0 else 0.0,
            "n": int(ts.size)}


def _median_time(fn, copies, repeat):
    """Median seconds per call of fn(copy) over `repeat` sweeps through all copies."""
    return spread(_sweep_times(fn, copies, repeat))["median"]


# the load check lives with the thread policy; these names stay importable from here
from ..cpu_threads import BUSY_LOAD, busy_warning, loadavg  # noqa: E402,F401


def memory_bandwidth_stats(mb: int, threads: int, repeat: int = 5) -> dict:
    """Streaming read bandwidth in GB/s with `threads` Numba threads: median, min, max of
    `repeat` reads of an `mb`-MiB array (larger than the caches, so it comes from DRAM)."""
    a = np.ones(mb * 2**20 // 8, np.int64)
    numba.set_num_threads(threads)
    _sum_bytes(a)
    gbs = [a.nbytes / _timeit(lambda: _sum_bytes(a)) / 1e9 for _ in range(repeat)]
    return {"median": float(np.median(gbs)), "min": float(min(gbs)), "max": float(max(gbs)),
            "n": repeat}


def memory_bandwidth(mb: int, threads: int, repeat: int = 5) -> float:
    """Streaming read bandwidth in GB/s with `threads` Numba threads (the median of `repeat`)."""
    return memory_bandwidth_stats(mb, threads, repeat)["median"]


def _timeit(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compile_costs(names, timeout=600) -> dict:
    """First-call seconds per kernel in a fresh process: with an empty cache (compile) and again
    with the cache it left behind (cached load)."""
    code = ("import time, numpy as np; from bitnet_edu import kernels as K; k = K.get({n!r}); "
            "p = k.pack(np.ones((8, 256), np.int8)); x = np.ones(256, np.int8); "
            "t = time.perf_counter(); k.matmul(p, x); k.linear(p, x, 1.0, 1.0); "
            "print(time.perf_counter() - t)")
    out = {}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        for n in names:
            runs = [subprocess.run([sys.executable, "-c", code.format(n=n)], env=env, text=True,
                                   capture_output=True, timeout=timeout) for _ in range(2)]
            if any(r.returncode for r in runs):
                out[n] = {"error": runs[0].stderr.strip().splitlines()[-1:]}
                continue
            out[n] = {"compile_s": float(runs[0].stdout), "cached_s": float(runs[1].stdout)}
    return out


def _weights_and_x(out, k, t, copies_mb, rng):
    w = rng.standard_normal((out, k)).astype(np.float32)
    x = rng.standard_normal((t, k) if t > 1 else (k,)).astype(np.float32)
    n = max(1, min(16, int(copies_mb * 2**20 // w.nbytes))) if t == 1 else 1
    return [w] + [w.copy() for _ in range(n - 1)], x


def numpy_baseline(out, k, t, threads, copies_mb, repeat, rng) -> float:
    """numpy float32 (OpenBLAS) seconds per call of x[t, k] @ W.T."""
    ws, x = _weights_and_x(out, k, t, copies_mb, rng)
    with _blas_limit(threads):
        return _median_time(lambda a: x @ a.T, ws, repeat)


def torch_baseline(out, k, t, threads, copies_mb, repeat, rng, stats=False):
    """torch bfloat16 seconds per call (median; ``stats=True``: the :func:`spread` dict), or None
    without torch.  Run it LAST: once torch's OpenMP pool exists, it competes with OpenBLAS's and
    Numba's threads (10x slowdowns on 2 cores)."""
    try:
        import torch
    except ImportError:
        return None
    ws, x = _weights_and_x(out, k, t, copies_mb, rng)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wt = [torch.from_numpy(a).to(torch.bfloat16) for a in ws]
        xt = torch.from_numpy(x).to(torch.bfloat16)
        with torch.inference_mode():
            st = spread(_sweep_times(lambda a: xt @ a.T, wt, repeat))
        return st if stats else st["median"]
    finally:
        torch.set_num_threads(old)


def numpy_f16_baseline(out, k, t, copies_mb, repeat, rng, stats=False):
    """NumPy float16 seconds per call of x[t, k] @ W.T: the 16-bit stand-in when torch is missing.
    NumPy has no float16 BLAS (one thread, converted element by element), so this is a slow,
    compute-bound 16-bit baseline: it reads 2 bytes per weight like llama.cpp's fp16, nothing more."""
    ws, x = _weights_and_x(out, k, t, copies_mb, rng)
    ws, x = [a.astype(np.float16) for a in ws], x.astype(np.float16)
    st = spread(_sweep_times(lambda a: x @ a.T, ws, repeat))
    return st if stats else st["median"]


def baseline16_name() -> str:
    """Which 16-bit baseline this environment races: torch bf16 if torch imports, else NumPy fp16."""
    try:
        import torch  # noqa: F401
        return "torch bf16"
    except ImportError:
        return "numpy f16"


# --- the race -------------------------------------------------------------------------------------

def run(shapes=None, threads=(1, 2), tokens=(1, 128), names=None, quick=False, cold_mb=None,
        repeat=None, compile_cost=None, torch_bf16=True, seed=0, log=print) -> dict:
    """Run the race and return a JSON-able dict: machine, load, bandwidth, compile costs, rows.

    ``torch_bf16=True`` adds the 16-bit baseline (``baseline16``: torch bf16, or NumPy float16
    where torch is missing), measured after everything else; each row then has ``b16_ms`` and
    ``vs_b16`` (and, with torch, the older ``torch_bf16_ms`` / ``vs_torch_bf16``)."""
    shapes = shapes or (QUICK_SHAPES if quick else SHAPES_2B4T)
    names = list(names or K.available())
    cold_mb = cold_mb if cold_mb is not None else (8 if quick else 400)
    repeat = repeat or (5 if quick else 7)
    if quick:
        tokens = tuple(min(t, 16) for t in tokens)
    rng = np.random.default_rng(seed)
    threads = [min(t, numba.config.NUMBA_NUM_THREADS) for t in threads]
    result = {"machine": _machine(), "threads": threads, "tokens": list(tokens),
              "shapes": [list(s) for s in shapes], "cold_mb": cold_mb, "repeat": repeat, "rows": [],
              "bandwidth_gbs": {}, "bandwidth": {}, "default": K.DEFAULT,
              "loadavg_before": loadavg(), "cpu_count": os.cpu_count()}
    if result["loadavg_before"] is not None:
        log(f"1-minute load average before the race: {result['loadavg_before']:.2f}")
    for th in threads:
        st = memory_bandwidth_stats(64 if quick else 1024, th)
        result["bandwidth"][str(th)], result["bandwidth_gbs"][str(th)] = st, st["median"]
        log(f"memory read bandwidth, {th} thread(s): {st['median']:.1f} GB/s "
            f"(min {st['min']:.1f}, max {st['max']:.1f})")
    if compile_cost if compile_cost is not None else not quick:
        log("measuring first-call compile cost in fresh processes ...")
        result["compile"] = compile_costs(names)
    for out, k in shapes:
        w = rng.integers(-1, 2, (out, k)).astype(np.int8)
        packs = {n: K.get(n).pack(w) for n in names}
        for t in tokens:
            x = rng.integers(-128, 128, (t, k) if t > 1 else (k,)).astype(np.int8)
            for th in threads:
                numba.set_num_threads(th)
                ws, xf = _weights_and_x(out, k, t, cold_mb, rng)
                with _blas_limit(th):
                    base = {"numpy_f32": spread(_sweep_times(lambda a: xf @ a.T, ws, repeat))}
                del ws
                gemv_ms = {}
                for n in names:
                    row = _race_one(n, packs[n], x, t, th, cold_mb, repeat, base, result, gemv_ms)
                    if row:
                        log(_fmt_row(row))
    if torch_bf16:
        _add_b16(result, cold_mb, repeat, rng, log)
    result["loadavg_after"] = loadavg()
    result["rel_iqr_median"] = (float(np.median([r["rel_iqr"] for r in result["rows"]]))
                                if result["rows"] else None)
    result["busy"] = bool(busy_warning(result["loadavg_before"], result["loadavg_after"]))
    warn = busy_warning(result["loadavg_before"], result["loadavg_after"], result["rel_iqr_median"])
    if warn:
        log(warn)
    return result


def _add_b16(result, cold_mb, repeat, rng, log):
    """16-bit baselines for every (shape, T, threads) raced, measured after all the rest."""
    name = baseline16_name()
    result["baseline16"] = name
    cases = sorted({(r["out"], r["in"], r["T"], r["threads"]) for r in result["rows"]})
    for out, k, t, th in cases:
        if name == "torch bf16":
            st = torch_baseline(out, k, t, th, cold_mb, repeat, rng, stats=True)
        else:
            if 2 * out * k * t > 2e9:  # NumPy float16 runs ~1 GFLOP/s: skip the big GEMMs
                continue
            st = numpy_f16_baseline(out, k, t, cold_mb, repeat, rng, stats=True)
        s = st["median"]
        log(f"{name} {out}x{k} T={t} {th} thread(s): {s * 1e3:.3f} ms")
        for r in result["rows"]:
            if (r["out"], r["in"], r["T"], r["threads"]) == (out, k, t, th):
                r["b16_ms"], r["vs_b16"] = s * 1e3, s / (r["ms"] / 1e3)
                r["b16_ms_min"], r["b16_ms_max"] = st["min"] * 1e3, st["max"] * 1e3
                if name == "torch bf16":
                    r["torch_bf16_ms"], r["vs_torch_bf16"] = r["b16_ms"], r["vs_b16"]


_add_torch = _add_b16  # the older name


def _race_one(name, packed, x, t, th, cold_mb, repeat, base, result, gemv_ms):
    kern = K.get(name)
    out, k = packed.shape
    est = result.get("_est", {}).get((name, out, k, th))
    if t > 1 and not kern.fast_gemm and est is not None and est * t > MAX_EST_S:
        return None  # a lookup-table or naive GEMM at T=128 would take minutes
    kern.matmul(packed, x)  # compile / load
    n = max(1, min(64, int(cold_mb * 2**20 // packed.nbytes))) if t == 1 else 1
    copies = [packed] + [K.Packed(packed.kernel, out, k, tuple(a.copy() for a in packed.arrays))
                         for _ in range(n - 1)]
    with _blas_limit(th):  # mad's GEMM path runs on OpenBLAS: same thread count as numba
        st = spread(_sweep_times(lambda p: kern.matmul(p, x), copies, repeat))
    s = st["median"]
    if t == 1:
        result.setdefault("_est", {})[(name, out, k, th)] = s
    f32 = base["numpy_f32"]
    row = {"kernel": name, "out": out, "in": k, "T": t, "threads": th, "ms": s * 1e3,
           "ms_q1": st["q1"] * 1e3, "ms_q3": st["q3"] * 1e3, "ms_min": st["min"] * 1e3,
           "ms_max": st["max"] * 1e3, "rel_iqr": st["rel_iqr"], "repeat": st["n"],
           "ms_per_token": s * 1e3 / t, "weight_gbs": packed.nbytes / s / 1e9,
           "gops": 2 * out * k * t / s / 1e9, "bits_per_weight": packed.bits_per_weight,
           "numpy_f32_ms": f32["median"] * 1e3, "vs_numpy_f32": f32["median"] / s,
           "numpy_f32_ms_min": f32["min"] * 1e3, "numpy_f32_ms_max": f32["max"] * 1e3}
    result["rows"].append(row)
    return row


def _machine() -> dict:
    info = {"python": platform.python_version(), "numba": numba.__version__, "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threading_layer": None, "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        import llvmlite.binding as ll
        info["cpu"] = ll.get_host_cpu_name()
    except Exception:  # pragma: no cover
        pass
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [f"{d.get('internal_api')} {d.get('version')} {d.get('architecture')}"
                        for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:  # pragma: no cover
        pass
    return info


# --- printing ------------------------------------------------------------------------------------

HEADER = (f"{'shape (out x in)':>16} {'T':>4} {'thr':>3} {'kernel':>7} {'ms/call':>9} {'±IQR%':>6} "
          f"{'ms/tok':>8} {'GB/s':>6} {'GOPS':>7} {'bits/w':>6} {'np f32 ms':>9} {'x np f32':>8} "
          f"{'x 16bit':>7}")


def _fmt_row(r) -> str:
    bf = f"{r['vs_b16']:7.2f}" if "vs_b16" in r else f"{'-':>7}"
    return (f"{r['out']:>7} x {r['in']:<6} {r['T']:>4} {r['threads']:>3} {r['kernel']:>7} "
            f"{r['ms']:9.3f} {100 * r.get('rel_iqr', 0):6.1f} {r['ms_per_token']:8.3f} "
            f"{r['weight_gbs']:6.1f} {r['gops']:7.1f} "
            f"{r['bits_per_weight']:6.2f} {r['numpy_f32_ms']:9.3f} {r['vs_numpy_f32']:8.2f} {bf}")


def format_table(result) -> str:
    """The race as a text table, plus load, bandwidth, compile costs and thread scaling."""
    la = [result.get("loadavg_before"), result.get("loadavg_after")]
    lines = [f"machine: {result['machine']}",
             "1-minute load average: " + " -> ".join("n/a" if v is None else f"{v:.2f}" for v in la)
             + f" ({result.get('cpu_count')} logical CPUs)",
             "memory read bandwidth: " + ", ".join(f"{v:.1f} GB/s ({k} thr)"
                                                  for k, v in result["bandwidth_gbs"].items()),
             f"times: median of {result.get('repeat', '?')} sweeps; ±IQR% = interquartile range / median; "
             f"x 16bit = vs {result.get('baseline16', '(16-bit baseline not run)')}",
             HEADER]
    lines += [_fmt_row(r) for r in result["rows"]]
    by = {(r["kernel"], r["out"], r["in"], r["T"], r["threads"]): r["ms"] for r in result["rows"]}
    scal = [f"{n} {o}x{i} T={t}: {by[(n, o, i, t, 1)] / by[(n, o, i, t, 2)]:.2f}x"
            for (n, o, i, t, th) in by if th == 2 and (n, o, i, t, 1) in by]
    if scal:
        lines.append("1 -> 2 thread speedup: " + "; ".join(scal))
    for n, c in result.get("compile", {}).items():
        if "compile_s" in c:
            lines.append(f"first call of {n}: compile {c['compile_s']:.2f} s, "
                         f"from cache {c['cached_s']:.2f} s")
    warn = busy_warning(la[0], la[1], result.get("rel_iqr_median"))
    if warn:
        lines.append(warn)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitnet_edu.bench kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shapes", nargs="+", help="OUTxIN, e.g. 6912x2560 (default: the 4 2B4T shapes)")
    ap.add_argument("--tokens", "-T", type=int, nargs="+", default=[1, 128],
                    help="tokens per call: 1 = GEMV (decode), 128 = GEMM (prefill)")
    ap.add_argument("--kernels", nargs="+", choices=K.available())
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (CI / notebook)")
    ap.add_argument("--cold-mb", type=int, help="MB of weight copies cycled through for GEMV")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--no-torch", action="store_true",
                    help="skip the 16-bit baseline (torch bf16, or NumPy float16 without torch)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile-cost subprocesses")
    ap.add_argument("--json", help="save the results here (the notebook plots them)")
    a = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes] if a.shapes else None
    if os.environ.get("OPENBLAS_CORETYPE"):
        print(f"note: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} slows the numpy baseline; "
              "run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` for a fair one")
    print(HEADER)
    res = run(shapes, a.threads, a.tokens, a.kernels, a.quick, a.cold_mb, a.repeat,
              False if a.no_compile else None, not a.no_torch, log=lambda s: print(s, flush=True))
    res.pop("_est", None)
    print()
    print(format_table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
        print(f"saved {a.json}")
    return 0
