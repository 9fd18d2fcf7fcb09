"""The transformer's small pieces in plain NumPy: the readable reference for every fused kernel.

Shapes: ``T`` tokens, ``H`` query heads, ``Hkv`` key/value heads, ``D`` head_dim.  Everything
is float32 except the int8 activations that feed the ternary matmuls.
"""

from __future__ import annotations

import numpy as np

from ..norm import rms_norm  # the one NumPy RMSNorm, re-exported here for the model code

__all__ = ["rms_norm", "quantize_act", "rope_tables", "llama3_inv_freq", "rotate_half", "apply_rope", "attention",
           "relu2_glu", "silu_glu", "gelu_tanh_glu", "FFN_ACTIVATIONS", "EMBEDDING_FFN_ACTIVATIONS",
           "KVCache"]


def quantize_act(x: np.ndarray):
    """Per-token absmax int8: ``(xq int8 [T, n], scale float32 [T])`` with ``x ≈ xq * scale``."""
    amax = np.maximum(np.max(np.abs(x), axis=-1), np.float32(1e-5)).astype(np.float32)
    inv = (np.float32(127.0) / amax).astype(np.float32)
    with np.errstate(invalid="ignore"):  # a NaN row casts to garbage, but its scale is NaN
        xq = np.clip(np.rint(x * inv[..., None]), -128, 127).astype(np.int8)
    return xq, (amax / np.float32(127.0)).astype(np.float32)


