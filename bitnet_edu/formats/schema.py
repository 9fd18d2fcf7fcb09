"""The canonical tensor schema: every tensor name of a BitNet b1.58 model and its shape.

Canonical checkpoint, shared by every reader and writer in :mod:`bitnet_edu.formats` and by the
engine (``docs/formats.md``, "canonical tensor schema"):

* ``config``: HF ``config.json`` keys (:meth:`bitnet_edu.config.BitNetConfig.to_dict`).
* tensors, HF names: each linear ``*_proj.weight`` int8 ternary ``[out, in]`` followed by its
  ``*_proj.weight_scale`` float32 ``[1]`` (the scale MULTIPLIES the output); every other tensor
  (embedding, norms, an untied ``lm_head``) float32.

Streams of ``(name, array)`` come in the order of :func:`expected_tensors`, so a writer can lay
the file out before the first tensor arrives.  A large float matrix (the 2B4T embedding is
1.3 GB as float32) may come as :class:`RowBlocks`, decoded a block of rows at a time.
"""

from __future__ import annotations

import re
import warnings
from typing import Callable, Iterator

import numpy as np

from ..config import BitNetConfig, is_master_layout

__all__ = ["LINEARS", "NORMS", "SUB_NORMS", "MASTER_SUB_NORMS", "PROJECTION_NORMS", "QK_NORMS",
           "SANDWICH_NORMS",
           "layer_norms", "expected_tensors",
           "file_names", "is_linear", "is_scale", "check_zero_linear", "RowBlocks", "in_order"]

#: the seven ternary projections of a layer, relative to ``model.layers.N.``
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
#: the four RMSNorm weights of a layer (a block with sub-norms: 2B4T's)
NORMS = ("input_layernorm", "post_attention_layernorm", "self_attn.attn_sub_norm",
         "mlp.ffn_sub_norm")
#: the two of them only a block with sub-norms has (``BitNetConfig.sub_norms``)
SUB_NORMS = ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
#: the same two as 1bitLLM's ``BitnetForCausalLM`` files name them (its remote code's modules;
#: llama.cpp's gguf map: ATTN_SUB_NORM, FFN_SUB_NORM), canonical -> on disk
MASTER_SUB_NORMS = {"self_attn.attn_sub_norm": "self_attn.inner_attn_ln",
                    "mlp.ffn_sub_norm": "mlp.ffn_layernorm"}


#: BitNet-embedding's per-projection input norms (``BitNetConfig.projection_norms``): one
#: ``<proj>.norm`` for each of :data:`LINEARS`, shaped like that projection's input
PROJECTION_NORMS = tuple(f"{p}.norm" for p in LINEARS)
#: Gemma3's two norms around the FFN (``BitNetConfig.sandwich_norms``), ``[hidden]``
SANDWICH_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
#: Qwen3's per-head RMSNorms of the queries and keys (``BitNetConfig.qk_norm``), ``[head_dim]``
QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")


def layer_norms(cfg: BitNetConfig) -> tuple:
    """The RMSNorm weights of one layer of ``cfg`` (relative to ``model.layers.N.``): the four
    of :data:`NORMS`, or the two outer ones for a block without sub-norms (Llama), then the
    seven :data:`PROJECTION_NORMS` and the two :data:`QK_NORMS` of a block that has them
    (BitNet-embedding), after Gemma3's two :data:`SANDWICH_NORMS`."""
    out = NORMS if cfg.sub_norms else tuple(n for n in NORMS if n not in SUB_NORMS)
    if cfg.sandwich_norms:
        out += SANDWICH_NORMS
    if cfg.projection_norms:
        out += PROJECTION_NORMS
    if cfg.qk_norm:
        out += QK_NORMS
    return out


_LINEAR = re.compile(r".*_proj\.weight$")


def is_linear(name: str) -> bool:
    """True for a ternary projection weight (``...q_proj.weight``), not its scale."""
    return bool(_LINEAR.match(name))


def is_scale(name: str) -> bool:
    """True for a projection's ``weight_scale``."""
    return name.endswith("_proj.weight_scale")


