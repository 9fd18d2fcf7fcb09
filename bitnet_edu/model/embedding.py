"""BitNet-embedding: a ternary decoder read as a text encoder (microsoft/bitnet-embedding-0.6b).

The block (docs/family.md, 2d; bitnet.cpp ``docs/bitnet-embeddings-i2s-guide.md``) is Qwen3's
with every projection a "BitLinear with LN": each of the seven normalizes its own input before
the per-token int8 quantization, so q, k and v cannot share one quantized input::

    lin_p(x) = ternary_matmul(act_quant(RMSNorm(x, p.norm)), W_p) * w_scale_p

    a   = input_layernorm(x)
    q   = q_norm(lin_q(a)) per head,  k = k_norm(lin_k(a)) per head,  v = lin_v(a)
    h   = x + lin_o(attention(rope(q), rope(k), v))                     causal, grouped-query
    b   = post_attention_layernorm(h)
    out = h + lin_down(silu(lin_gate(b)) * lin_up(b))

then the final ``norm``.  microsoft/bitnet-embedding-270m is Gemma3's block with the same
projections (``BitNetConfig.sandwich_norms`` and friends): the attention output and the FFN
output are normed before their residual adds (``post_attention_layernorm``,
``post_feedforward_layernorm``; ``pre_feedforward_layernorm`` feeds the FFN), the layer norms
multiply by ``1 + w``, the embedding rows by ``sqrt(hidden)``, scores by
``query_pre_attn_scalar**-0.5``, the FFN is GELU-tanh gated, and five of every six layers
attend within a sliding window with their own RoPE base.  One vector per text: the final
state of the last token (an appended ``<|endoftext|>``), L2-normalized (:mod:`.pooling`).
There is no head: nothing is decoded.

Two code paths compute the same thing (``_layer(..., reference=...)``, ``model.fast``): the
reference one in plain NumPy (:mod:`.layers`), and the fast one, whose norm + int8 passes, FFN
middle and attention are the decoder's fused Numba kernels (:mod:`.fused`); both call the
ternary kernels through the one kernel interface (``kernel.linear``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..formats.schema import LINEARS, RowBlocks, expected_tensors
from . import fused
from .config import BitNetConfig
from .layers import (EMBEDDING_FFN_ACTIVATIONS, apply_rope, attention, quantize_act, rms_norm,
                     rope_tables)
from .transformer import BitNetModel, Head

__all__ = ["EmbeddingModel", "EmbeddingLayer"]

_ONES3 = np.ones(3, np.float32)
#: the fused FFN middle of each activation an embedding block has (activation, the down
#: projection's input norm, int8); their NumPy references: tests/test_family.py
_FFN_GLUE = {"silu": fused.silu_rmsnorm_quant, "gelu_tanh": fused.gelu_tanh_rmsnorm_quant,
             "relu2": fused.relu2_rmsnorm_quant}


@dataclass
class EmbeddingLayer:
    """One layer: each projection packed on its own with its absmean scale and input norm."""

    packed: dict          # LINEARS name -> kernels.Packed ([out, in])
    scales: dict          # LINEARS name -> float (absmean: multiplies the output)
    norms: dict           # LINEARS name -> float32 [in], the projection's own input RMSNorm
    input_layernorm: np.ndarray           # float32 [hidden]
    post_attention_layernorm: np.ndarray  # float32 [hidden]
    q_norm: np.ndarray | None             # float32 [head_dim] (None: no head norms)
    k_norm: np.ndarray | None
    # Gemma3 (sandwich_norms): around the FFN; post_attention_layernorm then normalizes the
    # attention output.  Every weight here is the one the norm multiplies by: a (1 + w)
    # checkpoint's offset is added at load.
    pre_feedforward_layernorm: np.ndarray | None = None
    post_feedforward_layernorm: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        arrays = [a for p in self.packed.values() for a in p.arrays]
        arrays += list(self.norms.values()) + [self.input_layernorm,
                                               self.post_attention_layernorm]
        arrays += [a for a in (self.q_norm, self.k_norm, self.pre_feedforward_layernorm,
                               self.post_feedforward_layernorm) if a is not None]
        return sum(a.nbytes for a in arrays) + 4 * len(self.scales)


class EmbeddingModel:
    """A loaded ternary embedding model: ``embed(texts)`` -> L2-normalized float32 vectors.

    Build it with :func:`bitnet_edu.load_model` (a BitNet-embedding directory),
    :func:`bitnet_edu.random_model` (``"bitnet-embedding-0.6b"``, ``"bitnet-embedding-270m"``)
    or :meth:`from_checkpoint`.
    """

    # below this many bytes of layers, one Numba thread (BitNetModel's rule, a lower bound: a
    # whole text at once keeps a second thread busy where one decoded token did not; the 270M's
    # 29 MB of layers embed 1.6x faster on 2 threads)
    SMALL_MODEL_BYTES = 8 * 2**20

    def __init__(self, config: BitNetConfig, layers: list, table: Head, norm: np.ndarray,
                 kernel: str, tokenizer=None):
        self.config = config
        self.layers = layers
        self.head = table  # the token embedding table (looked up only)
        self.norm = np.asarray(norm, np.float32)
        self.kernel_name = kernel
        self.kernel = kernels.get(kernel)
        self.tokenizer = tokenizer
        # appended to every text before pooling the last token (the converter forces
        # <|endoftext|> 151643 for Qwen3: docs/family.md, 2d); None appends nothing
        self.embed_eos_id: int | None = (config.eos_ids or [None])[0]
        self.add_bos_token: bool | None = None
        # the pooling the model was trained with (sentence-transformers' 1_Pooling/config.json;
        # the published models: last token)
        self.pooling = "last"
        self.fast = True  # False: the NumPy reference attention (same maths)
        self.threads: int | None = None
        self._tables: dict = {}  # RoPE base -> (cos, sin) float32 [positions, head_dim]
        self.last_stats: dict = {}

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, config, weights, *, kernel: str | None = None, head: str = "float32",
                        tokenizer=None, progress=None) -> "EmbeddingModel":
        """Build from the canonical form (:mod:`bitnet_edu.formats.schema` for a config with
        ``projection_norms``): int8 ternary linears each followed by its float32 ``[1]`` scale,
        float32 norms and embedding (an array or RowBlocks), a dict or a stream of pairs.
        ``head``: how the embedding table is held (``"float32"``, ``"int8"``, ``"int4"``; it
        is only looked up, one row per token)."""
        cfg = BitNetConfig.from_dict(config) if isinstance(config, dict) else config
        if not cfg.projection_norms:
            raise ValueError("EmbeddingModel runs BitNet-embedding's block (projection_norms: "
                             "true); this config is a decoder's: use BitNetModel")
        if cfg.vocab_size < 1:
            raise ValueError("config vocab_size=0: a model needs at least one token")
        kname = kernel or kernels.DEFAULT
        k = kernels.get(kname)
        want = expected_tensors(cfg)
        items = weights.items() if isinstance(weights, dict) else weights
        layers: list = [None] * cfg.num_hidden_layers
        parts: dict[int, dict] = {}
        per_layer = sum(1 for n in want if n.startswith("model.layers.0."))
        top: dict = {}
        seen = set()
        for name, a in items:
            if name not in want:
                continue
            a = a if isinstance(a, RowBlocks) else np.asarray(a)
            if tuple(a.shape) != tuple(want[name]):
                raise ValueError(f"tensor {name!r}: expected shape {want[name]}, got {a.shape}")
            seen.add(name)
            if not name.startswith("model.layers."):
                top[name] = Head.build(a, head) if name == "model.embed_tokens.weight" else \
                    np.asarray(a, np.float32) + np.float32(cfg.norm_offset)
                continue
            i, rel = int(name.split(".")[2]), name.split(".", 3)[3]
            got = parts.setdefault(i, {})
            if rel.endswith("_proj.weight"):
                if a.dtype != np.int8:
                    raise ValueError(f"{name} must be int8 ternary, got {a.dtype}")
                got[rel] = k.pack(a)  # packed as it arrives: the int8 copy is freed
            else:
                got[rel] = np.asarray(a, np.float32)
            if len(got) == per_layer:
                layers[i] = _build_layer(parts.pop(i), cfg)
                if progress:
                    progress(i + 1, cfg.num_hidden_layers)
        missing = [n for n in want if n not in seen]
        if missing:
            raise ValueError(f"missing tensor {missing[0]!r} ({len(missing)} missing in all)")
        return cls(cfg, layers, top["model.embed_tokens.weight"], top["model.norm.weight"],
                   kname, tokenizer)

    # ---- the forward pass ----------------------------------------------------------------------
    # the decoder's thread policy (this class's SMALL_MODEL_BYTES) and tokenizer access
    _numba_threads = BitNetModel._numba_threads
    encode, decode, _need_tokenizer = (BitNetModel.encode, BitNetModel.decode,
                                       BitNetModel._need_tokenizer)

    def _token_ids(self, ids) -> np.ndarray:
        """The decoder's checks (:meth:`BitNetModel._token_ids`), and no more tokens than
        ``max_position_embeddings`` (no cache here says so)."""
        ids = BitNetModel._token_ids(self, ids)
        limit = self.config.max_position_embeddings
        if len(ids) > limit:
            raise ValueError(f"{len(ids)} tokens: the model reads at most {limit} "
                             "(max_position_embeddings)")
        return ids

    def _rope(self, n: int, theta: float):
        """``(cos, sin)`` for RoPE base ``theta`` covering positions ``0 .. n-1`` (grown by
        doubling; a longer table's rows equal a shorter one's)."""
        have = self._tables.get(theta)
        if have is None or n > len(have[0]):
            c = self.config
            size = min(max(n, 2 * (0 if have is None else len(have[0])), 64),
                       c.max_position_embeddings)
            self._tables[theta] = have = rope_tables(size, c.head_dim, theta, c.rope_scaling)
        return have

    def _attention_kind(self, i: int):
        """Layer ``i``'s ``(rope base, window)``: the sliding layers of a Gemma3 block use
        ``rope_local_theta`` and ``sliding_window``; every other layer the full context."""
        c = self.config
        if c.layer_types is not None and c.layer_types[i] == "sliding_attention":
            return c.rope_local_theta or c.rope_theta, c.sliding_window
        return c.rope_theta, None

    def _token_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.size == 0:
            raise ValueError("ids is empty: give at least one token")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64).reshape(-1)
        v, limit = self.config.vocab_size, self.config.max_position_embeddings
        if ids.min() < 0 or ids.max() >= v:
            bad = int(ids[(ids < 0) | (ids >= v)][0])
            raise ValueError(f"token id {bad} out of range [0, {v})")
        if len(ids) > limit:
            raise ValueError(f"{len(ids)} tokens: the model reads at most {limit} "
                             "(max_position_embeddings)")
        return ids

    def hidden_states(self, ids, *, trace=None) -> np.ndarray:
        """The final-normed hidden state of every token of ``ids``: float32 ``[T, hidden]``.
        ``trace``: a list receiving one dict of intermediates per layer (the NumPy path)."""
        ids = self._token_ids(ids)
        x = self.head.embed(ids)
        if self.config.scale_embedding:  # Gemma3: the rows times sqrt(hidden)
            x = x * np.float32(np.sqrt(self.config.hidden_size))
        with self._numba_threads():
            for i, L in enumerate(self.layers):
                x = self._layer(i, L, x, trace, reference=trace is not None or not self.fast)
            return rms_norm(x, self.norm, self.config.rms_norm_eps)

    def _lin(self, L: EmbeddingLayer, name: str, x: np.ndarray, reference: bool) -> np.ndarray:
        """BitLinear with its own input norm: float32 ``[T, in]`` -> ``[T, out]``.  The norm
        and int8 quantization in NumPy (``reference``) or in one fused Numba pass (the
        decoder's ``rmsnorm_quant``, the same maths)."""
        eps = self.config.rms_norm_eps
        if reference:
            xq, xs = quantize_act(rms_norm(x, L.norms[name], eps))
        else:
            xq, xs = fused.rmsnorm_quant(np.ascontiguousarray(x, np.float32), L.norms[name], eps)
        return self.kernel.linear(L.packed[name], xq, xs, L.scales[name])

    def _layer(self, i: int, L: EmbeddingLayer, x, trace, reference: bool):
        c, eps = self.config, self.config.rms_norm_eps
        t, d, h, hkv = len(x), c.head_dim, c.num_attention_heads, c.num_key_value_heads
        theta, window = self._attention_kind(i)
        cos_all, sin_all = self._rope(t, theta)
        scale = None if c.query_pre_attn_scalar is None else c.query_pre_attn_scalar ** -0.5
        a = rms_norm(x, L.input_layernorm, eps)
        q = self._lin(L, "self_attn.q_proj", a, reference).reshape(t, h, d)
        k = self._lin(L, "self_attn.k_proj", a, reference).reshape(t, hkv, d)
        v = self._lin(L, "self_attn.v_proj", a, reference).reshape(t, hkv, d)
        if L.q_norm is not None:  # per head, over head_dim (Qwen3), before RoPE
            q, k = rms_norm(q, L.q_norm, eps), rms_norm(k, L.k_norm, eps)
        cos, sin = cos_all[:t], sin_all[:t]
        if reference or (window is not None and t > window):
            att = _windowed(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, window, scale)
        else:  # the decoder's fused kernel: RoPE + causal GQA in one Numba call (1/sqrt(D))
            if scale is not None and scale != d ** -0.5:
                q = q * np.float32(scale * np.sqrt(d))
            qkv = np.concatenate([q.reshape(t, -1), k.reshape(t, -1), v.reshape(t, -1)], axis=1)
            kc = np.empty((hkv, t, d), np.float32)
            vc = np.empty_like(kc)
            att = fused.attention_block(np.ascontiguousarray(qkv), _ONES3, cos_all, sin_all,
                                        kc, vc, 0, h, hkv, d)
        o = self._lin(L, "self_attn.o_proj", att, reference)
        if c.sandwich_norms:  # Gemma3: the attention output is normed before the residual
            o = rms_norm(o, L.post_attention_layernorm, eps)
        hid = x + o
        b = rms_norm(hid, L.pre_feedforward_layernorm if c.sandwich_norms
                     else L.post_attention_layernorm, eps)
        gate = self._lin(L, "mlp.gate_proj", b, reference)
        up = self._lin(L, "mlp.up_proj", b, reference)
        if reference:  # (a trace runs this path)
            act = EMBEDDING_FFN_ACTIVATIONS[c.hidden_act](gate, up)
            m = self._lin(L, "mlp.down_proj", act, reference)
        else:  # act(gate) * up, down's own norm and int8 in one Numba pass
            act = None
            glue = _FFN_GLUE[c.hidden_act]
            hq, hs = glue(np.concatenate([gate, up], axis=1), np.float32(1), np.float32(1),
                          L.norms["mlp.down_proj"], eps)
            m = self.kernel.linear(L.packed["mlp.down_proj"], hq, hs, L.scales["mlp.down_proj"])
        if c.sandwich_norms:
            m = rms_norm(m, L.post_feedforward_layernorm, eps)
        out = hid + m
        if trace is not None:
            trace.append(dict(input=x, attn_norm=a, q=q, k=k, v=v, attn_out=att, residual=hid,
                              ffn_norm=b, act=act, output=out))
        return out

    # ---- public API ---------------------------------------------------------------------------
    def embed(self, texts, *, pooling: str | None = None, normalize: bool = True,
              truncate: bool = False, progress: bool | None = None) -> np.ndarray:
        """One L2-normalized vector per text: float32 ``[n, hidden]`` (``[hidden]`` for a single
        string).  Each text is encoded, ``embed_eos_id`` appended (<|endoftext|>), run alone,
        and pooled (``pooling``: the model's own, ``self.pooling``, by default).  Queries of
        the published models are prefixed ``"query: "`` (bitnet.cpp's example).  A text longer
        than ``max_position_embeddings`` is a ValueError unless ``truncate``."""
        from .pooling import embed_texts
        return embed_texts(self, texts, pooling=pooling or self.pooling, normalize=normalize,
                           truncate=truncate, progress=progress)

    def generate(self, *args, **kwargs):
        raise ValueError("an embedding model does not generate text (it has no output head): "
                         "use model.embed(texts)")

    def n_params(self) -> int:
        return self.config.n_params

    def memory_report(self) -> dict:
        layers = sum(L.nbytes for L in self.layers)
        return {"layers": layers, "embedding": self.head.nbytes, "norm": self.norm.nbytes,
                "total": layers + self.head.nbytes + self.norm.nbytes}

    def __repr__(self) -> str:
        c = self.config
        return (f"EmbeddingModel({c.num_hidden_layers} layers, hidden {c.hidden_size}, "
                f"heads {c.num_attention_heads}/{c.num_key_value_heads}, vocab {c.vocab_size}, "
                f"pooling {self.pooling!r}, kernel {self.kernel_name!r})")


def _windowed(q, k, v, window, scale, block: int = 512):
    """Causal attention (:func:`.layers.attention`, ``window`` None = the whole prefix) a
    block of queries at a time, each reading only the keys its window can reach: memory
    ``[H, block, block + window]`` instead of ``[H, T, T]`` (a 32k-token text)."""
    t = len(q)
    if t <= block:
        return attention(q, k, v, 0, window=window, scale=scale)
    out = np.empty((t, q.shape[1] * q.shape[2]), np.float32)
    for a in range(0, t, block):
        b = min(a + block, t)
        lo = 0 if window is None else max(0, a - window + 1)
        out[a:b] = attention(q[a:b], k[lo:b], v[lo:b], a - lo, window=window, scale=scale)
    return out


def _build_layer(got: dict, cfg: BitNetConfig) -> EmbeddingLayer:
    off = np.float32(cfg.norm_offset)  # Gemma3's (1 + w); the projections' own norms: plain w

    def scale(p):
        return float(np.asarray(got[p + ".weight_scale"], np.float32).reshape(-1)[0])

    def norm(name):
        w = got.get(name + ".weight")
        return None if w is None else (w + off).astype(np.float32)

    return EmbeddingLayer(
        packed={p: got[p + ".weight"] for p in LINEARS},
        scales={p: scale(p) for p in LINEARS},
        norms={p: got[p + ".norm.weight"] for p in LINEARS},
        input_layernorm=norm("input_layernorm"),
        post_attention_layernorm=norm("post_attention_layernorm"),
        q_norm=norm("self_attn.q_norm") if cfg.qk_norm else None,
        k_norm=norm("self_attn.k_norm") if cfg.qk_norm else None,
        pre_feedforward_layernorm=norm("pre_feedforward_layernorm"),
        post_feedforward_layernorm=norm("post_feedforward_layernorm"))
