"""Stage 1: absmean ternary and absmax int8 quantization."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_edu import quant

floats = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=16),
    elements=st.floats(-1e3, 1e3, width=32),
)


def test_absmean_ternary_by_hand():
    w = np.array([[0.9, -0.05, -2.0], [0.3, 0.0, 0.6]], np.float32)
    q, s = quant.absmean_ternary(w)
    assert s == pytest.approx(np.mean(np.abs(w)))  # 0.641666
    # w/s = [1.40, -0.08, -3.12, 0.47, 0, 0.94] -> round, clip
    np.testing.assert_array_equal(q, [[1, 0, -1], [0, 0, 1]])
    assert q.dtype == np.int8 and isinstance(s, float)


@settings(max_examples=200, deadline=None)
@given(floats)
def test_absmean_ternary_properties(w):
    q, s = quant.absmean_ternary(w)
    assert q.shape == w.shape and q.dtype == np.int8
    assert set(np.unique(q)) <= {-1, 0, 1}
    assert s >= 1e-5
    assert s == pytest.approx(max(float(np.mean(np.abs(w.astype(np.float64)))), 1e-5), rel=1e-5)
    # rounding to the nearest level: every error is at most half a step, except clipped outliers
    inside = np.abs(w) <= 1.5 * s
    assert np.all(np.abs(w - q * s)[inside] <= 0.5 * s * (1 + 1e-5) + 1e-6)
    clear = np.abs(w) > 0.5 * s * (1 + 1e-5)
    assert np.all(np.sign(q[clear]) == np.sign(w[clear]))
    assert not q[np.abs(w) < 0.5 * s * (1 - 1e-5)].any()


def test_absmean_all_zero_uses_eps():
    q, s = quant.absmean_ternary(np.zeros((3, 4)))
    assert s == 1e-5 and not q.any()


@settings(max_examples=200, deadline=None)
@given(floats)
def test_absmax_int8_properties(x):
    q, s = quant.absmax_int8(x)
    assert q.dtype == np.int8 and q.shape == x.shape
    assert s.shape == x.shape[:-1] + (1,)
    amax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-5)
    np.testing.assert_allclose(s, amax / 127, rtol=1e-6)
    # the largest entry of each row maps to ±127 (unless the row is all below eps)
    big = amax[..., 0] > 1e-5
    assert np.all(np.abs(q).max(axis=-1)[big] == 127)
    # dequantized error at most half a step per row
    assert np.all(np.abs(x - q.astype(np.float32) * s) <= 0.5 * s * 1.0001 + 1e-6)


def test_absmax_int8_by_hand():
    x = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0]], np.float32)
    q, s = quant.absmax_int8(x)
    np.testing.assert_array_equal(q, [[127, -64, 32], [0, 0, 0]])  # -63.5 -> -64 (half to even)
    np.testing.assert_allclose(s[:, 0], [1 / 127, 1e-5 / 127])


@pytest.mark.parametrize("fn", [quant.absmean_ternary, quant.absmax_int8])
@pytest.mark.parametrize(
    "bad, word",
    [
        (np.array([1.0, np.nan]), "NaN"),
        (np.array([1.0, np.inf]), "Inf"),
        (np.array([]), "empty"),
        (np.array(["a"]), "numeric"),
    ],
)
def test_bad_input_raises(fn, bad, word):
    with pytest.raises(ValueError, match=word):
        fn(bad)


def test_integer_input_converted():
    q, s = quant.absmean_ternary(np.array([[3, -3, 0, 1]], np.int64))
    np.testing.assert_array_equal(q, [[1, -1, 0, 1]])  # s = 1.75
    assert s == pytest.approx(1.75)
    q8, _ = quant.absmax_int8(np.array([4, -2], np.int32))
    np.testing.assert_array_equal(q8, [127, -64])


def test_granularity_variants_order():
    rng = np.random.default_rng(0)
    # rows with very different magnitudes: finer scales must not be worse
    w = rng.standard_normal((64, 256)).astype(np.float32) * np.geomspace(0.01, 10, 64)[:, None]
    err = {g: quant.mse(w, quant.fake_quant_ternary(w, g, 32)) for g in ("tensor", "row", "group")}
    assert err["group"] <= err["row"] < err["tensor"]
    q, s = quant.absmean_ternary_grouped(w, "group", 32)
    assert q.shape == w.shape and s.shape == (64, 8, 1)
    with pytest.raises(ValueError, match="divide"):
        quant.absmean_ternary_grouped(w, "group", 100)


def test_error_metrics():
    x = np.array([3.0, 4.0])
    assert quant.mse(x, x) == 0 and quant.sqnr_db(x, x) == float("inf")
    assert quant.sqnr_db(x, x * 0.9) == pytest.approx(20.0)  # noise is 10% of the signal amplitude
    assert quant.zero_fraction([0, 1, 0, -1]) == 0.5
    c, n = quant.histogram(np.arange(10.0), bins=5)
    assert n.sum() == 10 and len(c) == 5
    r = quant.error_report(np.random.default_rng(1).standard_normal((32, 32)))
    # a Gaussian matrix: about 31% zeros at threshold 0.5 * mean|w| and SQNR around 5 dB
    assert 0.25 < r["zero_fraction"] < 0.38 and 3 < r["sqnr_db"] < 7
    assert r["minus_one_fraction"] + r["plus_one_fraction"] + r["zero_fraction"] == pytest.approx(1)