def expected_tensors(cfg: BitNetConfig) -> dict[str, tuple]:
    """Every canonical tensor name -> its shape (linear weights unpacked ``[out, in]``), in the
    canonical order: embedding, final norm, ``lm_head`` if untied, then layer by layer each
    linear's weight and scale followed by the layer's norms (:func:`layer_norms`: four with
    sub-norms, two without)."""
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    lin = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
           "self_attn.o_proj": (h, q), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h),
           "mlp.down_proj": (h, f)}
    norm = {"input_layernorm": h, "post_attention_layernorm": h, "self_attn.attn_sub_norm": q,
            "mlp.ffn_sub_norm": f, "self_attn.q_norm": d, "self_attn.k_norm": d,
            "pre_feedforward_layernorm": h, "post_feedforward_layernorm": h}
    norm.update({f"{p}.norm": lin[p][1] for p in LINEARS})  # each projection's input width
    norm = {k: norm[k] for k in layer_norms(cfg)}
    out = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_hidden_layers):
        for k, shape in lin.items():
            out[f"model.layers.{i}.{k}.weight"] = shape
            out[f"model.layers.{i}.{k}.weight_scale"] = (1,)
        for k, n in norm.items():
            out[f"model.layers.{i}.{k}.weight"] = (n,)
    return out


def file_names(cfg: BitNetConfig) -> dict[str, str]:
    """Every canonical tensor name of :func:`expected_tensors` -> its name in an HF file of
    ``cfg``'s architecture (``cfg.extra["architectures"]``): the same name, except the two
    sub-norms of a 1bitLLM ``BitnetForCausalLM`` file (:data:`MASTER_SUB_NORMS`).  Same order."""
    names = {n: n for n in expected_tensors(cfg)}
    if cfg.sub_norms and is_master_layout(cfg.extra.get("architectures")):
        for n in names:
            if n.startswith("model.layers."):
                i, rel = n.split(".", 3)[2:]
                rel = rel[:-len(".weight")] if rel.endswith(".weight") else None
                if rel in MASTER_SUB_NORMS:
                    names[n] = f"model.layers.{i}.{MASTER_SUB_NORMS[rel]}.weight"
    return names


def check_zero_linear(name: str, q: np.ndarray) -> None:
    """Warn when a linear layer is all zeros (a known defect of some 2B4T hub revisions)."""
    if not q.any():
        warnings.warn(f"linear weight {name} is entirely zero: this checkpoint revision is "
                      "probably damaged (see microsoft/BitNet issue #608); pin an older --revision",
                      stacklevel=3)


class RowBlocks:
    """A 2-D float32 tensor handed over a block of rows at a time.

    ``rows(start, stop)`` returns float32 ``[stop - start, shape[1]]``.  Readers use it for the
    embedding so that neither loading nor exporting ever holds the whole float32 table;
    ``np.asarray(blocks)`` still gives the full array when a caller wants it.
    """

    def __init__(self, shape: tuple, rows: Callable[[int, int], np.ndarray], block: int = 4096):
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self._rows, self.block = rows, int(block)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, float32 [rows, cols])`` for consecutive blocks covering every row."""
        for a in range(0, self.shape[0], self.block):
            b = min(a + self.block, self.shape[0])
            x = np.asarray(self._rows(a, b), np.float32)
            if x.shape != (b - a, self.shape[1]):
                raise ValueError(f"rows {a}:{b} came back with shape {x.shape}, expected "
                                 f"{(b - a, self.shape[1])}")
            yield a, x

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.float32)
        for a, x in self.blocks():
            out[a:a + len(x)] = x
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowBlocks(shape={self.shape}, block={self.block})"


def in_order(tensors, names) -> Iterator[tuple[str, object]]:
    """``(name, tensor)`` for each of ``names`` in that order, from a dict or a stream of pairs.

    A stream may come in another order: early tensors wait in a buffer until their turn (a
    stream in the canonical order never buffers more than one).  A missing tensor, a duplicate
    or a name that is not in ``names`` is a ValueError.
    """
    if isinstance(tensors, dict):
        for n in names:
            if n not in tensors:
                raise ValueError(f"missing tensor {n!r}")
            yield n, tensors[n]
        return
    want, pending, done, it = set(names), {}, set(), iter(tensors)
    for n in names:
        while n not in pending:
            try:
                k, v = next(it)
            except StopIteration:
                raise ValueError(f"missing tensor {n!r}") from None
            if k not in want:
                raise ValueError(f"tensor {k!r} does not belong to a model of this shape")
            if k in pending or k in done:
                raise ValueError(f"tensor {k!r} comes twice")
            pending[k] = v
        done.add(n)
        yield n, pending.pop(n)
    for k, _ in it:
        raise ValueError(f"tensor {k!r} comes twice" if k in done else
                         f"tensor {k!r} does not belong to a model of this shape")
