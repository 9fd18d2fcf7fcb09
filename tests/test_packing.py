"""Packing ternary weights: HF layout, bitnet.cpp I2_S, base-3 (5 per byte)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_edu import packing


def ternary(shape):
    return hnp.arrays(np.int8, shape, elements=st.integers(-1, 1))


@st.composite
def matrices(draw, out_multiple=1, size_multiple=1):
    out = draw(st.integers(1, 12)) * out_multiple
    k = draw(st.integers(1, 40))
    while (out * k) % size_multiple:
        k += 1
    return draw(ternary((out, k)))


@settings(max_examples=150, deadline=None)
@given(matrices(out_multiple=4))
def test_hf_roundtrip(q):
    p = packing.pack_hf(q)
    assert p.dtype == np.uint8 and p.shape == (q.shape[0] // 4, q.shape[1])
    np.testing.assert_array_equal(packing.unpack_hf(p), q)


def test_hf_layout_matches_formats_md():
    # byte[r, c] = sum_i (W[i*R + r, c] + 1) << 2i : rows 0, R, 2R, 3R share a byte
    q = np.zeros((8, 1), np.int8)
    q[[0, 2, 4, 6], 0] = [1, -1, 0, 1]  # R = 2: byte[0,0] takes rows 0, 2, 4, 6
    p = packing.pack_hf(q)
    assert p[0, 0] == (2 << 0) | (0 << 2) | (1 << 4) | (2 << 6)
    assert p[1, 0] == 0b01010101  # rows 1, 3, 5, 7 are zero -> code 1 each


def test_hf_matches_transformers():
    torch = pytest.importorskip("torch")
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    q = np.random.default_rng(0).integers(-1, 2, (64, 24)).astype(np.int8)
    ref = bitnet.pack_weights(torch.tensor(q).clone()).numpy()
    np.testing.assert_array_equal(packing.pack_hf(q), ref)


@settings(max_examples=150, deadline=None)
@given(matrices(size_multiple=128))
def test_i2s_roundtrip(q):
    p = packing.pack_i2s(q)
    assert p.dtype == np.uint8 and p.shape == (q.size // 4,)
    np.testing.assert_array_equal(packing.unpack_i2s(p, q.shape), q)


def test_i2s_block_layout():
    # byte j of a block: elements j, 32+j, 64+j, 96+j at shifts 6, 4, 2, 0
    q = np.zeros(128, np.int8)
    q[[5, 37, 69, 101]] = [1, -1, 1, -1]
    p = packing.pack_i2s(q)
    assert p[5] == (2 << 6) | (0 << 4) | (2 << 2) | 0
    assert np.all(np.delete(p, 5) == 0b01010101)
    full = packing.i2s_tensor_bytes(q, 0.25)
    assert full.size == 32 + 32 and np.frombuffer(full[32:36].tobytes(), np.float32)[0] == 0.25
    np.testing.assert_array_equal(packing.unpack_i2s(full, (128,)), q)  # trailer is ignored


@settings(max_examples=150, deadline=None)
@given(hnp.array_shapes(min_dims=1, max_dims=3, max_side=17).flatmap(ternary))
def test_base3_roundtrip(q):
    p = packing.pack_base3(q)
    assert p.shape == (-(-q.size // 5),) and p.max() <= 242
    np.testing.assert_array_equal(packing.unpack_base3(p, q.shape), q)


def test_base3_digits():
    p = packing.pack_base3(np.array([1, 0, -1, 1, 1], np.int8))  # codes 2,1,0,2,2
    assert p[0] == 2 + 1 * 3 + 0 * 9 + 2 * 27 + 2 * 81


@pytest.mark.parametrize("pack", [packing.pack_hf, packing.pack_i2s, packing.pack_base3])
def test_rejects_non_ternary(pack):
    q = np.zeros((4, 128), np.int8)
    q[1, 3] = 2
    with pytest.raises(ValueError, match=r"found 2 at index \(1, 3\)"):
        pack(q)


def test_shape_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match="multiple of 4"):
        packing.pack_hf(np.zeros((6, 3), np.int8))
    with pytest.raises(ValueError, match="multiple of 128"):
        packing.pack_i2s(np.zeros((3, 5), np.int8))
    with pytest.raises(ValueError, match="must be 32 bytes"):
        packing.unpack_i2s(np.zeros(31, np.uint8), (128,))
    with pytest.raises(ValueError, match="must be 2 bytes"):
        packing.unpack_base3(np.zeros(3, np.uint8), (2, 5))
    with pytest.raises(ValueError, match="corrupt"):
        packing.unpack_hf(np.full((1, 1), 0xFF, np.uint8))
