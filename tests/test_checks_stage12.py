"""The Lesson 01–02 exercise checks: a right answer passes, a stub is NOT IMPLEMENTED, a subtly wrong
answer FAILs with a message that names the mistake, and nothing ever raises out of a check."""

import numpy as np
import pytest

from bitnet_edu import bitlinear, checks, packing, quant
from bitnet_edu.checks import FAIL, NOT_IMPLEMENTED, PASS

torch = pytest.importorskip("torch")


def stub(*args, **kwargs):
    raise NotImplementedError()


def crash(*args, **kwargs):
    return {}["oops"]


# --- wrong answers a student might write -------------------------------------------------------

def absmean_max(w, eps=1e-5):
    s = max(float(np.abs(w).max()), eps)
    return np.clip(np.rint(w / s), -1, 1).astype(np.int8), s


def absmean_floor(w, eps=1e-5):
    s = max(float(np.abs(w).mean()), eps)
    return np.clip(np.trunc(w / s), -1, 1).astype(np.int8), s


def absmean_no_eps(w, eps=1e-5):
    s = float(np.abs(w).mean())
    with np.errstate(all="ignore"):
        return np.clip(np.nan_to_num(np.rint(w / s)), -1, 1).astype(np.int8), s


def absmean_per_row(w, eps=1e-5):
    s = np.maximum(np.abs(w).mean(axis=1, keepdims=True), eps)
    return np.clip(np.rint(w / s), -1, 1).astype(np.int8), s


def absmax_wrong_axis(x, eps=1e-5):
    amax = np.maximum(np.abs(x).max(axis=0, keepdims=True), eps)
    return np.clip(np.rint(x * 127 / amax), -128, 127).astype(np.int8), (amax / 127).astype(np.float32)


def absmax_inverse_scale(x, eps=1e-5):
    q, s = quant.absmax_int8(x, eps)
    return q, 1.0 / s


def pack_consecutive(q):
    out, k = q.shape
    c = (q + 1).astype(np.uint8).reshape(out // 4, 4, k)
    return (c[:, 0] | c[:, 1] << 2 | c[:, 2] << 4 | c[:, 3] << 6).astype(np.uint8)


def sqnr_20log(x, y):
    return 2 * quant.sqnr_db(x, y)


def ste_no_detach(x, xq):
    return x + (xq - x)


def ste_returns_xq(x, xq):
    return xq.detach()


def rms_layernorm(x, weight=None, eps=1e-5):
    x = x - x.mean(-1, keepdims=True)
    return bitlinear.rms_norm(x, weight, eps)


def rms_no_eps(x, weight=None, eps=1e-5):
    with np.errstate(all="ignore"):
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True))
    return y if weight is None else y * weight


def matmul_int8(xq, xs, wq, ws):
    return (xq @ wq.T).astype(np.float32) * xs * ws  # stays int8: wraps around


def matmul_no_wscale(xq, xs, wq, ws):
    return (xq.astype(np.int32) @ wq.T.astype(np.int32)).astype(np.float32) * xs


def forward_no_norm(x, wq, ws, norm_weight=None):
    return bitlinear.BitLinearInference(wq, ws).forward(x)


def forward_no_wscale(x, wq, ws, norm_weight=None):
    return bitlinear.BitLinearInference(wq, 1.0, norm_weight=norm_weight).forward(x)


def forward_float(x, wq, ws, norm_weight=None):  # no activation quantization at all: too far off
    x = x if norm_weight is None else bitlinear.rms_norm(x, norm_weight)
    return (x @ (wq * ws).T * 1.3).astype(np.float32)


def correct_forward(x, wq, ws, norm_weight=None):
    if norm_weight is not None:
        x = bitlinear.rms_norm(x, norm_weight)
    xq, xs = quant.absmax_int8(x)
    return (xq.astype(np.int32) @ wq.T.astype(np.int32)).astype(np.float32) * xs * np.float32(ws)


def _mult_sqnr(w, m, clip=True, ref=np.mean):
    s = m * float(ref(np.abs(w)))
    q = np.rint(w / s)
    q = np.clip(q, -1, 1) if clip else q
    return quant.sqnr_db(w, q * s)


def best_multiplier(w, multipliers):
    return max(multipliers, key=lambda m: _mult_sqnr(w, m))


def best_multiplier_argmin(w, multipliers):
    return min(multipliers, key=lambda m: _mult_sqnr(w, m))


