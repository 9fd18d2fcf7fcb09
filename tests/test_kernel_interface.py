"""The kernel interface the model uses: unpack, the unchecked fast paths and random weights, for
every kernel; every kernel drives the whole default model to the same greedy tokens.  (That no
module outside ``kernels/`` uses a private kernel name is checked in test_architecture.)"""

import numpy as np
import pytest

import bitnet_edu
from bitnet_edu import kernels

NAMES = kernels.available()
ODD_SHAPES = [(1, 1), (3, 7), (37, 301), (5, 256), (70, 513), (2, 1000)]


def _ternary(rng, out, k):
    return rng.integers(-1, 2, (out, k)).astype(np.int8)


@pytest.mark.parametrize("name", NAMES)
def test_unpack_inverts_pack(name):
    """Exact, for widths that are and are not multiples of each layout's block (4, 24, 128, 256)."""
    k = kernels.get(name)
    rng = np.random.default_rng(0)
    for out, cols in ODD_SHAPES:
        w = _ternary(rng, out, cols)
        got = k.unpack(k.pack(w))
        assert got.dtype == np.int8 and got.shape == (out, cols), (name, out, cols)
        np.testing.assert_array_equal(got, w)


@pytest.mark.parametrize("name", NAMES)
def test_unpack_checks_its_input(name):
    k = kernels.get(name)
    other = kernels.get("naive" if name != "naive" else "mad")
    with pytest.raises(ValueError, match="packed by kernel"):
        k.unpack(other.pack(np.zeros((2, 8), np.int8)))
    with pytest.raises(ValueError, match="must come from"):
        k.unpack(np.zeros((2, 8), np.int8))


def _same_bits(a, b):
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("out,cols", [(37, 301), (70, 640), (33, 512)])
def test_fast_paths_equal_linear_bit_for_bit(name, out, cols):
    """linear_fast for 1, 3 and 17 tokens (mad's GEMM path from 16 on, vnni's 2x4 tile) and
    linear_1 for one token give exactly the float32 bits of the checked ``linear``."""
    k = kernels.get(name)
    rng = np.random.default_rng(out * cols)
    p = k.pack(_ternary(rng, out, cols))
    for t in (1, 3, 17):
        xq = rng.integers(-128, 128, (t, cols)).astype(np.int8)
        xs = rng.uniform(1e-3, 1.0, t).astype(np.float32)
        for w_scale in (1.0, 0.37):
            want = k.linear(p, xq, xs, w_scale)
            _same_bits(k.linear_fast(p, xq, xs, w_scale), want)
            if t == 1:
                got = k.linear_1(p, xq, xs, w_scale)
                assert got.shape == (1, out)
                _same_bits(got, want)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("out,cols", [(64, 512), (48, 200), (7, 2560)])
def test_random_packed(name, out, cols):
    """Ternary weights of the right shape, all three values about equally often, a layout the
    kernel multiplies correctly, the same bytes for the same seed."""
    k = kernels.get(name)
    p = k.random_packed(np.random.default_rng(1), out, cols)
    assert isinstance(p, kernels.Packed) and p.kernel == name and p.shape == (out, cols)
    w = k.unpack(p)
    assert w.shape == (out, cols) and set(np.unique(w)) == {-1, 0, 1}
    share = np.array([(w == v).mean() for v in (-1, 0, 1)])
    assert (np.abs(share - 1 / 3) < 0.08).all(), share
    x = np.random.default_rng(2).integers(-128, 128, (3, cols)).astype(np.int8)
    np.testing.assert_array_equal(k.matmul(p, x), kernels.reference_matmul(w, x))
    again = k.random_packed(np.random.default_rng(1), out, cols)
    for a, b in zip(p.arrays, again.arrays):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["mad", "vnni"])
def test_random_packed_draws_code_bytes(name, monkeypatch):
    """The 2-bit layouts draw their bytes directly (no int8 matrix is packed) when the width
    needs no padding; the bytes never hold the unused code 3."""
    k = kernels.get(name)

    def no_pack(self, w):
        raise AssertionError("random_packed built and packed a matrix")

    monkeypatch.setattr(type(k), "pack", no_pack)
    p = k.random_packed(np.random.default_rng(0), 300, 2560)
    codes = p.arrays[0]
    assert codes.dtype == np.uint8 and codes.shape == (300, 640)
    for shift in (0, 2, 4, 6):
        assert ((codes >> shift) & 3 != 3).all()


# ---- the whole default model, once per kernel ------------------------------------------------

PROMPT = [1, 5, 9, 200, 7, 3, 11, 42, 17, 64, 100, 2, 8, 30, 19, 77, 23, 5, 61, 90]  # 20 ids


@pytest.fixture(scope="module")
def runs():
    """Per kernel: (greedy ids after PROMPT, logits of PROMPT, logits of one decode step)."""
    out = {}
    for name in NAMES:
        m = bitnet_edu.load_model(kernel=name)
        assert m.kernel.name == name and all(L.down.kernel == name for L in m.layers)
        ids = m.generate(PROMPT, 32, temperature=0)
        cache = m.new_cache(len(PROMPT) + 1)
        full = m.forward(PROMPT, cache)                 # prefill: linear_fast (T = 20)
        step = m.forward([int(full[-1].argmax())], cache)  # decode: linear_1 (T = 1)
        out[name] = (ids, full, step)
    return out


def test_every_kernel_generates_the_same_greedy_tokens(runs):
    ref = runs[kernels.DEFAULT][0]
    assert len(ref) == 32 and all(isinstance(i, int) for i in ref)
    for name in NAMES:
        assert runs[name][0] == ref, name


@pytest.mark.parametrize("name", NAMES)
def test_every_kernel_gives_the_same_logits(runs, name):
    _, full, step = runs[name]
    _, ref_full, ref_step = runs[kernels.DEFAULT]
    np.testing.assert_allclose(full, ref_full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(step, ref_step, rtol=1e-5, atol=1e-5)


def test_model_calls_the_kernels_fast_paths(monkeypatch):
    """Decode goes through ``kernel.linear_1``, prefill through ``kernel.linear_fast``, and
    ``BitNetModel.unpack`` through ``kernel.unpack``: no kernel names in the model."""
    m = bitnet_edu.load_model(kernel="mad")
    calls = {"linear_1": 0, "linear_fast": 0, "unpack": 0}
    cls = type(m.kernel)

    def spy(method):
        real = getattr(cls, method)

        def wrapped(self, *args):
            calls[method] += 1
            return real(self, *args)
        monkeypatch.setattr(cls, method, wrapped)

    for method in calls:
        spy(method)
    cache = m.new_cache(4)
    m.forward([1, 2, 3], cache)
    assert calls == {"linear_1": 0, "linear_fast": 4 * len(m.layers), "unpack": 0}
    m.forward([4], cache)
    assert calls["linear_1"] == 4 * len(m.layers)
    np.testing.assert_array_equal(m.unpack(m.layers[0].o), m.to_checkpoint()[1][
        "model.layers.0.self_attn.o_proj.weight"])
    assert calls["unpack"] > 0
