"""Every kernel must equal the integer reference exactly, for any shape, T and thread count."""

import importlib

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_edu import kernels
from bitnet_edu.kernels._base import pad_cols

NAMES = kernels.available()
FAST = [n for n in NAMES if n != "naive"]  # naive is too slow for the big shapes
SHAPES_2B4T = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]


def _rand(rng, out, k, t):
    w = rng.integers(-1, 2, (out, k)).astype(np.int8)
    x = rng.integers(-128, 128, (t, k) if t else (k,)).astype(np.int8)
    return w, x


def test_registry():
    assert NAMES[:2] == ["naive", "mad"] and {"tl1", "tl2", "tmac"} <= set(NAMES)
    assert kernels.DEFAULT in NAMES
    for n in NAMES:
        assert kernels.get(n).name == n
    with pytest.raises(ValueError, match="available: naive, mad"):
        kernels.get("nope")


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=12, deadline=None)
@given(out=st.integers(1, 70), k=st.integers(1, 300), t=st.sampled_from([0, 1, 3, 20]),
       seed=st.integers(0, 2**31 - 1))
def test_matches_reference(name, out, k, t, seed):
    """Random shapes, including k and out that are not multiples of 128, 3 or 4; t=0 means GEMV."""
    w, x = _rand(np.random.default_rng(seed), out, k, t)
    kern = kernels.get(name)
    y = kern.matmul(kern.pack(w), x)
    want = kernels.reference_matmul(w, x)
    assert y.dtype == np.int32 and y.shape == want.shape
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_version_of_each_layout(name):
    """Each module's numpy_matmul computes the same thing from the packed layout."""
    w, x = _rand(np.random.default_rng(1), 37, 301, 3)
    kern = kernels.get(name)
    p = kern.pack(w)
    mod = importlib.import_module(f"bitnet_edu.kernels.{name}")
    if name == "naive":
        got = mod.numpy_matmul(*p.arrays, x)
    else:
        kp = p.arrays[0].shape[1] * (6 if name == "tl2" else 4)
        got = mod.numpy_matmul(*p.arrays, pad_cols(x, kp))
    np.testing.assert_array_equal(got, kernels.reference_matmul(w, x))


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("t", [1, 3, 128])
def test_2b4t_shapes(name, t):
    rng = np.random.default_rng(t)
    kern = kernels.get(name)
    for out, k in SHAPES_2B4T if t < 128 else SHAPES_2B4T[1:2]:  # one big GEMM per kernel is enough
        w, x = _rand(rng, out, k, t)
        np.testing.assert_array_equal(kern.matmul(kern.pack(w), x), kernels.reference_matmul(w, x))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("wv,xv", [(1, -128), (-1, -128), (1, 127), (-1, 127)])
def test_extremes_do_not_overflow(name, wv, xv):
    """All weights equal with all activations at an extreme: block sums hit the int16 limits."""
    k = 6912
    w = np.full((3, k), wv, np.int8)
    w[2, ::2] = 0
    x = np.full((17, k), xv, np.int8)  # 17 tokens: the GEMM path of mad too
    kern = kernels.get(name)
    for xx in (x, x[0]):  # GEMV and GEMM paths
        np.testing.assert_array_equal(kern.matmul(kern.pack(w), xx),
                                      kernels.reference_matmul(w, xx))


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts(name, threads):
    w, x = _rand(np.random.default_rng(5), 301, 515, 17)
    kern = kernels.get(name)
    p = kern.pack(w)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        np.testing.assert_array_equal(kern.matmul(p, x), kernels.reference_matmul(w, x))
        np.testing.assert_array_equal(kern.matmul(p, x[0]), kernels.reference_matmul(w, x[0]))
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [0, 2, 40])
def test_fused_linear(name, t):
    """linear() = (x @ w.T) * x_scale[t] * w_scale in float32, for [T] / [T,1] / scalar scales."""
    w, x = _rand(np.random.default_rng(2), 50, 200, t)
    kern = kernels.get(name)
    p = kern.pack(w)
    acc = kernels.reference_matmul(w, x).astype(np.float64)
    xs = np.linspace(0.01, 0.1, max(t, 1)).astype(np.float32)
    got = kern.linear(p, x, xs.reshape(-1, 1) if t else xs, 0.7)
    want = acc * (xs.reshape(-1, 1) if t else xs) * 0.7
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(kern.linear(p, x, 0.5, 2.0), acc, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name):
    kern = kernels.get(name)
    w, x = _rand(np.random.default_rng(3), 8, 16, 2)
    p = kern.pack(w)
    with pytest.raises(ValueError, match="int8"):
        kern.matmul(p, x.astype(np.int16))
    with pytest.raises(ValueError, match="features"):
        kern.matmul(p, x[:, :15])
    with pytest.raises(ValueError, match="-1, 0"):
        kern.pack(w * 2)
    with pytest.raises(ValueError, match="matrix"):
        kern.pack(w[0])
    with pytest.raises(ValueError, match="x_scale"):
        kern.linear(p, x, np.ones(3, np.float32), 1.0)
    other = kernels.get("mad" if name != "mad" else "naive")
    with pytest.raises(ValueError, match="packed by kernel"):
        kern.matmul(other.pack(w), x)


def test_packed_is_self_describing():
    w, _ = _rand(np.random.default_rng(4), 640, 2560, 1)
    sizes = {n: kernels.get(n).pack(w) for n in NAMES}
    assert all(p.shape == (640, 2560) and p.kernel == n for n, p in sizes.items())
    assert sizes["naive"].bits_per_weight == 8
    assert sizes["mad"].bits_per_weight == 2 and sizes["tl1"].nbytes == 640 * 2560 // 4
    assert 1.6 < sizes["tl2"].bits_per_weight < 1.7


def test_lookup_tables_by_hand():
    from bitnet_edu.kernels import mad, tl1, tl2, tmac
    x = np.array([[5, -7, 3, 2]], np.int8)
    t1 = tl1.build_table(x)[0, 0]
    assert t1[tl1.PAIRS.index((1, -1))] == 12 and t1[tl1.PAIRS.index((0, 0))] == 0
    t3 = tl2.build_table(np.array([[5, -7, 3]], np.int8))[0, 0]
    assert t3[9 * 1 + 3 * 0 + 2] == 0 * 5 - 1 * -7 + 1 * 3 and len(tl2.TRIPLES) == 14
    idx, sign = tl2.fold(np.array([[1, 1, 1, -1, -1, -1]], np.int8))
    assert idx.tolist() == [[0, 0]] and sign.tolist() == [[1, 0]]
    t4 = tmac.build_table(x)[0, 0]
    assert t4[0b0101] == 5 + 3 and t4[0b1111] == 3 and t4[0] == 0
    assert mad.decode_byte(0b10_01_00_10) == [1, 0, -1, 1]
