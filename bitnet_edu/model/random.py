"""``random_model``: a full-size BitNet with random ternary weights, built in seconds.

For speed and memory lessons only (its text is noise).  The packed bytes are drawn directly:
a byte of four 2-bit codes is valid when no code is 3, and there are 3**4 = 81 such bytes,
so random bytes mapped onto those 81 give uniformly random ternary weights without ever
building a float (or int8) matrix — 2 B weights stay 0.5 GB the whole time.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .config import PRESETS, BitNetConfig
from .transformer import BitNetModel, Head, LayerWeights

__all__ = ["random_model"]

_VALID = np.array([b for b in range(256) if all((b >> s) & 3 != 3 for s in (0, 2, 4, 6))], np.uint8)
_LUT = _VALID[np.arange(256) % 81]  # byte -> a valid byte (the slight bias is irrelevant here)


def _random_packed(k, rng, out: int, cols: int) -> kernels.Packed:
    """Random ternary ``[out, cols]`` in kernel ``k``'s layout, straight as bytes when the
    layout is one uint8 array of 2-bit codes; otherwise through ``k.pack``."""
    probe = k.pack(np.zeros((4, cols), np.int8)).arrays
    if (len(probe) == 1 and probe[0].dtype == np.uint8 and probe[0].shape == (4, cols // 4)
            and (probe[0] == 0x55).all()):
        raw = np.frombuffer(rng.bytes(out * cols // 4), np.uint8).reshape(out, cols // 4)
        return kernels.Packed(k.name, out, cols, (np.take(_LUT, raw),))
    return k.pack(rng.integers(-1, 2, size=(out, cols), dtype=np.int8))


def random_model(shape="2b4t", seed: int = 0, *, kernel: str | None = None, head: str = "int8",
                 **overrides) -> BitNetModel:
    """A model of the given shape (``"2b4t"``, a ``BitNetConfig`` or a config dict) with random
    ternary weights, norms of ones, and an embedding drawn in the head's own format.

    ``head="int8"`` (default) and ``"int4"`` draw the quantized entries directly; ``"float32"``
    a float table (4x the int8 memory: 1.3 GB at the 2B4T shape).  No tokenizer: pass token ids.
    """
    if isinstance(shape, str):
        if shape.lower() not in PRESETS:
            raise ValueError(f"unknown shape {shape!r}; known: {', '.join(PRESETS)}")
        cfg = BitNetConfig(**{**PRESETS[shape.lower()], **overrides})
    elif isinstance(shape, dict):
        cfg = BitNetConfig.from_dict({**shape, **overrides})
    else:
        cfg = shape
    rng = np.random.default_rng(seed)
    kname = kernel or kernels.DEFAULT
    k = kernels.get(kname)
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    ones = np.ones

    def scales(n):  # absmean scales of a trained 2B4T are around 1..3; anything positive works
        return rng.uniform(0.5, 2.0, n).astype(np.float32)

    layers = []
    for _ in range(cfg.num_hidden_layers):
        layers.append(LayerWeights(
            qkv=_random_packed(k, rng, nq + 2 * nkv, h), qkv_scales=scales(3),
            o=_random_packed(k, rng, h, nq), o_scale=float(scales(1)[0]),
            gate_up=_random_packed(k, rng, 2 * f, h), gate_up_scales=scales(2),
            down=_random_packed(k, rng, h, f), down_scale=float(scales(1)[0]),
            input_layernorm=ones(h, np.float32), post_attention_layernorm=ones(h, np.float32),
            attn_sub_norm=ones(nq, np.float32), ffn_sub_norm=ones(f, np.float32)))
    v = cfg.vocab_size
    if head == "int8":
        table = rng.integers(-127, 128, (v, h), dtype=np.int8)  # one allocation, symmetric
        emb = Head.from_quantized("int8", table, np.full(v, 0.02 / 127 * 4, np.float32), h)
    elif head == "int4" and h % 128 == 0:  # random nibbles 1..15 (q in [-7, 7]), scales ~ 0.02 / 7 * 4
        nib = np.empty((v, h // 2), np.uint8)
        for r in range(0, v, 8192):  # in chunks: no temporary the size of the table
            lo, hi = rng.integers(1, 16, (2, len(nib[r:r + 8192]), h // 2), dtype=np.uint8)
            nib[r:r + 8192] = lo | (hi << 4)
        emb = Head.from_quantized("int4", nib, np.full((v, h // 128), 0.02 / 7 * 4, np.float32), h)
    else:
        emb = Head(rng.standard_normal((v, h), dtype=np.float32) * np.float32(0.02), head)
    return BitNetModel(cfg, layers, emb, ones(h, np.float32), kname)
