"""Checks for Lesson 01 (absmean quantization, int8 activations, packing, error).

Each check runs the student's function on several inputs — random, all zeros, one outlier,
negative-only, other shapes — and compares with the package's own implementation.
"""

from __future__ import annotations

import numpy as np

from .. import packing, quant
from ._core import as_array, check, expect_close, expect_dtype, expect_equal, student_call

__all__ = ["check_absmean_ternary", "check_absmax_int8", "check_pack_hf", "check_sqnr",
           "check_best_multiplier"]


def _cases(seed: int = 0) -> dict:
    """Named float32 test inputs shared by the stage-1 checks (all 2-D, out a multiple of 4)."""
    rng = np.random.default_rng(seed)
    gauss = rng.normal(0, 0.02, (8, 16)).astype(np.float32)
    outlier = gauss.copy()
    outlier[3, 5] = 1.0
    return {
        "random gaussian [8, 16]": gauss,
        "all zeros [4, 8]": np.zeros((4, 8), np.float32),
        "one outlier [8, 16]": outlier,
        "negative only [4, 6]": -np.abs(rng.normal(0, 1, (4, 6))).astype(np.float32),
        "wide range [4, 32]": (rng.normal(0, 1, (4, 32)) * np.logspace(-3, 2, 32)).astype(np.float32),
    }


def _number(result, what: str) -> float:
    arr = as_array(result, what)
    if arr.size != 1:
        raise AssertionError(f"{what}: return one number, got an array of shape {arr.shape}")
    return float(arr.reshape(-1)[0])


def _pair(result, what: str):
    if result is None:
        raise AssertionError(f"{what}: your function returned None — did you forget `return q, scale`?")
    if not isinstance(result, tuple) or len(result) != 2:
        raise AssertionError(f"{what}: return a tuple (q, scale), got {type(result).__name__}")
    return result


@check
def check_absmean_ternary(absmean_ternary):
    """``absmean_ternary(w, eps=1e-5) -> (q int8 in {-1,0,1}, scale float = max(mean|w|, eps))``."""
    for name, w in _cases().items():
        want_q, want_s = quant.absmean_ternary(w)
        q, s = _pair(student_call(absmean_ternary, w), name)
        s = as_array(s, f"{name}: scale")
        if s.size != 1:
            raise AssertionError(f"{name}: scale must be ONE number for the whole tensor, got shape "
                                 f"{np.shape(s)} — take the mean over all entries, not per row")
        s = float(s.reshape(-1)[0])
        if w.any() and np.isclose(s, float(np.max(np.abs(w)))) and not np.isclose(s, want_s):
            raise AssertionError(f"{name}: scale {s:.4g} is max|w|; BitNet uses the MEAN of |w| ({want_s:.4g})")
        if not np.isfinite(s) or not np.isclose(s, want_s, rtol=1e-5, atol=0):
            hint = " (an all-zero tensor needs the eps floor: max(mean|w|, eps))" if not w.any() else ""
            raise AssertionError(f"{name}: scale should be mean(|w|) = {want_s:.6g}, got {s:.6g}{hint}")
        expect_dtype(q, np.int8, f"{name}: q")
        q = np.asarray(q)
        if q.shape != w.shape:
            raise AssertionError(f"{name}: q must keep the shape of w {w.shape}, got {q.shape}")
        if np.any(np.abs(q.astype(np.int64)) > 1):
            raise AssertionError(f"{name}: q has values outside {{-1, 0, 1}} — clip after rounding")
        if not np.array_equal(q, want_q):
            trunc = np.clip(np.trunc(w / want_s), -1, 1).astype(np.int8)
            hint = " — looks truncated/floored; use np.rint (round to nearest)" if np.array_equal(q, trunc) else ""
            expect_equal(q, want_q, f"{name}: q{hint}")


