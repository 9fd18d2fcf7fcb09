"""The BitNet b1.58 transformer: ternary weights held packed in a kernel's layout.

Per layer (docs/formats.md, checked against transformers' ``modeling_bitnet``)::

    h   = x + o_proj(attn_sub_norm(attention(rope(q, k), v)))      q, k, v = qkv_proj(input_layernorm(x))
    out = h + down_proj(ffn_sub_norm(relu(gate)**2 * up))           gate, up = gate_up_proj(post_attention_layernorm(h))

then ``norm`` and the tied head ``logits = norm(x) @ embed_tokens.T``.  Every ``*_proj`` is a
BitLinear: per-token int8 activations, ternary weights, ``y = (xq @ Wq.T) * x_scale * w_scale``.
q/k/v and gate/up are packed as one matrix each (same input, one kernel call).

The block is config-driven (:class:`~bitnet_edu.config.BitNetConfig`, docs/formats.md): the
FFN activation (``hidden_act``: ``relu2`` as above, or ``silu``: SwiGLU ``silu(gate) * up``), the
two sub-norms present or not (``sub_norms``; a Llama block has neither: ``o_proj(attention)``,
``down_proj(act)``), a tied head or an untied ``lm_head`` (same :class:`Head` modes), RoPE with
an optional llama3 scaling.  Falcon3 1.58-bit and Llama3-8B-1.58 are the Llama block with SiLU.

Two code paths compute the same thing: ``_layer_reference`` (plain NumPy from :mod:`.layers`,
readable, records a trace) and ``_layer_fast`` (Numba fused glue from :mod:`.fused`).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass

import numba
import numpy as np

from .. import cpu_threads, kernels
from ..kernels import head as head_kernel
from ..kernels import selfcheck
from . import fused
from ..formats.schema import NORMS, RowBlocks, expected_tensors, layer_norms
from .config import BitNetConfig
from .layers import (FFN_ACTIVATIONS, KVCache, apply_rope, attention, quantize_act, rms_norm,
                     rope_tables)

__all__ = ["BitNetModel", "LayerWeights", "Head"]

_ROPE_LOCK = threading.Lock()  # growth of a model's RoPE tables (BitNetModel._rope)
_ONES3 = np.ones(3, np.float32)  # q, k, v scales already applied (an adapter's path)


@dataclass
class LayerWeights:
    """One decoder layer: packed ternary matrices, their scales, and its RMSNorm weights (the
    two sub-norms None in a block without them: Llama, Falcon3)."""

    qkv: kernels.Packed        # [(H + 2 Hkv) D, hidden]
    qkv_scales: np.ndarray     # float32 [3]: q, k, v weight scales
    o: kernels.Packed          # [hidden, H D]
    o_scale: float
    gate_up: kernels.Packed    # [2 F, hidden]
    gate_up_scales: np.ndarray  # float32 [2]
    down: kernels.Packed       # [hidden, F]
    down_scale: float
    input_layernorm: np.ndarray
    post_attention_layernorm: np.ndarray
    attn_sub_norm: np.ndarray | None = None
    ffn_sub_norm: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        packed = sum(p.nbytes for p in (self.qkv, self.o, self.gate_up, self.down))
        return packed + sum(a.nbytes for a in (self.input_layernorm, self.post_attention_layernorm,
                                                self.attn_sub_norm, self.ffn_sub_norm)
                            if a is not None)


class Head:
    """The tied embedding table, used for token lookup and for the logits.

    ``mode="float32"``: the exact table (4 bytes per entry), logits ``x @ table.T``.
    ``mode="int8"``: one absmax scale per row, int8 entries (1 byte, 4x smaller;
    ``quantize_rows_int8`` builds it).  ``mode="int4"``: one absmax scale per 128 entries of a
    row, 4-bit entries (half a byte: 8x smaller, and half the int8 head's time per token, at a
    measured accuracy cost, see ``python -m bitnet_edu.bench decode``).  The quantized modes
    quantize the hidden state to int8 too (blocks of 256) and run the byte dot products of
    :mod:`bitnet_edu.kernels.head` (int4 tables are zero-padded to whole groups of 128).
    """

    MODES = ("float32", "int8", "int4")

    def __init__(self, table: np.ndarray, mode: str = "int8"):
        if mode not in self.MODES:
            raise ValueError(f"head mode must be one of {self.MODES}, got {mode!r}")
        self.mode, self.n = mode, table.shape[1]
        selfcheck.check_head(mode)  # a quantized head wrong on this CPU is refused (once)
        if mode == "float32":
            self.table = np.ascontiguousarray(table, np.float32)
            return
        t = np.ascontiguousarray(table, np.float32)
        if mode == "int8":
            self.table, self.scale = fused.quantize_rows_int8(t)
            self.table = _pad_once(self.table)
        else:  # whole groups of 128 (zero columns: exact)
            t = np.pad(t, ((0, 0), (0, -self.n % head_kernel.G4))) if self.n % head_kernel.G4 else t
            self.table, self.scale = head_kernel.quantize_rows_int4(t)

    @classmethod
    def from_quantized(cls, mode: str, table: np.ndarray, scale: np.ndarray, n: int) -> "Head":
        """Wrap an already quantized table: int8 ``[V, n]`` + ``[V]`` scales, or int4 nibbles
        ``[V, np/2]`` + ``[V, np/128]`` scales (``np``: ``n`` padded to 128); ``n`` the hidden
        size."""
        self = cls.__new__(cls)
        self.mode, self.table, self.scale, self.n = mode, table, scale, n
        if mode == "int8" and table.shape[1] == n:
            self.table = _pad_once(table)
        selfcheck.check_head(mode)
        return self

    @classmethod
    def build(cls, t, mode: str) -> "Head":
        """A Head from a float table ``t`` (array, or RowBlocks quantized block by block: every
        mode quantizes rows independently, so the same table as from the whole array)."""
        if not isinstance(t, RowBlocks) or mode == "float32":
            return cls(np.asarray(t, np.float32), mode)
        table = scale = None
        for r, x in t.blocks():
            part = cls(x, mode)
            if table is None:
                table = np.empty((t.shape[0], *part.table.shape[1:]), part.table.dtype)
                scale = np.empty((t.shape[0], *part.scale.shape[1:]), part.scale.dtype)
            table[r:r + len(x)], scale[r:r + len(x)] = part.table, part.scale
        return cls.from_quantized(mode, table, scale, t.shape[1])

    @property
    def shape(self):
        return (self.table.shape[0], self.n)

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + (self.scale.nbytes if self.mode != "float32" else 0)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the table for token ids ``[T]`` -> float32 ``[T, hidden]``."""
        if self.mode == "float32":
            return self.table[ids].astype(np.float32)
        if self.mode == "int8":
            rows = self.table[ids].astype(np.float32) * self.scale[ids, None]
        else:
            rows = head_kernel.dequantize_rows_int4(self.table[ids], self.scale[ids])
        return np.ascontiguousarray(rows[:, :self.n])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """float32 ``[T, hidden]`` -> float32 ``[T, vocab]``."""
        if self.mode == "float32":
            return x @ self.table.T
        if self.mode == "int4":
            pad = 2 * self.table.shape[1] - self.n
            return head_kernel.head_logits_int4(np.pad(x, ((0, 0), (0, pad))) if pad else x,
                                                self.table, self.scale)
        table, pad = self.table, (-self.table.shape[1]) % head_kernel.QK
        if pad:  # a tiny table (see _pad_once): zero columns per call (exact)
            table = np.pad(table, ((0, 0), (0, pad)))
        if table.shape[1] != x.shape[1]:  # zero columns of x against the padding (exact)
            x = np.pad(x, ((0, 0), (0, table.shape[1] - x.shape[1])))
        return head_kernel.head_logits(x, table, self.scale)

    def dense(self) -> np.ndarray:
        """The table as float32 (exact for ``float32``, dequantized otherwise)."""
        return self.embed(np.arange(self.table.shape[0]))


