"""Race the ternary kernels against numpy float32 (OpenBLAS) at the 2B4T shapes.

    python -m bitnet_edu.bench kernels                       # 4 shapes, 1 and 2 threads, T = 1 and 128
    python -m bitnet_edu.bench kernels --quick --json r.json # small shapes (notebook FAST mode)
    python -m bitnet_edu.bench kernels --threads 2 --shapes 6912x2560 --kernels mad tl1

For a fair numpy baseline unset OpenBLAS's core-type override in this command only:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bitnet_edu.bench kernels``.

GEMV weights are cycled through ``--cold-mb`` of copies so they come from memory, not cache;
"GB/s" is packed weight bytes per second, to compare with the memory bandwidth measured in
the same run.  GOPS counts a multiply-add as 2 operations.  Every ratio is against numpy
float32 on the same shape, same thread count, same run.
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


def _median_time(fn, copies, repeat):
    """Median seconds per call of fn(copy) over `repeat` sweeps through all copies."""
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for c in copies:
            fn(c)
        ts.append((time.perf_counter() - t0) / len(copies))
    return float(np.median(ts))


def memory_bandwidth(mb: int, threads: int, repeat: int = 5) -> float:
    """Streaming read bandwidth in GB/s with `threads` Numba threads."""
    a = np.ones(mb * 2**20 // 8, np.int64)
    numba.set_num_threads(threads)
    _sum_bytes(a)
    t = min(_timeit(lambda: _sum_bytes(a)) for _ in range(repeat))
    return a.nbytes / t / 1e9


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


def torch_baseline(out, k, t, threads, copies_mb, repeat, rng):
    """torch bfloat16 seconds per call, or None without torch.  Run it LAST: once torch's OpenMP
    pool exists, it competes with OpenBLAS's and Numba's threads (10x slowdowns on 2 cores)."""
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
            return _median_time(lambda a: xt @ a.T, wt, repeat)
    finally:
        torch.set_num_threads(old)


# --- the race -------------------------------------------------------------------------------------

def run(shapes=None, threads=(1, 2), tokens=(1, 128), names=None, quick=False, cold_mb=None,
        repeat=None, compile_cost=None, torch_bf16=True, seed=0, log=print) -> dict:
    """Run the race and return a JSON-able dict: machine, bandwidth, compile costs, rows."""
    shapes = shapes or (QUICK_SHAPES if quick else SHAPES_2B4T)
    names = list(names or K.available())
    cold_mb = cold_mb if cold_mb is not None else (8 if quick else 400)
    repeat = repeat or (3 if quick else 7)
    if quick:
        tokens = tuple(min(t, 16) for t in tokens)
    rng = np.random.default_rng(seed)
    threads = [min(t, numba.config.NUMBA_NUM_THREADS) for t in threads]
    result = {"machine": _machine(), "threads": threads, "tokens": list(tokens),
              "shapes": [list(s) for s in shapes], "cold_mb": cold_mb, "rows": [],
              "bandwidth_gbs": {}, "default": K.DEFAULT}
    for th in threads:
        result["bandwidth_gbs"][str(th)] = memory_bandwidth(64 if quick else 1024, th)
        log(f"memory read bandwidth, {th} thread(s): {result['bandwidth_gbs'][str(th)]:.1f} GB/s")
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
                base = {"numpy_f32": numpy_baseline(out, k, t, th, cold_mb, repeat, rng)}
                gemv_ms = {}
                for n in names:
                    row = _race_one(n, packs[n], x, t, th, cold_mb, repeat, base, result, gemv_ms)
                    if row:
                        log(_fmt_row(row))
    if torch_bf16:
        _add_torch(result, cold_mb, repeat, rng, log)
    return result


def _add_torch(result, cold_mb, repeat, rng, log):
    """torch bf16 baselines for every (shape, T, threads) raced, measured after all the rest."""
    cases = sorted({(r["out"], r["in"], r["T"], r["threads"]) for r in result["rows"]})
    for out, k, t, th in cases:
        s = torch_baseline(out, k, t, th, cold_mb, repeat, rng)
        if s is None:
            return
        log(f"torch bf16 {out}x{k} T={t} {th} thread(s): {s * 1e3:.3f} ms")
        for r in result["rows"]:
            if (r["out"], r["in"], r["T"], r["threads"]) == (out, k, t, th):
                r["torch_bf16_ms"], r["vs_torch_bf16"] = s * 1e3, s / (r["ms"] / 1e3)


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
        s = _median_time(lambda p: kern.matmul(p, x), copies, repeat)
    if t == 1:
        result.setdefault("_est", {})[(name, out, k, th)] = s
    row = {"kernel": name, "out": out, "in": k, "T": t, "threads": th, "ms": s * 1e3,
           "ms_per_token": s * 1e3 / t, "weight_gbs": packed.nbytes / s / 1e9,
           "gops": 2 * out * k * t / s / 1e9, "bits_per_weight": packed.bits_per_weight,
           "numpy_f32_ms": base["numpy_f32"] * 1e3, "vs_numpy_f32": base["numpy_f32"] / s}
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

HEADER = (f"{'shape (out x in)':>16} {'T':>4} {'thr':>3} {'kernel':>7} {'ms/call':>9} {'ms/tok':>8} "
          f"{'GB/s':>6} {'GOPS':>7} {'bits/w':>6} {'np f32 ms':>9} {'x np f32':>8} {'x bf16':>7}")


def _fmt_row(r) -> str:
    bf = f"{r['vs_torch_bf16']:7.2f}" if "vs_torch_bf16" in r else f"{'-':>7}"
    return (f"{r['out']:>7} x {r['in']:<6} {r['T']:>4} {r['threads']:>3} {r['kernel']:>7} "
            f"{r['ms']:9.3f} {r['ms_per_token']:8.3f} {r['weight_gbs']:6.1f} {r['gops']:7.1f} "
            f"{r['bits_per_weight']:6.2f} {r['numpy_f32_ms']:9.3f} {r['vs_numpy_f32']:8.2f} {bf}")


def format_table(result) -> str:
    """The race as a text table, plus bandwidth, compile costs and thread scaling."""
    lines = [f"machine: {result['machine']}",
             "memory read bandwidth: " + ", ".join(f"{v:.1f} GB/s ({k} thr)"
                                                  for k, v in result["bandwidth_gbs"].items()),
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
    ap.add_argument("--no-torch", action="store_true", help="skip the torch bf16 baseline")
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