@check
def check_absmax_int8(absmax_int8):
    """``absmax_int8(x, eps=1e-5) -> (q int8, scale float32 x.shape[:-1] + (1,))``, per row."""
    cases = _cases(1)
    cases["one token [16]"] = cases["random gaussian [8, 16]"][0]
    cases["batch of sequences [2, 3, 8]"] = np.random.default_rng(2).normal(0, 3, (2, 3, 8)).astype(np.float32)
    zero_row = np.random.default_rng(3).normal(0, 1, (3, 8)).astype(np.float32)
    zero_row[1] = 0
    cases["one all-zero row [3, 8]"] = zero_row
    for name, x in cases.items():
        want_q, want_s = quant.absmax_int8(x)
        q, s = _pair(student_call(absmax_int8, x), name)
        expect_dtype(q, np.int8, f"{name}: q")
        s = as_array(s, f"{name}: scale")
        if s.shape != want_s.shape:
            raise AssertionError(f"{name}: scale must have shape x.shape[:-1] + (1,) = {want_s.shape} "
                                 f"(one scale per token, keepdims=True over the LAST axis), got {s.shape}")
        if np.allclose(s * 127, want_s) and not np.allclose(s, want_s):
            raise AssertionError(f"{name}: scale is 127 times too small; scale = max|x| / 127")
        if np.allclose(s, 127.0 / np.maximum(want_s * 127, 1e-5), rtol=1e-4):
            raise AssertionError(f"{name}: you returned 127 / max|x|; return the dequantization scale "
                                 f"max|x| / 127 so that x ≈ q * scale")
        expect_close(s, want_s, f"{name}: scale (max|x| / 127 per row)", rtol=1e-5, atol=1e-12)
        expect_equal(q, want_q, f"{name}: q = clip(round(x / scale), -128, 127)")


@check
def check_pack_hf(pack_hf):
    """``pack_hf(q int8 [out, in]) -> uint8 [out/4, in]``, four contiguous quarters along the rows."""
    rng = np.random.default_rng(4)
    cases = {
        "random [8, 5]": rng.integers(-1, 2, (8, 5)),
        "all zeros [4, 3]": np.zeros((4, 3)),
        "all -1 [4, 2]": -np.ones((4, 2)),
        "all +1 [12, 1]": np.ones((12, 1)),
        "random [16, 16]": rng.integers(-1, 2, (16, 16)),
    }
    for name, q in cases.items():
        q = q.astype(np.int8)
        want = packing.pack_hf(q)
        got = as_array(student_call(pack_hf, q), name)
        if got.shape != want.shape:
            raise AssertionError(f"{name}: packed shape must be [out/4, in] = {want.shape}, got {got.shape}")
        expect_dtype(got, np.uint8, f"{name}: packed bytes")
        if not np.array_equal(got, want):
            interleaved = packing.pack_hf(q.reshape(-1, 4, q.shape[1]).transpose(1, 0, 2).reshape(q.shape))
            if np.array_equal(got, interleaved):
                raise AssertionError(f"{name}: you packed 4 CONSECUTIVE rows per byte; the HF layout packs "
                                     f"rows r, R+r, 2R+r, 3R+r (R = out/4) — four contiguous quarters")
            rev = packing.pack_hf(q.reshape(4, -1, q.shape[1])[::-1].reshape(q.shape))  # quarters swapped
            hint = " (bit order? quarter i goes to bits 2i..2i+1, lowest bits first)" if np.array_equal(got, rev) else ""
            expect_equal(got, want, f"{name}: packed bytes (code = w + 1, quarter i << 2*i){hint}")


@check
def check_sqnr(sqnr_db):
    """``sqnr_db(x, x_hat) -> float`` = ``10 log10(sum x² / sum (x - x_hat)²)``, ``inf`` if equal."""
    for name, w in _cases(5).items():
        if not w.any():
            continue
        w_hat = quant.fake_quant_ternary(w)
        want = quant.sqnr_db(w, w_hat)
        got = _number(student_call(sqnr_db, w, w_hat), name)
        if np.isclose(float(got), want * 2, rtol=1e-4):
            raise AssertionError(f"{name}: got twice the expected dB — a ratio of powers (sums of squares) "
                                 f"takes 10·log10, not 20·log10")
        if np.isclose(float(got), want / 2, rtol=1e-4):
            raise AssertionError(f"{name}: got half the expected dB — use sums of SQUARES (power), not norms")
        if np.isclose(float(got), -want, rtol=1e-4):
            raise AssertionError(f"{name}: sign flipped — signal power goes in the numerator")
        expect_close(float(got), want, f"{name}: SQNR in dB", rtol=1e-4, atol=1e-6)
    w = _cases(5)["random gaussian [8, 16]"]
    same = _number(student_call(sqnr_db, w, w), "an exact copy")
    if not (np.isinf(float(same)) and float(same) > 0):
        raise AssertionError(f"an exact copy has no noise: return float('inf'), got {same!r}")