def rope_tables(n_pos: int, head_dim: int, theta: float, scaling: dict | None = None):
    """``(cos, sin)`` float32 ``[n_pos, D]`` with ``emb = cat(freqs, freqs)`` (NeoX rotate-half).

    ``scaling``: None (plain RoPE) or a llama3 rope scaling (``BitNetConfig.rope_scaling``),
    applied to the frequencies as :func:`llama3_inv_freq`."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    if scaling is not None:
        inv_freq = llama3_inv_freq(inv_freq, scaling)
    freqs = np.arange(n_pos, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def llama3_inv_freq(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    """Llama 3.1's rope scaling of the frequencies (transformers' ``_compute_llama3_parameters``):
    wavelengths longer than ``original / low_freq_factor`` are slowed by ``factor``, shorter
    than ``original / high_freq_factor`` kept, those between interpolated smoothly.  float32."""
    inv = np.asarray(inv_freq, np.float32)
    factor = np.float32(scaling["factor"])
    low, high = np.float32(scaling["low_freq_factor"]), np.float32(scaling["high_freq_factor"])
    old = np.float32(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = np.float32(2 * np.pi) / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv).astype(np.float32)
    smooth = ((old / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """``[x1, x2] -> [-x2, x1]`` on the last axis (halves, not interleaved pairs)."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate ``x`` ``[T, H, D]`` by the angles of its positions: ``cos``/``sin`` ``[T, D]``."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int, return_probs=False,
              *, window: int | None = None, scale: float | None = None):
    """Causal grouped-query attention.

    ``q`` ``[T, H, D]`` for positions ``start .. start+T-1``; ``k``, ``v`` ``[S, Hkv, D]`` for
    positions ``0 .. S-1`` (``S = start + T``: the cache plus the new tokens).  Query head ``h``
    reads key/value head ``h // (H // Hkv)``.  Returns ``[T, H*D]`` (and the ``[H, T, S]``
    probabilities when ``return_probs``).  ``window``: a query at position ``p`` reads only keys
    at ``p - window < s <= p`` (Gemma3's sliding window, as transformers' mask); ``scale``: the
    score factor (default ``1 / sqrt(D)``).
    """
    t, h, d = q.shape
    s, hkv, _ = k.shape
    rep = h // hkv
    kk = np.repeat(k, rep, axis=1).transpose(1, 2, 0)  # [H, D, S]
    vv = np.repeat(v, rep, axis=1).transpose(1, 0, 2)  # [H, S, D]
    factor = np.float32(1 / np.sqrt(d) if scale is None else scale)
    scores = (q.transpose(1, 0, 2) @ kk) * factor  # [H, T, S]
    future = np.arange(s)[None, :] > (start + np.arange(t))[:, None]  # causal mask [T, S]
    if window is not None:  # and the keys that fell out of the window
        future |= np.arange(s)[None, :] <= (start + np.arange(t))[:, None] - window
    scores = np.where(future[None], -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = (p @ vv).transpose(1, 0, 2).reshape(t, h * d).astype(np.float32)
    return (out, p.astype(np.float32)) if return_probs else out


def relu2_glu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """BitNet's FFN activation: ``relu(gate)**2 * up`` (squared ReLU, gated)."""
    return np.square(np.maximum(gate, 0)) * up


def silu_glu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """LLaMA's FFN activation: ``silu(gate) * up`` with ``silu(x) = x * sigmoid(x)``.  Not
    BitNet's: here for the lesson 04 case study (a runtime that builds 2B4T's FFN with SiLU
    instead of ReLU², microsoft/BitNet issue #588)."""
    gate = np.asarray(gate, np.float32)
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -88: sigmoid -> 0, exact
        sig = np.float32(1.0) / (np.float32(1.0) + np.exp(-gate))
    return (gate * sig * up).astype(np.float32)


def gelu_tanh_glu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Gemma's FFN activation: ``gelu(gate) * up`` with GELU's tanh approximation
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))`` (transformers' gelu_pytorch_tanh)."""
    g = np.asarray(gate, np.float32)
    c = np.float32(np.sqrt(2 / np.pi))
    # g * g * g, not g ** 3: NumPy's float32 power is ~30x slower (13 ms on 128 x 2048)
    return (np.float32(0.5) * g * (1 + np.tanh(c * (g + np.float32(0.044715) * (g * g * g))))
            * up).astype(np.float32)


#: the FFN activations ``BitNetModel.ffn_activation`` accepts: name -> gated NumPy function
FFN_ACTIVATIONS = {"relu2": relu2_glu, "silu": silu_glu}
#: ... and those an embedding model's block may use too
EMBEDDING_FFN_ACTIVATIONS = {**FFN_ACTIVATIONS, "gelu_tanh": gelu_tanh_glu}


class KVCache:
    """Keys and values of every layer, float32 ``[layers, Hkv, capacity, D]``.

    ``np.zeros`` memory is only committed when written, so a large capacity costs RSS only
    as the context grows.  ``length`` counts the positions already stored.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int):
        for name, v in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads),
                        ("head_dim", head_dim), ("capacity", capacity)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"KVCache {name} must be a whole number >= 1, got {v!r}")
        self.k = np.zeros((n_layers, n_kv_heads, capacity, head_dim), np.float32)
        self.v = np.zeros_like(self.k)
        self.capacity = int(capacity)
        self.length = 0

    @property
    def nbytes_used(self) -> int:
        """Bytes holding real keys/values (what the cache costs at the current context)."""
        return 2 * self.k[:, :, : self.length].size * 4

    def check(self, n_layers: int, n_kv_heads: int, head_dim: int) -> None:
        """ValueError unless this cache fits a model of that shape: ``k`` and ``v`` float32
        C-contiguous ``[n_layers, n_kv_heads, capacity, head_dim]``, ``0 <= length <=
        capacity``.  The fused attention writes into the arrays without bounds checks, so a
        cache made for another model must be refused here (it would write out of bounds)."""
        want = (n_layers, n_kv_heads, self.capacity, head_dim)
        for name in ("k", "v"):
            a = getattr(self, name, None)
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != want \
                    or not a.flags.c_contiguous or not a.flags.writeable:
                got = (f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray)
                       else type(a).__name__)
                raise ValueError(
                    f"this KV cache does not fit the model: cache.{name} is {got}, the model "
                    f"needs float32 C-contiguous {want} [layers, kv heads, capacity, head_dim]; "
                    "make one with model.new_cache(capacity)")
        n = self.length
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) \
                or not 0 <= n <= self.capacity:
            raise ValueError(f"KV cache length {n!r} is not within [0, capacity="
                             f"{self.capacity}]")
