"""The int8 x int8 head kernel: exact against its NumPy twin, close to the float head."""

import numpy as np
import pytest

from bitnet_edu.kernels.head import (G4, QK, TAIL, TOKENS, _quantize_blocks, dequantize_rows_int4, head_logits,
                                     head_logits_int4, numpy_head_logits, numpy_head_logits_int4,
                                     quantize_blocks, quantize_rows_int4)


def _case(t, v, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, n)).astype(np.float32)
    table = rng.integers(-127, 128, (v, n), dtype=np.int8)
    return x, table, rng.uniform(1e-3, 1e-2, v).astype(np.float32)


@pytest.mark.parametrize("t,v,n", [(1, 1, QK), (1, 130, 2 * QK), (5, 67, 3 * QK)])
def test_kernel_matches_numpy(t, v, n):
    x, table, rs = _case(t, v, n)
    got, ref = head_logits(x, table, rs), numpy_head_logits(x, table, rs)
    # both sum the same int32 block dots; only the float order of the block sums differs
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


# token counts that use every path: one token, the TAIL tile, the TOKENS tile, both + singles
BATCHES = [2, 4, 9, 16, TOKENS + TAIL + 3]


@pytest.mark.parametrize("t", BATCHES)
def test_a_token_logits_do_not_depend_on_its_batch(t):
    """Tokens share table loads in tiles of TOKENS and TAIL (a batched decode step); each
    token's float work is unchanged, so its logits are the same bits as when it runs alone."""
    x, table, rs = _case(t, 131, 2 * QK, seed=2)
    batch = head_logits(x, table, rs)
    alone = np.concatenate([head_logits(x[j:j + 1], table, rs) for j in range(t)])
    np.testing.assert_array_equal(batch, alone)
    ref = numpy_head_logits(x, table, rs)
    np.testing.assert_allclose(batch, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("t", BATCHES)
def test_an_int4_token_logits_do_not_depend_on_its_batch(t):
    x, _, _ = _case(t, 1, 3 * G4, seed=6)
    w = np.random.default_rng(7).standard_normal((133, 3 * G4)).astype(np.float32)
    packed, scale = quantize_rows_int4(w)
    batch = head_logits_int4(x, packed, scale)
    alone = np.concatenate([head_logits_int4(x[j:j + 1], packed, scale) for j in range(t)])
    np.testing.assert_array_equal(batch, alone)
    ref = numpy_head_logits_int4(x, packed, scale)
    np.testing.assert_allclose(batch, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_quantize_blocks_numba_equals_numpy():
    x, _, _ = _case(4, 1, 4 * QK, seed=1)
    x[0, :QK] = 0.0      # an all-zero block
    x[1, 7] = 1e4        # an outlier only coarsens its own block
    for a, b in zip(_quantize_blocks(x), quantize_blocks(x)):
        np.testing.assert_array_equal(a, b)
    xq, scale, _ = quantize_blocks(x)
    assert np.abs(xq).max() <= 127 and scale[1, 1] < 1e-1


def test_extreme_entries_are_exact():
    # table entries -128..127 and activations at +-127: the u8 = w ^ 0x80 trick and int32 lanes hold
    n = 4 * QK
    table = np.tile(np.array([-128, 127, -1, 0], np.int8), (3, n // 4))
    x = np.tile(np.array([[1.0, -1.0, 1.0, 1.0]], np.float32), (2, n // 4))
    x[1] *= -1
    rs = np.ones(3, np.float32)
    exact = x @ table.astype(np.float32).T
    np.testing.assert_allclose(head_logits(x, table, rs), exact, rtol=1e-6)


def test_close_to_float_head_and_same_top1():
    x, table, rs = _case(8, 4096, 10 * QK, seed=2)
    exact = x @ (table.astype(np.float32) * rs[:, None]).T
    got = head_logits(x, table, rs)
    assert np.abs(got - exact).max() < 0.02 * np.abs(exact).max()
    assert (got.argmax(1) == exact.argmax(1)).mean() >= 0.75


def test_bad_input():
    x, table, rs = _case(1, 4, QK)
    with pytest.raises(ValueError, match="multiple of"):
        head_logits(x[:, :100], table[:, :100].copy(), rs)
    with pytest.raises(ValueError, match="int8"):
        head_logits(x, table.astype(np.int16), rs)
    with pytest.raises(ValueError, match="agree"):
        head_logits(x[:, :QK // 2], table, rs)


@pytest.mark.parametrize("t,v,n", [(1, 1, QK), (2, 5, G4), (3, 131, 3 * QK)])
def test_int4_kernel_matches_numpy(t, v, n):
    x, _, _ = _case(t, 1, n, seed=3)
    w = np.random.default_rng(4).standard_normal((v, n)).astype(np.float32) * np.float32(0.02)
    packed, scale = quantize_rows_int4(w)
    assert packed.shape == (v, n // 2) and scale.shape == (v, n // G4)
    got, ref = head_logits_int4(x, packed, scale), numpy_head_logits_int4(x, packed, scale)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_int4_round_trip_and_extremes():
    w = np.zeros((2, G4), np.float32)
    w[0, :] = np.linspace(-7, 7, G4)      # every level, scale 1
    w[1, 5], w[1, 100] = -3.0, 3.0         # low and high nibble positions
    packed, scale = quantize_rows_int4(w)
    np.testing.assert_allclose(scale, [[1.0], [3.0 / 7]], rtol=1e-6)
    np.testing.assert_allclose(dequantize_rows_int4(packed, scale), np.where(
        np.arange(2)[:, None] == 0, np.rint(w), w), atol=1e-6)


def test_head_modes_on_odd_hidden_size():
    from bitnet_edu.model.transformer import Head
    rng = np.random.default_rng(5)
    table = rng.standard_normal((50, 120)).astype(np.float32)
    x = rng.standard_normal((2, 120)).astype(np.float32)
    exact = Head(table, "float32").logits(x)
    for mode, tol in (("int8", 0.03), ("int4", 0.3)):
        h = Head(table, mode)
        assert h.shape == (50, 120) and h.embed(np.array([3, 7])).shape == (2, 120)
        assert np.abs(h.logits(x) - exact).max() < tol * np.abs(exact).max(), mode
    assert Head(table, "int4").nbytes < Head(table, "int8").nbytes < Head(table, "float32").nbytes
