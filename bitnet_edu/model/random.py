"""``random_model``: a full-size BitNet with random ternary weights, built in seconds.

For speed and memory lessons only (its text is noise).  Each kernel draws its own layout
(``Kernel.random_packed``): the 2-bit layouts of ``mad`` and ``vnni`` draw their code bytes
directly, without ever building a float (or int8) matrix — 2 B weights stay 0.5 GB the whole
time.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..formats.schema import LINEARS
from .config import PRESETS, BitNetConfig
from .transformer import BitNetModel, Head, LayerWeights

__all__ = ["random_model"]


def random_model(shape="2b4t", seed: int = 0, *, kernel: str | None = None, head: str = "int8",
                 **overrides) -> BitNetModel:
    """A model of the given shape (a preset name: ``"2b4t"``, ``"falcon3-1b"``, ...; a
    ``BitNetConfig`` or a config dict) with random ternary weights (an
    :class:`~bitnet_edu.model.embedding.EmbeddingModel` for ``"bitnet-embedding-0.6b"``), norms of ones, and an
    embedding drawn in the head's own format (an untied shape gets an ``lm_head`` drawn the
    same way: a Llama-layout member reads both tables' bytes, the head every token).

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

    if cfg.projection_norms:  # BitNet-embedding's block: an EmbeddingModel
        from .embedding import EmbeddingLayer, EmbeddingModel
        shapes = dict(zip(LINEARS, cfg.linear_shapes().values()))
        layers = [EmbeddingLayer(
            packed={p: k.random_packed(rng, o, i) for p, (o, i) in shapes.items()},
            scales={p: float(s) for p, s in zip(LINEARS, scales(len(LINEARS)))},
            norms={p: ones(i, np.float32) for p, (_, i) in shapes.items()},
            input_layernorm=ones(h, np.float32), post_attention_layernorm=ones(h, np.float32),
            q_norm=ones(d, np.float32) if cfg.qk_norm else None,
            k_norm=ones(d, np.float32) if cfg.qk_norm else None,
            pre_feedforward_layernorm=ones(h, np.float32) if cfg.sandwich_norms else None,
            post_feedforward_layernorm=ones(h, np.float32) if cfg.sandwich_norms else None)
            for _ in range(cfg.num_hidden_layers)]
        return EmbeddingModel(cfg, layers, _table(rng, cfg.vocab_size, h, head),
                              ones(h, np.float32), kname)

    sub = cfg.sub_norms  # a Llama block (Falcon3) has no sub-norms

    layers = []
    for _ in range(cfg.num_hidden_layers):
        layers.append(LayerWeights(
            qkv=k.random_packed(rng, nq + 2 * nkv, h), qkv_scales=scales(3),
            o=k.random_packed(rng, h, nq), o_scale=float(scales(1)[0]),
            gate_up=k.random_packed(rng, 2 * f, h), gate_up_scales=scales(2),
            down=k.random_packed(rng, h, f), down_scale=float(scales(1)[0]),
            input_layernorm=ones(h, np.float32), post_attention_layernorm=ones(h, np.float32),
            attn_sub_norm=ones(nq, np.float32) if sub else None,
            ffn_sub_norm=ones(f, np.float32) if sub else None))
    emb = _table(rng, cfg.vocab_size, h, head)
    lm = None if cfg.tie_word_embeddings else _table(rng, cfg.vocab_size, h, head)
    return BitNetModel(cfg, layers, emb, ones(h, np.float32), kname, lm_head=lm)


def _table(rng, v: int, h: int, head: str) -> Head:
    """A random embedding / head table of ``v`` rows, drawn in the head's own format."""
    if head == "int8":
        table = rng.integers(-127, 128, (v, h), dtype=np.int8)  # one allocation, symmetric
        emb = Head.from_quantized("int8", table, np.full(v, 0.02 / 127 * 4, np.float32), h)
    elif head == "int4" and h % 128 == 0:  # nibbles 1..15 (q in [-7, 7]), scales ~ 0.02 / 7 * 4
        nib = np.empty((v, h // 2), np.uint8)
        for r in range(0, v, 8192):  # in chunks: no temporary the size of the table
            lo, hi = rng.integers(1, 16, (2, len(nib[r:r + 8192]), h // 2), dtype=np.uint8)
            nib[r:r + 8192] = lo | (hi << 4)
        emb = Head.from_quantized("int4", nib, np.full((v, h // 128), 0.02 / 7 * 4, np.float32), h)
    else:
        emb = Head(rng.standard_normal((v, h), dtype=np.float32) * np.float32(0.02), head)
    return emb