def _ternary_sqnr(w, m: float, *, clip: bool = True, ref: str = "mean") -> float:
    """SQNR of ternary rounding of ``w`` with scale ``m * mean|w|`` (or ``m * max|w|``)."""
    base = float(np.mean(np.abs(w))) if ref == "mean" else float(np.max(np.abs(w)))
    s = max(m * base, 1e-5)
    q = np.rint(w / s)
    if clip:
        q = np.clip(q, -1, 1)
    return quant.sqnr_db(w, q * s)


def _best(w, grid, **kw) -> float:
    return grid[int(np.argmax([_ternary_sqnr(w, m, **kw) for m in grid]))]


@check
def check_best_multiplier(best_multiplier):
    """``best_multiplier(w, multipliers)``: the candidate ``m`` whose ternary rounding with scale
    ``m * mean|w|`` has the highest SQNR — found by measuring every candidate.

    The answers on all cases are collected first, then compared with what each classic mistake
    would return on *every* case (argmin, no clipping, a max-based scale, always x1.0), so the
    message names the mistake and not a coincidence on one case.
    """
    rng = np.random.default_rng(1)
    grid = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]
    cases = [("Gaussian weights [64, 256]", rng.normal(0, 0.02, (64, 256)), grid),
             ("Laplace weights [64, 256]", rng.laplace(0, 0.02, (64, 256)), grid),
             ("uniform weights [32, 128]", rng.uniform(-0.05, 0.05, (32, 128)), grid),
             ("Gaussian, candidates in another order", rng.normal(0, 1.0, (48, 64)),
              [1.0, 3.0, 0.5, 2.0, 1.25, 0.75, 2.5, 1.5, 1.75])]
    got, rows = [], []
    for name, w, cand in cases:
        w = w.astype(np.float32)
        scores = {m: _ternary_sqnr(w, m) for m in cand}
        best = max(scores, key=scores.get)
        g = _number(student_call(best_multiplier, w, list(cand)), f"{name}: your multiplier")
        if g not in scores:
            if float(g).is_integer() and 0 <= int(g) < len(cand) and cand[int(g)] == best:
                raise AssertionError(f"{name}: you returned the INDEX {int(g)} of the best candidate; "
                                     f"return the multiplier itself")
            raise AssertionError(f"{name}: return one of the candidates {cand}, got {g!r}")
        got.append(g)
        rows.append((name, w, cand, scores))
    wrong = [(r, g) for r, g in zip(rows, got) if r[3][g] < max(r[3].values()) - 1e-9]
    if not wrong:
        return
    mistakes = [
        ("you picked the LOWEST SQNR; signal over noise: higher is better",
         [min(r[3], key=r[3].get) for r in rows]),
        ("your rounding is not clipped to {-1, 0, +1}: values beyond 1.5 scales become 2, 3... "
         "(not ternary)", [_best(r[1], r[2], clip=False) for r in rows]),
        ("your scale is m * max|w|; the rule scales the MEAN of |w|",
         [_best(r[1], r[2], ref="max") for r in rows]),
        ("x1.0 is the absmean itself: measure every candidate instead of assuming the default is "
         "optimal", [1.0] * len(rows)),
    ]
    (name, _, _, scores), g = wrong[0]
    msg = (f"{name}: x{g:g} gives {scores[g]:.2f} dB, but x{max(scores, key=scores.get):g} gives "
           f"{max(scores.values()):.2f} dB")
    for why, answers in mistakes:
        if got == answers:
            raise AssertionError(f"{msg} — {why}")
    raise AssertionError(msg)