def best_multiplier_no_clip(w, multipliers):
    return max(multipliers, key=lambda m: _mult_sqnr(w, m, clip=False))


def best_multiplier_max(w, multipliers):
    return max(multipliers, key=lambda m: _mult_sqnr(w, m, ref=np.max))


def best_multiplier_default(w, multipliers):
    return 1.0


def best_multiplier_index(w, multipliers):
    return int(np.argmax([_mult_sqnr(w, m) for m in multipliers]))


def best_multiplier_first_grid(w, multipliers):  # assumes the candidates are sorted: ignores order
    return [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0][
        int(np.argmax([_mult_sqnr(w, m) for m in multipliers]))]


def ste_twice(x, xq):  # x enters twice where autograd sees it
    return x + x + (xq - 2 * x).detach()


def correct_matmul(xq, xs, wq, ws):
    return (xq.astype(np.int32) @ wq.T.astype(np.int32)).astype(np.float32) * xs * np.float32(ws)


CORRECT = {
    "check_absmean_ternary": quant.absmean_ternary,
    "check_absmax_int8": quant.absmax_int8,
    "check_pack_hf": packing.pack_hf,
    "check_sqnr": quant.sqnr_db,
    "check_best_multiplier": best_multiplier,
    "check_ste": bitlinear.ste,
    "check_rms_norm": bitlinear.rms_norm,
    "check_int_accumulate_rescale": correct_matmul,
    "check_bitlinear_forward": correct_forward,
}

WRONG = [  # (check, wrong function, words the FAIL message must contain)
    ("check_absmean_ternary", absmean_max, "MEAN"),
    ("check_absmean_ternary", absmean_floor, "np.rint"),
    ("check_absmean_ternary", absmean_no_eps, "eps"),
    ("check_absmean_ternary", absmean_per_row, "ONE number"),
    ("check_absmax_int8", absmax_wrong_axis, "LAST axis"),
    ("check_absmax_int8", absmax_inverse_scale, "max|x| / 127"),
    ("check_pack_hf", pack_consecutive, "CONSECUTIVE"),
    ("check_sqnr", sqnr_20log, "10·log10"),
    ("check_best_multiplier", best_multiplier_argmin, "LOWEST"),
    ("check_best_multiplier", best_multiplier_no_clip, "not clipped"),
    ("check_best_multiplier", best_multiplier_max, "MEAN"),
    ("check_best_multiplier", best_multiplier_default, "absmean itself"),
    ("check_best_multiplier", best_multiplier_index, "INDEX"),
    ("check_best_multiplier", best_multiplier_first_grid, "another order"),
    ("check_ste", ste_no_detach, "gradient"),
    ("check_ste", ste_returns_xq, "does not depend on x"),
    ("check_ste", ste_twice, "twice"),
    ("check_rms_norm", rms_layernorm, "LayerNorm"),
    ("check_rms_norm", rms_no_eps, "eps"),
    ("check_int_accumulate_rescale", matmul_int8, "int32"),
    ("check_int_accumulate_rescale", matmul_no_wscale, "w_scale"),
    ("check_bitlinear_forward", forward_no_norm, "sub-norm"),
    ("check_bitlinear_forward", forward_no_wscale, "weight scale"),
    ("check_bitlinear_forward", forward_float, "values differ"),
]


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_answer_passes(name, capsys):
    res = getattr(checks, name)(CORRECT[name])
    assert res.status == PASS, res.message
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_stub_is_not_implemented(name):
    assert getattr(checks, name)(stub).status == NOT_IMPLEMENTED


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_crash_is_a_fail_not_an_exception(name):
    res = getattr(checks, name)(crash)
    assert res.status == FAIL and "KeyError" in res.message


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_returning_none_is_a_fail_that_says_so(name):
    res = getattr(checks, name)(lambda *a, **k: None)
    assert res.status == FAIL and "None" in res.message


@pytest.mark.parametrize("name, fn, words", WRONG, ids=[f"{n}-{f.__name__}" for n, f, _ in WRONG])
def test_subtly_wrong_answer_fails_with_a_hint(name, fn, words):
    res = getattr(checks, name)(fn)
    assert res.status == FAIL
    assert words in res.message, res.message


def test_checks_are_exported_by_the_package():
    for name in CORRECT:
        assert callable(getattr(checks, name))