def _pad_once(table: np.ndarray) -> np.ndarray:
    """An int8 table ``[V, n]`` zero-padded once to whole blocks of ``QK`` columns when that
    costs at most an eighth more memory (1bitLLM-3B: 3200 -> 3328; padding per call copied its
    102 MB table every token, ~150 ms here); a tiny table (hidden 64) stays as is and is padded
    per call.  2B4T's 2560 is whole blocks: unchanged."""
    pad = (-table.shape[1]) % head_kernel.QK
    if not pad or 8 * pad > table.shape[1]:
        return table
    return np.pad(table, ((0, 0), (0, pad)))


class BitNetModel:
    """A loaded BitNet model: ``logits``, ``generate``, ``stream``, ``to_checkpoint``.

    Build it with :func:`bitnet_edu.load_model`, :func:`bitnet_edu.random_model` or
    :meth:`from_checkpoint`.
    """

    def __init__(self, config: BitNetConfig, layers: list, head: Head, norm: np.ndarray,
                 kernel: str, tokenizer=None, lm_head: Head | None = None):
        self.config = config
        self.layers = layers
        self.head = head  # the embedding table; also the output head when tied
        self.lm_head = lm_head or head
        self.norm = np.asarray(norm, np.float32)
        self.kernel_name = kernel
        self.kernel = kernels.get(kernel)
        self.tokenizer = tokenizer
        # bos in front of a text prompt: None = whenever the tokenizer does not add it (HF, as
        # transformers' 2B4T); True/False = a GGUF's tokenizer.ggml.add_bos_token (llama.cpp)
        self.add_bos_token: bool | None = None
        # what opens the assistant's turn in the chat template (tokenizer_config.json's
        # bitnet_edu_generation_prompt; 2B4T's by default)
        self.generation_prompt = "Assistant: "
        self.fast = True  # False: use the NumPy reference glue (slower, same numbers)
        self.ffn_activation = config.hidden_act  # the FFN's gated activation (the property)
        # Numba threads for the forward pass; None = auto: the current Numba setting, but one
        # thread for a small model, where waking a second thread for every matmul costs more than
        # the matmul (measured: the 1.8 MB default model decodes ~15x faster on one thread), and
        # no more threads than CPUs other programs leave free (see cpu_threads).
        self.threads: int | None = None
        # RoPE tables grow with the context actually used (:meth:`_rope`), not sized by
        # max_position_embeddings at load: a config may claim 2**31 positions
        self._cos = self._sin = np.zeros((0, config.head_dim), np.float32)
        self.last_stats: dict = {}
        # a LoRA adapter (bitnet_edu.model.lora.Adapter) run beside the ternary projections, or
        # None: load_adapter / remove_adapter
        self.adapter = None

    # ---- LoRA adapters ------------------------------------------------------------------------
    def load_adapter(self, adapter):
        """Run a LoRA adapter from now on: a PEFT adapter directory (``adapter_config.json`` +
        ``adapter_model.safetensors``), or the name of one shipped in ``bitnet_edu/adapters/``
        (e.g. ``"chat"``).  Replaces any adapter loaded before.  Returns the
        :class:`~bitnet_edu.model.lora.Adapter` (also ``model.adapter``).  ValueError, naming the
        file, when it is not a plain LoRA adapter of this model's shape (docs/formats.md)."""
        from .lora import load_adapter
        self.adapter = load_adapter(adapter, self.config)
        return self.adapter

    def remove_adapter(self):
        """Back to the base model (``model.adapter = None``); returns the adapter removed, or
        None."""
        old, self.adapter = self.adapter, None
        return old

    def _lora(self, i: int):
        """Layer ``i``'s :class:`~bitnet_edu.model.lora.LayerLora`, or None."""
        return None if self.adapter is None else self.adapter.layers[i]

    @property
    def ffn_activation(self) -> str:
        """The FFN's gated activation, the config's ``hidden_act`` at first: ``"relu2"``
        (BitNet's) or ``"silu"`` (SwiGLU: Falcon3's and LLaMA's; on a 2B4T model a deliberately
        wrong model, lesson 04's "fast but wrong" case study).  Any other name is a
        ValueError.  Both run on the fused Numba path and on the NumPy reference path."""
        return self._ffn_activation

    @ffn_activation.setter
    def ffn_activation(self, name: str) -> None:
        if not isinstance(name, str) or name not in FFN_ACTIVATIONS:
            raise ValueError(f"ffn_activation must be one of {sorted(FFN_ACTIVATIONS)}, "
                             f"got {name!r}")
        self._ffn_activation = name

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, config: dict, weights, *, kernel: str | None = None,
                        head: str = "int8", tokenizer=None, progress=None) -> "BitNetModel":
        """Build from the canonical form (:mod:`bitnet_edu.formats.schema`): ``config`` dict,
        ``weights`` a dict or an iterable of ``(name, array)`` (consumed one tensor at a time;
        each layer is packed as soon as its tensors are complete, and an embedding given as
        :class:`~bitnet_edu.formats.schema.RowBlocks` is quantized block by block, so peak
        memory stays near the model's own).  Every loader (HF directory, GGUF) builds through
        here."""
        cfg = BitNetConfig.from_dict(config) if isinstance(config, dict) else config
        if cfg.vocab_size < 1:
            raise ValueError("config vocab_size=0: a model needs at least one token")
        if cfg.projection_norms or cfg.qk_norm:
            raise ValueError("this config is BitNet-embedding's block (per-projection input "
                             "norms, q/k head norms): build it with EmbeddingModel "
                             "(bitnet_edu.load_model returns one for such a checkpoint)")
        kname = kernel or kernels.DEFAULT
        k = kernels.get(kname)
        want = expected_tensors(cfg)
        items = weights.items() if isinstance(weights, dict) else weights
        pending: dict[int, _LayerBuilder] = {}
        shapes = {n.split(".", 3)[3]: s for n, s in want.items() if n.startswith("model.layers.0.")}
        layers: list = [None] * cfg.num_hidden_layers
        top: dict = {}
        seen = set()

        for name, a in items:
            if name not in want:
                continue  # extra tensors (e.g. rotary buffers) are ignored
            a = a if isinstance(a, RowBlocks) else np.asarray(a)
            if tuple(a.shape) != tuple(want[name]):
                raise ValueError(f"tensor {name!r}: expected shape {want[name]}, got {a.shape}")
            seen.add(name)
            if not name.startswith("model.layers."):
                top[name] = Head.build(a, head) if name != "model.norm.weight" else a
                continue
            i = int(name.split(".")[2])
            if i not in pending:
                pending[i] = _LayerBuilder(k, shapes)
            layer = pending[i]
            if layer.add(name.split(".", 3)[3], a, name):
                layers[i] = pending.pop(i).build()
                if progress:
                    progress(i + 1, cfg.num_hidden_layers)
        missing = [n for n in want if n not in seen]
        if missing:
            raise ValueError(f"missing tensor {missing[0]!r} ({len(missing)} missing in all)")
        emb, lm = top["model.embed_tokens.weight"], top.get("lm_head.weight")
        return cls(cfg, layers, emb, top["model.norm.weight"], kname, tokenizer, lm)

    def iter_checkpoint(self, *, blocks: bool = False):
        """Yield the canonical ``(name, array)`` one tensor at a time, in the schema's order
        (:func:`~bitnet_edu.formats.schema.expected_tensors`): int8 ternary linears, each
        followed by its float32 ``[1]`` scale, float32 others.  Only one packed matrix is
        unpacked at a time, so writers (``to_gguf``, ``write_hf_checkpoint``) stream.

        The embedding (and an untied ``lm_head``) is float32, dequantized for an int8/int4 head;
        ``blocks=True`` gives it as :class:`~bitnet_edu.formats.schema.RowBlocks` instead, rows
        decoded a block at a time (the 2B4T table is 1.3 GB as float32).
        """
        cfg = self.config
        hq, hkv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        f = cfg.intermediate_size
        if self.adapter is not None:
            warnings.warn(f"the checkpoint holds the base model only: the LoRA adapter "
                          f"{self.adapter.name!r} is not in it (ship its directory beside it)",
                          RuntimeWarning, stacklevel=2)

        def table(h):
            if not blocks:
                return h.dense()
            return RowBlocks(h.shape, lambda a, b: h.embed(np.arange(a, b)))

        def linear(name, q, s):
            yield name + ".weight", np.ascontiguousarray(q, np.int8)
            yield name + ".weight_scale", np.array([s], np.float32)

        yield "model.embed_tokens.weight", table(self.head)
        yield "model.norm.weight", self.norm.copy()
        if self.lm_head is not self.head:
            yield "lm_head.weight", table(self.lm_head)
        for i, L in enumerate(self.layers):
            p = f"model.layers.{i}."
            qkv = self.unpack(L.qkv)  # q, k, v (and gate, up) share one packed matrix
            yield from linear(p + "self_attn.q_proj", qkv[:hq], L.qkv_scales[0])
            yield from linear(p + "self_attn.k_proj", qkv[hq:hq + hkv], L.qkv_scales[1])
            yield from linear(p + "self_attn.v_proj", qkv[hq + hkv:], L.qkv_scales[2])
            del qkv
            yield from linear(p + "self_attn.o_proj", self.unpack(L.o), L.o_scale)
            gu = self.unpack(L.gate_up)
            yield from linear(p + "mlp.gate_proj", gu[:f], L.gate_up_scales[0])
            yield from linear(p + "mlp.up_proj", gu[f:], L.gate_up_scales[1])
            del gu
            yield from linear(p + "mlp.down_proj", self.unpack(L.down), L.down_scale)
            for name in layer_norms(cfg):
                yield p + name + ".weight", getattr(L, name.split(".")[-1]).copy()

    def to_checkpoint(self) -> tuple[dict, dict]:
        """Canonical ``(config_dict, weights)``: int8 ternary linears, float32 ``[1]`` scales,
        float32 others (with an int8 head the embedding is the dequantized table);
        ``dict(iter_checkpoint())``."""
        return self.config.to_dict(), dict(self.iter_checkpoint())

    def unpack(self, p: kernels.Packed) -> np.ndarray:
        """A packed matrix back to int8 ``[out, in]`` (exact): its kernel's ``unpack``."""
        return kernels.get(p.kernel).unpack(p)

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """Number of parameters (the tied embedding counted once, weight scales included)."""
        counts = self.config.param_counts()
        return counts["total"] + counts["scales"]

    def memory_report(self) -> dict:
        """Bytes held by each part of the model (what the notebook's budget table shows)."""
        lin = sum(L.nbytes for L in self.layers)
        head = self.head.nbytes + (self.lm_head.nbytes if self.lm_head is not self.head else 0)
        out = {"ternary layers": lin, f"embedding/head ({self.head.mode})": head,
               "total": lin + head + self.norm.nbytes}
        if self.adapter is not None:
            out["LoRA adapter (float32)"] = self.adapter.nbytes
            out["total"] += self.adapter.nbytes
        return out

    # ---- forward ------------------------------------------------------------------------------
    SMALL_MODEL_BYTES = 32 * 2**20  # below this many bytes of ternary layers, auto threads = 1

    @contextlib.contextmanager
    def _numba_threads(self):
        prev = numba.get_num_threads()
        n = self.threads or prev
        if self.threads is None:
            if sum(L.nbytes for L in self.layers) < self.SMALL_MODEL_BYTES:
                n = 1
            else:  # leave the cores other programs keep busy to them
                n = cpu_threads.auto_threads(n)
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
        try:
            yield
        finally:
            numba.set_num_threads(prev)

    def new_cache(self, capacity: int | None = None) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim,
                       capacity or c.max_position_embeddings)

    def forward(self, ids, cache: KVCache | None = None, *, last_only: bool = False, trace=None):
        """Run tokens ``ids`` (positions ``cache.length ...``) through the model.

        Returns float32 logits ``[T, vocab]`` (``[1, vocab]`` with ``last_only``).  The cache is
        extended by ``T``.  ``trace``: a list that receives one dict of intermediates per layer
        (then the NumPy reference path runs).
        """
        with self._numba_threads():
            xn = self._final_hidden(ids, cache, last_only, trace)
            logits = self.lm_head.logits(xn)
        bad = ~np.isfinite(xn).all(axis=1)
        if bad.any():  # a quantized head would turn a NaN state into finite garbage: say so
            logits[bad] = np.nan
            warnings.warn(f"the hidden state is not finite (NaN or inf) at {int(bad.sum())} of "
                          f"{len(bad)} positions: their logits are NaN (a weight or the input "
                          "overflowed or is not finite)", RuntimeWarning, stacklevel=2)
        if trace is not None:
            trace.append({"final_norm": xn, "logits": logits})
        return logits

    def hidden_states(self, ids) -> np.ndarray:
        """The final-normed hidden state of every token of ``ids`` (no cache kept): float32
        ``[T, hidden]``, what the head turns into logits and what :meth:`embed` pools."""
        with self._numba_threads():
            return self._final_hidden(ids, None, False, None)  # a cache of len(ids)

    def embed(self, texts, *, pooling: str = "last", normalize: bool = True,
              truncate: bool = False, progress: bool | None = None) -> np.ndarray:
        """One vector per text: float32 ``[n, hidden]`` (``[hidden]`` for a single string).

        ``texts``: a string, a list of strings, or lists of token ids.  Each text runs alone
        (bos in front as for :meth:`generate`), its final-normed hidden states are pooled
        (``pooling``: ``"last"`` token or ``"mean"`` over tokens, :mod:`.pooling`) and, with
        ``normalize``, scaled to length 1 so a dot product is the cosine similarity.  A text
        longer than ``max_position_embeddings`` is a ValueError unless ``truncate``.  A decoder
        trained to predict the next token was not trained to embed: its vectors still group
        similar texts a little (Lesson 04, 8c); BitNet-embedding was trained for it."""
        from .pooling import embed_texts
        return embed_texts(self, texts, pooling=pooling, normalize=normalize,
                           truncate=truncate, progress=progress)

    def _final_hidden(self, ids, cache, last_only, trace) -> np.ndarray:
        """The layers, then the final norm: float32 ``[T, hidden]`` (``[1, hidden]`` with
        ``last_only``); the cache grows by ``T``.  Called under :meth:`_numba_threads`."""
        ids = self._token_ids(ids)
        if cache is None:
            cache = self.new_cache(len(ids))
        start, t = self._cache_start(cache, len(ids)), len(ids)
        self._rope(start + t)
        x = self.head.embed(ids)
        if trace is not None:
            trace.append({"embedding": x.copy()})
        for i, L in enumerate(self.layers):
            if trace is not None or not self.fast:
                x = self._layer_reference(i, L, x, cache, start, trace, self._lora(i))
            else:
                x = self._layer_fast(i, L, x, cache, start, self._lora(i))
        cache.length += t
        if last_only:
            x = x[-1:]
        return rms_norm(x, self.norm, self.config.rms_norm_eps)

    def _token_ids(self, ids) -> np.ndarray:
        """``ids`` as int64 ``[T]``, or a ValueError for no tokens, non-integers or ids outside
        the vocabulary."""
        ids = np.asarray(ids)
        if ids.size == 0:
            raise ValueError("ids is empty: give at least one token")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype} values such as "
                             f"{ids.reshape(-1)[0]!r}")
        ids = ids.astype(np.int64).reshape(-1)
        vocab = self.config.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise ValueError(f"token id {bad} out of range [0, {vocab})")
        return ids

    def _cache_start(self, cache, t: int) -> int:
        """The position where ``t`` new tokens go in ``cache``, after checking that it is a
        KV cache of this model's shape with room for them (ValueError otherwise)."""
        c = self.config
        if not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache (model.new_cache(capacity)), got "
                             f"{type(cache).__name__}")
        cache.check(c.num_hidden_layers, c.num_key_value_heads, c.head_dim)
        start = int(cache.length)
        limit = min(c.max_position_embeddings, cache.capacity)
        if start + t > limit:
            raise ValueError(f"context too long: {start} cached + {t} new tokens > {limit} "
                             f"(max_position_embeddings={c.max_position_embeddings}, "
                             f"cache capacity={cache.capacity})")
        return start

    def forward_batch(self, ids, caches) -> np.ndarray:
        """One decode step for B independent sequences: token ``ids[b]`` at position
        ``caches[b].length`` of sequence ``b``.

        ``ids`` int ``[B]``, ``caches`` B distinct :class:`KVCache` (ragged: each its own
        length).  Returns float32 logits ``[B, vocab]``; every cache grows by one.  The B tokens
        go through each ternary matrix in one GEMM call (the weights are read once per step,
        not B times); attention runs per sequence on its own cache.  Row ``b`` is bit for bit
        ``forward([ids[b]], caches[b])[0]``: activations are quantized per token, the integer
        sums are exact and the rescale is per row, so batching never changes a result.
        """
        caches = list(caches)
        if np.ndim(ids) != 1 or np.size(ids) == 0 or len(caches) != np.size(ids):
            raise ValueError(f"forward_batch takes one token per sequence: ids [B] and B caches, "
                             f"got ids of shape {np.shape(ids)} and {len(caches)} caches")
        ids = self._token_ids(ids)
        if len({id(k) for k in caches}) != len(caches):
            raise ValueError("forward_batch: the same KV cache appears twice; each sequence "
                             "needs its own (model.new_cache)")
        if not self.fast:  # the reference path, one by one
            return np.concatenate([self.forward([int(i)], k) for i, k in zip(ids, caches)])
        c = self.config
        for k in caches:
            self._cache_start(k, 1)
        starts = [int(k.length) for k in caches]
        self._rope(max(starts) + 1)
        x = self.head.embed(ids)
        # the caches' arrays once per step for the batched attention kernel (typed lists: one
        # Numba call attends every sequence; their capacities may differ)
        kv = (numba.typed.List([k.k for k in caches]), numba.typed.List([k.v for k in caches]),
              np.array(starts, np.int64))
        with self._numba_threads():
            for i, L in enumerate(self.layers):
                x = self._layer_batch(i, L, x, kv, self._lora(i))
            for k in caches:
                k.length += 1
            xn = rms_norm(x, self.norm, c.rms_norm_eps)
            logits = self._head_rows(xn)
        bad = ~np.isfinite(xn).all(axis=1)
        if bad.any():
            logits[bad] = np.nan
            warnings.warn(f"the hidden state is not finite at {int(bad.sum())} of {len(bad)} "
                          "sequences: their logits are NaN", RuntimeWarning, stacklevel=2)
        return logits

    def _head_rows(self, xn):
        """The output head on ``[B, hidden]``, each row the same bits as alone.  The quantized
        heads are per-row integer dot products; a float32 BLAS product may sum in another order
        for another number of rows, so the float head runs row by row (small models only)."""
        if self.lm_head.mode != "float32" or len(xn) == 1:
            return self.lm_head.logits(xn)
        return np.concatenate([self.lm_head.logits(xn[b:b + 1]) for b in range(len(xn))])

    def _layer_batch(self, i, L: LayerWeights, x, kv, lora=None):
        """:meth:`_layer_fast` for B sequences of one token each (``x`` float32 ``[B, hidden]``):
        the same layer, with ``fused.attention_batch`` attending every sequence on its own
        cache in one call.  ``kv``: typed lists of the caches' ``k`` and ``v`` arrays and the
        int64 ``[B]`` positions.  One sequence with a short context keeps the serial kernel,
        as ``forward`` does (a parallel region costs more than it saves there)."""
        c = self.config
        ks, vs, starts = kv
        attn = (fused.attention_batch_1 if len(starts) == 1 and starts[0] < 1024
                else fused.attention_batch)

        def attend(qkv, scales):
            return attn(qkv, scales, self._cos, self._sin, ks, vs, i, starts,
                        c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        return self._layer_glue(L, x, attend, lora)

    def _rope(self, n: int) -> None:
        """Make the RoPE tables cover positions ``0 .. n-1``: doubled when too short (rows of a
        longer table equal the shorter one's, so growing never changes a result), at most
        ``max_position_embeddings`` rows.  Each growth swaps in new arrays, so a concurrent
        forward keeps reading a table at least as long as it needs."""
        if n <= min(len(self._cos), len(self._sin)):
            return
        with _ROPE_LOCK:  # never replaced by a shorter table another thread computed
            have = min(len(self._cos), len(self._sin))
            if n <= have:
                return
            c = self.config
            size = min(max(n, 2 * have, 64), c.max_position_embeddings)
            self._cos, self._sin = rope_tables(size, c.head_dim, c.rope_theta, c.rope_scaling)

    def _linear(self, packed, xq, xs, w_scale):
        return self.kernel.linear(packed, xq, xs, w_scale)

    def _linear_fast(self, packed, xq, xs, w_scale):
        """``_linear`` through the kernel's unchecked paths (``xq`` and ``xs`` come from the
        fused glue, already int8 C-contiguous and float32): ``linear_1`` for one token
        (decode), ``linear_fast`` for many; same float32 bits as ``linear``."""
        if len(xq) == 1:
            return self.kernel.linear_1(packed, xq, xs, w_scale)
        return self.kernel.linear_fast(packed, xq, xs, w_scale)

    def _layer_fast(self, i, L: LayerWeights, x, cache, start, lora=None):
        c = self.config
        one = len(x) == 1  # decode: the glue runs without threads (see fused)
        attn = fused.attention_block_1 if one and start < 1024 else fused.attention_block

        def attend(qkv, scales):
            return attn(qkv, scales, self._cos, self._sin, cache.k[i], cache.v[i], start,
                        c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        return self._layer_glue(L, x, attend, lora)

    def _layer_glue(self, L: LayerWeights, x, attend, lora=None):
        """One layer on the fused Numba path, ``attend(qkv, scales) -> [T, H * D]`` doing the
        attention (one sequence, or each sequence of a batch on its own cache; ``scales`` the
        q, k, v weight scales still to apply).  ``lora``: the layer's
        :class:`~bitnet_edu.model.lora.LayerLora` (None: the base model, untouched)."""
        if lora is not None:
            return self._layer_glue_lora(L, x, attend, lora)
        eps = self.config.rms_norm_eps
        one = len(x) == 1  # one token: the glue runs without threads (see fused)
        norm_quant = fused.rmsnorm_quant_1 if one else fused.rmsnorm_quant
        sub = L.ffn_sub_norm is not None
        ffn_quant = fused.FFN_QUANT[self._ffn_activation, sub, one]
        xq, xs = norm_quant(x, L.input_layernorm, eps)
        a = attend(self._linear_fast(L.qkv, xq, xs, 1.0), L.qkv_scales)
        aq, as_ = self._sub_quant(a, L.attn_sub_norm, one)
        x = x + self._linear_fast(L.o, aq, as_, L.o_scale)
        zq, zs = norm_quant(x, L.post_attention_layernorm, eps)
        gu = self._linear_fast(L.gate_up, zq, zs, 1.0)
        if sub:
            hq, hs = ffn_quant(gu, L.gate_up_scales[0], L.gate_up_scales[1], L.ffn_sub_norm, eps)
        else:
            hq, hs = ffn_quant(gu, L.gate_up_scales[0], L.gate_up_scales[1])
        return x + self._linear_fast(L.down, hq, hs, L.down_scale)

    def _sub_quant(self, a, w, one):
        """int8 of the attention output: through attn_sub_norm ``w``, or straight (a block
        without sub-norms, ``w`` None)."""
        if w is None:
            return (fused.quantize_rows_int8_1 if one else fused.quantize_rows_int8)(a)
        return (fused.rmsnorm_quant_1 if one else fused.rmsnorm_quant)(a, w,
                                                                      self.config.rms_norm_eps)

    def _layer_glue_lora(self, L: LayerWeights, x, attend, lora):
        """:meth:`_layer_glue` with an adapter on some of the layer's projections.

        The ternary part is the same fused int8 path.  Each adapted group also needs the float
        normalized input (``rms_norm``, NumPy) for its low-rank term; that term is added to the
        projection's *scaled* output, so the weight scales are applied here and the fused
        kernels after it get scales of 1.0 (dividing the term by a scale instead would fail for
        a zero scale)."""
        c, eps = self.config, self.config.rms_norm_eps
        one = len(x) == 1
        norm_quant = fused.rmsnorm_quant_1 if one else fused.rmsnorm_quant
        sub = L.ffn_sub_norm is not None
        ffn_quant = fused.FFN_QUANT[self._ffn_activation, sub, one]
        hq_, hkv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        f = c.intermediate_size
        xq, xs = norm_quant(x, L.input_layernorm, eps)
        qkv = self._linear_fast(L.qkv, xq, xs, 1.0)
        if lora.qkv is not None:
            cols = np.repeat(L.qkv_scales, [hq_, hkv, hkv])
            qkv = qkv * cols + lora.qkv.delta(rms_norm(x, L.input_layernorm, eps))
            a = attend(qkv, _ONES3)
        else:
            a = attend(qkv, L.qkv_scales)
        aq, as_ = self._sub_quant(a, L.attn_sub_norm, one)
        o = self._linear_fast(L.o, aq, as_, L.o_scale)
        if lora.o is not None:
            o = o + lora.o.delta(_maybe_norm(a, L.attn_sub_norm, eps))
        x = x + o
        zq, zs = norm_quant(x, L.post_attention_layernorm, eps)
        gu = self._linear_fast(L.gate_up, zq, zs, 1.0)
        sg, su = L.gate_up_scales[0], L.gate_up_scales[1]
        if lora.gate_up is not None:
            cols = np.repeat(L.gate_up_scales, [f, f])
            gu = gu * cols + lora.gate_up.delta(rms_norm(x, L.post_attention_layernorm, eps))
            sg = su = np.float32(1.0)
        hq, hs = ffn_quant(gu, sg, su, L.ffn_sub_norm, eps) if sub else ffn_quant(gu, sg, su)
        down = self._linear_fast(L.down, hq, hs, L.down_scale)
        if lora.down is not None:
            act = FFN_ACTIVATIONS[self._ffn_activation](gu[:, :f] * sg, gu[:, f:] * su)
            down = down + lora.down.delta(_maybe_norm(act, L.ffn_sub_norm, eps))
        return x + down

    def _layer_reference(self, i, L: LayerWeights, x, cache, start, trace=None, lora=None):
        """One layer in plain NumPy (``lora``: the layer's adapter, each adapted projection
        ``BitLinear(xn) + (xn @ A.T) @ (B * scaling).T``; its terms go into the trace as
        ``lora_<group>``)."""
        c, eps = self.config, self.config.rms_norm_eps
        t, d, h, hkv = len(x), c.head_dim, c.num_attention_heads, c.num_key_value_heads
        deltas = {}

        def low_rank(group, xn):  # the adapter's term for one packed matrix, or None
            g = None if lora is None else getattr(lora, group)
            if g is None:
                return None
            deltas["lora_" + group] = g.delta_reference(xn)
            return deltas["lora_" + group]

        def plus(y, dy):
            return y if dy is None else y + dy

        xn = rms_norm(x, L.input_layernorm, eps)
        qkv = self._linear(L.qkv, *quantize_act(xn), 1.0)
        q = qkv[:, : h * d].reshape(t, h, d) * L.qkv_scales[0]
        k = qkv[:, h * d:(h + hkv) * d].reshape(t, hkv, d) * L.qkv_scales[1]
        v = qkv[:, (h + hkv) * d:].reshape(t, hkv, d) * L.qkv_scales[2]
        dq = low_rank("qkv", xn)
        if dq is not None:
            q = q + dq[:, : h * d].reshape(t, h, d)
            k = k + dq[:, h * d:(h + hkv) * d].reshape(t, hkv, d)
            v = v + dq[:, (h + hkv) * d:].reshape(t, hkv, d)
        cos, sin = self._cos[start:start + t], self._sin[start:start + t]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache.k[i][:, start:start + t] = k.transpose(1, 0, 2)
        cache.v[i][:, start:start + t] = v.transpose(1, 0, 2)
        keys = cache.k[i][:, : start + t].transpose(1, 0, 2)
        vals = cache.v[i][:, : start + t].transpose(1, 0, 2)
        a, probs = attention(q, keys, vals, start, return_probs=True)
        an = _maybe_norm(a, L.attn_sub_norm, eps)
        hid = x + plus(self._linear(L.o, *quantize_act(an), L.o_scale), low_rank("o", an))
        z = rms_norm(hid, L.post_attention_layernorm, eps)
        gu = self._linear(L.gate_up, *quantize_act(z), 1.0)
        f = c.intermediate_size
        gate, up = gu[:, :f] * L.gate_up_scales[0], gu[:, f:] * L.gate_up_scales[1]
        dgu = low_rank("gate_up", z)
        if dgu is not None:
            gate, up = gate + dgu[:, :f], up + dgu[:, f:]
        act = FFN_ACTIVATIONS[self.ffn_activation](gate, up)
        actn = _maybe_norm(act, L.ffn_sub_norm, eps)
        out = hid + plus(self._linear(L.down, *quantize_act(actn), L.down_scale),
                         low_rank("down", actn))
        if trace is not None:
            trace.append(dict(layer=i, input=x, attn_norm=xn, q=q, k=k, v=v, attn_probs=probs,
                              attn_out=a, attn_sub_norm=an, residual=hid, ffn_norm=z, gate=gate,
                              up=up, act=act, ffn_sub_norm=actn, output=out, **deltas))
        return out

    # ---- public API ---------------------------------------------------------------------------
    def logits(self, ids, *, trace=None) -> np.ndarray:
        """Full forward of ``ids`` (no cache kept): float32 ``[len(ids), vocab]``."""
        return self.forward(ids, self.new_cache(len(np.asarray(ids).reshape(-1))), trace=trace)

    def encode(self, text: str) -> list[int]:
        from ..tokenizer import encode
        return encode(self._need_tokenizer(), text)

    def decode(self, ids) -> str:
        return self._need_tokenizer().decode([int(i) for i in ids], skip_special_tokens=False)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer (random_model or a checkpoint without "
                             "tokenizer.json): pass token ids instead of text")
        return self.tokenizer

    def generate(self, prompt, max_new_tokens: int = 32, **kwargs):
        """Generate after ``prompt``: text -> new text, token ids -> new ids (a list of int).

        A list of prompts (texts, or lists of ids) gives a list of results.  Options:
        ``temperature`` (0 = greedy), ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``,
        ``stop`` (token ids and/or strings; the model's eos ids by default).  Speed figures of
        the last call are in ``model.last_stats``.
        """
        from .generation import generate
        return generate(self, prompt, max_new_tokens, **kwargs)

    def stream(self, prompt, max_new_tokens: int = 32, **kwargs):
        """Like :meth:`generate` for one prompt, yielding pieces (text or ids) as they are made."""
        from .generation import stream
        return stream(self, prompt, max_new_tokens, **kwargs)

    def chat(self, messages, max_new_tokens: int = 128, **kwargs) -> str:
        """Reply to ``[{"role": "user", "content": ...}, ...]`` with the 2B4T chat template."""
        from .generation import chat_prompt
        return self.generate(chat_prompt(self, messages), max_new_tokens, **kwargs)

    def __repr__(self) -> str:
        c = self.config
        lora = "" if self.adapter is None else f", adapter {self.adapter.name!r}"
        return (f"BitNetModel({c.num_hidden_layers} layers, hidden {c.hidden_size}, "
                f"heads {c.num_attention_heads}/{c.num_key_value_heads}, vocab {c.vocab_size}, "
                f"kernel {self.kernel_name!r}, head {self.head.mode}{lora})")


def _maybe_norm(x, w, eps):
    """``rms_norm(x, w)``, or ``x`` itself for a block without that sub-norm (``w`` None)."""
    return x if w is None else rms_norm(x, w, eps)


# packed matrices of a layer: linears sharing an input are packed as one (one kernel call)
_GROUPS = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "o": ("self_attn.o_proj",), "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
           "down": ("mlp.down_proj",)}
_GROUP_OF = {n: g for g, names in _GROUPS.items() for n in names}


class _LayerBuilder:
    """One layer's canonical tensors as they stream in (names relative to ``model.layers.N.``).

    The int8 weights of a group are copied into one buffer as they come, and the group is packed
    as soon as its weights and scales are all there, so a streaming load holds at most one
    group unpacked (the 2B4T's gate+up: 35 MB) instead of a whole layer.
    """

    def __init__(self, k, shapes: dict):
        self.k, self.shapes = k, shapes  # shapes: every tensor of a layer, relative names
        self.buffers: dict[str, np.ndarray] = {}
        self.packed: dict = {}
        self.seen: set = set()
        self.other: dict = {}  # scales and norms

    def add(self, rel: str, a: np.ndarray, where: str) -> bool:
        """Take one tensor; True once the layer is complete."""
        lin = rel[:-len(".weight")] if rel.endswith(".weight") else None
        if lin in _GROUP_OF:
            if a.dtype != np.int8:
                raise ValueError(f"{where} must be int8 ternary, got {a.dtype}")
            group = _GROUP_OF[lin]
            names = _GROUPS[group]
            if len(names) == 1:
                self.buffers[group] = a
            else:
                rows = [self.shapes[n + ".weight"][0] for n in names]
                if group not in self.buffers:
                    self.buffers[group] = np.empty((sum(rows), a.shape[1]), np.int8)
                r0 = sum(rows[:names.index(lin)])
                self.buffers[group][r0:r0 + len(a)] = a
        else:
            self.other[rel] = a
        self.seen.add(rel)
        for group, names in _GROUPS.items():
            if group not in self.packed and all(n + ".weight" in self.seen and
                                                n + ".weight_scale" in self.seen for n in names):
                self.packed[group] = self.k.pack(self.buffers.pop(group))
        return len(self.seen) == len(self.shapes)

    def build(self) -> LayerWeights:
        d = self.other

        def s(name):
            return float(np.asarray(d[name + ".weight_scale"], np.float32).reshape(-1)[0])

        norm = {n.split(".")[-1]: np.asarray(d[n + ".weight"], np.float32) for n in NORMS
                if n + ".weight" in d}  # a block without sub-norms has two
        p = self.packed
        return LayerWeights(
            qkv=p["qkv"], o=p["o"], gate_up=p["gate_up"], down=p["down"],
            qkv_scales=np.array([s("self_attn.q_proj"), s("self_attn.k_proj"),
                                 s("self_attn.v_proj")], np.float32),
            o_scale=s("self_attn.o_proj"), down_scale=s("mlp.down_proj"),
            gate_up_scales=np.array([s("mlp.gate_proj"), s("mlp.up_proj")], np.float32), **norm)
