"""Checks for Lesson 03 (kernels): naive GEMV, the TL1 table, an I2_S byte, the T-MAC table,
a Numba GEMV that beats ``naive``, and a decode roofline estimate.

Each check compares the student's function with the package's kernels on random inputs and
on the extremes (all +1 / all -1 weights, activations -128 and 127), and names the classic
mistakes it recognises (int8/int16 overflow in the accumulator, a forgotten offset, bits
counted as bytes, ...).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import time

import numpy as np

from .. import kernels as K
from ..config import BitNetConfig
from ..kernels import mad, reference_matmul, tl1, tmac
from . import _core
from ._core import as_array, check, expect_equal, student_call

__all__ = ["check_naive_gemv", "check_tl1_table", "check_decode_i2s_byte", "check_tmac_table",
           "check_fast_gemv", "check_roofline_tok_s"]


@check
def check_naive_gemv(naive_gemv):
    """``naive_gemv(w int8 [out, in], x int8 [in]) -> int32 [out]`` equal to ``w @ x``."""
    rng = np.random.default_rng(0)
    cases = {
        "random [6, 10]": (rng.integers(-1, 2, (6, 10)), rng.integers(-128, 128, 10)),
        "all +1 weights, x = -128": (np.ones((2, 300)), np.full(300, -128)),
        "all -1 weights, x = -128 (int8 overflow if you do not widen)": (-np.ones((2, 300)),
                                                                         np.full(300, -128)),
        "one row [1, 1]": (np.array([[-1]]), np.array([7])),
    }
    for what, (w, x) in cases.items():
        w, x = w.astype(np.int8), x.astype(np.int8)
        want = reference_matmul(w, x)
        expect_equal(student_call(naive_gemv, w, x), want, f"naive_gemv on {what}")


@check
def check_tl1_table(build_tl1_table):
    """``build_tl1_table(x0, x1) -> 9 ints``: entry ``3*(a+1) + (b+1)`` is ``a*x0 + b*x1``."""
    for x0, x1 in [(5, -7), (0, 0), (-128, -128), (127, -128), (1, 2)]:
        want = tl1.build_table(np.array([[x0, x1]], np.int8))[0, 0, :9]
        what = f"TL1 table for x = ({x0}, {x1})"
        got = as_array(student_call(build_tl1_table, np.int8(x0), np.int8(x1)), what).reshape(-1)
        if got.size == 9 and got[0] == -want[0] != 0:
            raise AssertionError(f"x=({x0}, {x1}): entry 0 must be for (a, b) = (-1, -1), "
                                 f"i.e. -x0 - x1 = {want[0]}; your table looks negated")
        expect_equal(got, want, what)


@check
def check_decode_i2s_byte(decode_i2s_byte):
    """``decode_i2s_byte(b) -> 4 weights`` at offsets 0, 32, 64, 96 (shifts 6, 4, 2, 0)."""
    for b in [0b10_01_00_10, 0b01_01_01_01, 0, 0b10_10_10_10, 0b00_01_10_01]:
        what, want = f"decode_i2s_byte({b:#010b})", mad.decode_byte(b)
        got = as_array(student_call(decode_i2s_byte, np.uint8(b)), what)
        expect_equal(got.reshape(-1), want, what)


@check
def check_tmac_table(build_tmac_table):
    """``build_tmac_table(x4) -> 16 ints``: entry ``m`` sums the ``x4[i]`` whose bit ``i`` is set in ``m``."""
    rng = np.random.default_rng(1)
    for x4 in [np.array([1, 2, 4, 8]), rng.integers(-128, 128, 4), np.full(4, -128), np.zeros(4)]:
        x4 = x4.astype(np.int8)
        want = tmac.build_table(x4.reshape(1, 4))[0, 0]
        what = f"T-MAC table for x = {x4.tolist()}"
        expect_equal(as_array(student_call(build_tmac_table, x4), what).reshape(-1), want, what)


# --- a Numba GEMV that beats naive ---------------------------------------------------------------

OVERFLOW = "int8/int16 overflow in the accumulator"


def _wrap(v, bits):
    v = np.asarray(v, np.int64)
    half = 1 << (bits - 1)
    return (v + half) % (1 << bits) - half


def _gemv_cases():
    rng = np.random.default_rng(3)
    cases = {
        "random [64, 512]": (rng.integers(-1, 2, (64, 512)), rng.integers(-128, 128, 512)),
        "random [37, 300] (`in` not a multiple of 4 or 128)": (rng.integers(-1, 2, (37, 300)),
                                                              rng.integers(-128, 128, 300)),
        "all -1 weights, x = -128, in = 1024 (sum 131072)": (-np.ones((3, 1024)),
                                                             np.full(1024, -128)),
        "all +1 weights, x = 127, in = 640": (np.ones((2, 640)), np.full(640, 127)),
        "mixed signs, x in {-128, 127}": (rng.integers(-1, 2, (16, 768)),
                                          rng.choice([-128, 127], 768)),
        "one row [1, 1]": (np.array([[-1]]), np.array([-128])),
    }
    return {k: (w.astype(np.int8), x.astype(np.int8)) for k, (w, x) in cases.items()}


@contextlib.contextmanager
def _numba_deadline(fn, seconds):
    """A hard deadline for compiled code: a loop inside an @njit function holds the interpreter,
    so neither the check's timeout nor Kernel -> Interrupt can stop it.  faulthandler's watchdog
    runs in C: at the deadline it ends the process (the notebook says "kernel died" / restarts)
    instead of leaving the cell hanging for ever."""
    if not hasattr(fn, "py_func") or seconds <= 0 or not hasattr(faulthandler, "dump_traceback_later"):
        yield
        return
    devnull = open(os.devnull, "w")
    try:
        faulthandler.dump_traceback_later(seconds, exit=True, file=devnull)
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        devnull.close()


def _terminates_in_child(fn, calls, seconds):
    """Run ``fn(*args)`` for each ``args`` in ``calls`` in a forked child first, so that a loop
    that never ends (compiled code holds the interpreter: no timeout or interrupt reaches it)
    ends the child, not the notebook's kernel.  Raises AssertionError on a timeout or a crash of
    the child; returns without a result (the caller then runs ``fn`` itself).  Without ``fork``
    (Windows) it does nothing and :func:`_numba_deadline` is the only guard."""
    if not hasattr(os, "fork") or not hasattr(fn, "py_func"):
        return
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: call, report the outcome in one byte, leave without cleanup
        code = b"0"
        try:
            for args in calls:
                fn(*args)
        except BaseException:  # noqa: BLE001 - the parent's own call will report it properly
            code = b"1"
        os.write(wr, code)
        os._exit(0)
    os.close(wr)
    deadline = time.monotonic() + seconds
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError(
                    f"your gemv did not return within {seconds:.0f} s — an endless loop? (a loop "
                    f"index that never reaches its bound, or a while loop whose condition never "
                    f"changes). It ran in a separate process, so your kernel is fine.")
            time.sleep(0.02)
        if os.read(rd, 1) == b"" and os.WIFSIGNALED(status):
            raise AssertionError(
                f"your gemv crashed the process it ran in (signal {os.WTERMSIG(status)}): an "
                f"index outside an array? Numba does not check bounds (boundscheck=True "
                f"in @njit helps while debugging). Your kernel is fine: it ran separately.")
    finally:
        os.close(rd)


def _diagnose_gemv(got, w, x, want, what):
    """A named classic mistake when ``got`` matches one, else None."""
    g = np.asarray(got).astype(np.int64).reshape(-1)
    want64 = want.astype(np.int64)
    x64 = x.astype(np.int64)
    if g.size != want.size:
        if g.size == w.shape[1]:
            return (f"{what}: {g.size} values, one per *input*: the result has one value per output "
                    f"row (`out` = {w.shape[0]}); did you sum over the wrong axis?")
        return f"{what}: expected {want.size} values (one per output row), got {g.size}"
    if np.array_equal(g, want64):
        return None
    for bits in (8, 16):
        if np.array_equal(g, _wrap(want64, bits)) and np.abs(want64).max() >= 1 << (bits - 1):
            return (f"{what}: {OVERFLOW} — your sums wrapped around modulo 2**{bits} (the true "
                    f"sums reach {int(np.abs(want64).max())}); accumulate in int32")
    neg = -x64
    neg_wrapped = np.where(x64 == -128, -128, neg)  # -(-128) computed in int8 is -128
    wrong_neg = (w == 1).astype(np.int64) @ x64 + (w == -1).astype(np.int64) @ neg_wrapped
    if not np.array_equal(wrong_neg, want64) and np.array_equal(g, wrong_neg):
        return (f"{what}: {OVERFLOW} — negating an int8 -128 gives -128 again, so weights of -1 "
                f"on x = -128 contribute -128 instead of +128; widen x to int32 *before* negating")
    if np.array_equal(g, want64 + x64.sum()) and x64.sum() != 0:
        return (f"{what}: every row is off by exactly sum(x) = {int(x64.sum())}: with codes "
                f"c = w + 1 you must subtract sum(x) once (the offset trick)")
    if np.array_equal(g, -want64) and want64.any():
        return f"{what}: every value has the wrong sign: are your codes for +1 and -1 swapped?"
    return None


def _race(contestants, repeat):
    """Median, min and max ms per contestant ``name -> (fn, packed, x)``, timed in turns (A, B,
    C, A, B, C, ...) so that a load that comes and goes hits all of them alike.  Each is called
    once first (compile / warm up); a contestant slower than 50 ms per call is timed once."""
    ts = {n: [] for n in contestants}
    slow = set()
    for n, (fn, p, x) in contestants.items():
        fn(p, x)
        t0 = time.perf_counter()
        fn(p, x)
        ts[n].append((time.perf_counter() - t0) * 1e3)
        if ts[n][0] > 50:
            slow.add(n)
    for _ in range(repeat - 1):
        for n, (fn, p, x) in contestants.items():
            if n in slow:
                continue
            t0 = time.perf_counter()
            fn(p, x)
            ts[n].append((time.perf_counter() - t0) * 1e3)
    return {n: (float(np.median(v)), float(min(v)), float(max(v)), len(v)) for n, v in ts.items()}


@check
def check_fast_gemv(pack, gemv, naive=None, shape=(2048, 2048), repeat=9, threads=1):
    """``pack(w int8 [out, in]) -> your layout``; ``gemv(packed, x int8 [in]) -> int32 [out]``
    equal to ``w @ x`` on every case; then timed against your ``naive(w, x)`` (optional) and
    ``kernels.get("naive")`` on ``shape`` with ``threads`` Numba threads (default 1: the code,
    not the thread pool, which on a shared 2-core machine mostly measures the other programs).
    Pass = exact; the speed is reported."""
    cases = _gemv_cases()
    packs = {}
    for what, (w, x) in cases.items():
        packs[what] = student_call(pack, w)
        if packs[what] is None:
            raise AssertionError(f"pack on {what}: returned None — did you forget `return`?")
    rng = np.random.default_rng(4)
    w_race = rng.integers(-1, 2, shape).astype(np.int8)
    x_race = rng.integers(-128, 128, shape[1]).astype(np.int8)
    p_race = student_call(pack, w_race)
    _terminates_in_child(gemv, [(packs[k], cases[k][1].copy()) for k in cases]
                         + [(p_race, x_race.copy())], _core.TIMEOUT_S + 5)
    for what, (w, x) in cases.items():
        want = reference_matmul(w, x)
        packed = packs[what]
        with _numba_deadline(gemv, _core.TIMEOUT_S + 5):
            got = student_call(gemv, packed, x)
        got_a = as_array(got, f"gemv on {what}")
        if got_a.dtype.kind == "f":
            raise AssertionError(f"gemv on {what}: returned floats ({got_a.dtype}); the exact "
                                 f"answer is an integer array (int32): keep the sum in integers")
        msg = _diagnose_gemv(got_a, w, x, want, f"gemv on {what}")
        if msg:
            raise AssertionError(msg)
        expect_equal(got_a.reshape(-1), want, f"gemv on {what}")
    # exact everywhere: now the race, on a shape the size of a small projection
    w, x = w_race, x_race
    kn = K.get("naive")
    contestants = {"your gemv": (gemv, p_race, x),
                   "kernels.get('naive')": (lambda p, v: kn.matmul(p, v), kn.pack(w), x)}
    own = naive is not None
    if own:
        try:
            student_call(naive, w[:2], x)
            contestants["your naive"] = (naive, w, x)
        except NotImplementedError:
            own = None
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads or old, numba.config.NUMBA_NUM_THREADS)))
    try:
        with _numba_deadline(gemv, _core.TIMEOUT_S + 5):
            t = student_call(_race, contestants, repeat, copy_args=False)
        th = numba.get_num_threads()
    finally:
        numba.set_num_threads(old)
    mine = t["your gemv"]
    lines = [f"exact on {len(_gemv_cases())} cases. Timing a {shape[0]}x{shape[1]} GEMV, {th} "
             f"Numba thread(s), in turns (median ms, [min-max], number of runs):"]
    for n, (med, lo, hi, cnt) in t.items():
        vs = "" if n == "your gemv" else f"  -> your gemv is {med / mine[0]:.2f}x its speed"
        lines.append(f"  {n:22s} {med:9.3f} ms [{lo:.3f}-{hi:.3f}] x{cnt}{vs}")
    if own is None:
        lines.append("  your naive: not implemented yet (exercise 1), not timed")
    ref_ms = t["kernels.get('naive')"]
    from ..cpu_threads import busy_warning, loadavg
    warn = busy_warning(loadavg())
    if warn:
        lines.append("  " + warn)
    if mine[0] > 1.1 * ref_ms[0]:
        lines.append("  SLOWER than kernels.get('naive'): exact, but not fast yet. Things to "
                     "look at: is it compiled (@njit)? is the loop over output rows parallel "
                     "(prange)? does each weight byte you load serve several weights? are the "
                     "inner loads contiguous? are your integers int32 (Numba widens "
                     "small integers to int64 unless you cast)?")
    elif mine[0] > ref_ms[0] / 1.1:
        lines.append("  about the same speed as kernels.get('naive') (within 10%: noise): "
                     "exact, but not faster yet")
    else:
        lines.append(f"  FASTER than kernels.get('naive'): {ref_ms[0] / mine[0]:.2f}x")
    print("\n".join(lines))


# --- the decode roofline -------------------------------------------------------------------------

def _roofline_want(bw, cfg, bits, *, bits_as_bytes=False, head=True, head_ternary=False,
                   head_twice=False, gib=False):
    linear = cfg.linear_params * bits / (1 if bits_as_bytes else 8)
    head_b = cfg.head_params * (bits / 8 if head_ternary else 2.0) * (2 if head_twice else 1)
    b = linear + (head_b if head else 0)
    return bw * (2**30 if gib else 1e9) / b


_ROOFLINE_MISTAKES = {
    "bits counted as bytes": (dict(bits_as_bytes=True),
                              "you counted bits as bytes: a weight of 2 bits is 2/8 of a byte"),
    "forgot the head": (dict(head=False),
                        "you forgot the output head (the embedding matrix, vocab x hidden, read "
                        "in bf16 for every token): it is a large share of the bytes"),
    "head as ternary": (dict(head_ternary=True),
                        "the output head / embedding is not ternary: it stays in bf16 (2 bytes)"),
    "head counted twice": (dict(head_twice=True),
                           "you counted the tied embedding twice: the head reads the matrix once "
                           "per token, the embedding lookup only one row"),
    "GiB": (dict(gib=True), "GB here means 10**9 bytes, not 2**30 (GiB)"),
    "bits as bytes, no head": (dict(bits_as_bytes=True, head=False),
                               "you counted bits as bytes *and* forgot the output head"),
}


@check
def check_roofline_tok_s(decode_tok_s_ceiling, rtol=0.03):
    """``decode_tok_s_ceiling(bandwidth_gbs, cfg, bits_per_weight) -> tok/s``: bandwidth (GB/s,
    1 GB = 1e9 bytes) / bytes read per token (linears at ``bits_per_weight``, the head in bf16)."""
    cases = [(20.0, "2b4t", 2.0), (50.0, "2b4t", 1.58), (8.0, "llama2-7b", 2.0),
             (20.0, "2b4t", 16.0), (100.0, "llama2-70b", 1.67)]
    for bw, name, bits in cases:
        cfg = BitNetConfig.preset(name)
        want = _roofline_want(bw, cfg, bits)
        what = f"decode_tok_s_ceiling({bw:g} GB/s, {name}, {bits:g} bits)"
        got = student_call(decode_tok_s_ceiling, bw, cfg, bits)
        if got is None:
            raise AssertionError(f"{what}: returned None — did you forget `return`?")
        try:
            g = float(np.asarray(got).reshape(-1)[0]) if np.ndim(got) else float(got)
        except (TypeError, ValueError, IndexError):
            raise AssertionError(f"{what}: expected a number of tokens per second, got "
                                 f"{type(got).__name__}") from None
        if np.isclose(g, want, rtol=rtol):
            continue
        for label, (kw, msg) in _ROOFLINE_MISTAKES.items():
            alt = _roofline_want(bw, cfg, bits, **kw)
            if not np.isclose(alt, want, rtol=rtol) and np.isclose(g, alt, rtol=rtol):
                raise AssertionError(f"{what}: got {g:.4g} tok/s, expected about {want:.4g}: {msg}")
        if g > 0 and np.isclose(1 / g, want, rtol=rtol):
            raise AssertionError(f"{what}: got {g:.4g}, which is seconds per token: return tokens "
                                 f"per second (its inverse)")
        if g > 0 and np.isclose(1e3 / g, want, rtol=rtol):
            raise AssertionError(f"{what}: got {g:.4g}, which looks like ms per token: return "
                                 f"tokens per second")
        raise AssertionError(f"{what}: got {g:.4g} tok/s, expected about {want:.4g} (within "
                             f"{rtol:.0%}). Hint: count the bytes one token reads — every weight "
                             f"of every linear once, and what else?")
