"""Numba versions of the per-token glue (norms, activation quant, RoPE, attention).

At 20+ tokens/s the ternary matmuls take ~40 ms per token; the remaining steps are tiny
(a 2560-vector norm, 20 heads of attention) but as separate NumPy calls they would add
several ms over 30 layers, so each group of steps is one Numba call here.
Each function has a plain NumPy reference in :mod:`.layers`; tests compare them.
The ternary matmuls themselves, with their fast paths, belong to the kernels
(``Kernel.linear_fast`` / ``Kernel.linear_1``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..kernels.intrinsics import serial_twin

# Reassociation lets LLVM vectorize float sums; not the full fastmath set, which would also
# assume "no inf/nan" and break the -inf start of the softmax max.
_FAST = {"reassoc", "contract", "arcp"}

__all__ = ["rmsnorm_quant", "relu2_rmsnorm_quant", "attention_block", "attention_batch",
           "quantize_rows_int8", "silu_rmsnorm_quant", "silu_quant", "relu2_quant", "FFN_QUANT"]


@njit(cache=True, fastmath={"nsz", "reassoc"})  # exact: max does not round
def _absmax(y):
    """max(|y|, 1e-5), NaN if any ``y`` is NaN.  Numba's ``max(a, nan)`` is ``a`` (and fastmath
    ``nnan`` would let LLVM assume there is none), which made a NaN hidden state int8 garbage
    with finite logits; a NaN scale instead carries the NaN to every output of the token."""
    amax = np.float32(1e-5)
    for i in range(y.shape[0]):
        a = abs(y[i])
        amax = a if (a > amax or a != a) else amax
    return amax


@njit(cache=True, fastmath={"reassoc"})
def _mean_sq(y):
    """mean(y**2) summed in float64 (vectorized: reassociation moves it by ~1e-16, far below
    the float32 result's rounding)."""
    ss = 0.0
    for i in range(y.shape[0]):
        v = np.float64(y[i])
        ss += v * v
    return np.float32(ss / y.shape[0])


@njit(cache=True, inline="always")
def _quant_row(y, xq_row):
    """Absmax int8 of one float32 row into ``xq_row``; returns the dequant scale amax/127."""
    amax = _absmax(y)
    inv = np.float32(127.0) / amax
    lo, hi = np.float32(-128.0), np.float32(127.0)  # float32 bounds keep the loop in float32
    for i in range(y.shape[0]):
        xq_row[i] = np.int8(min(max(np.rint(y[i] * inv), lo), hi))
    return amax / np.float32(127.0)


@njit(cache=True, inline="always")
def _norm_quant_row(y, w, eps, xq_row):
    """One row of an FFN middle after its activation: RMSNorm with weight ``w`` in place, then
    int8 into ``xq_row``; returns the row's scale."""
    inv = np.float32(1.0) / np.sqrt(_mean_sq(y) + np.float32(eps))
    for i in range(len(y)):
        y[i] = (y[i] * inv) * w[i]
    return _quant_row(y, xq_row)


# No fastmath on these bodies: a float32 sum of squares reassociated (or mul+add contracted)
# rounded differently and flipped an int8 activation at .5 (seen: one greedy token in 16 on a
# tiny checkpoint vs transformers); the float64 sum in ``_mean_sq`` is accurate either way.
@njit(cache=True, parallel=True)
def rmsnorm_quant(x, w, eps):
    """RMSNorm then per-token int8: ``x`` float32 ``[T, n]`` -> ``(xq int8 [T, n],
    scale float32 [T])``."""
    t, n = x.shape
    xq = np.empty((t, n), np.int8)
    scale = np.empty(t, np.float32)
    for r in prange(t):
        y = np.empty(n, np.float32)
        inv = np.float32(1.0) / np.sqrt(_mean_sq(x[r]) + np.float32(eps))
        for i in range(n):
            y[i] = (x[r, i] * inv) * w[i]
        scale[r] = _quant_row(y, xq[r])
    return xq, scale


@njit(cache=True, parallel=True)
def relu2_rmsnorm_quant(gu, s_gate, s_up, w, eps):
    """FFN middle: ``gu`` float32 ``[T, 2F]`` = [gate | up] before their weight scales ->
    ``relu(gate)**2 * up``, ffn_sub_norm, int8: ``(xq int8 [T, F], scale float32 [T])``."""
    t = gu.shape[0]
    f = gu.shape[1] // 2
    xq = np.empty((t, f), np.int8)
    scale = np.empty(t, np.float32)
    for r in prange(t):
        y = np.empty(f, np.float32)
        for i in range(f):
            g = max(gu[r, i] * s_gate, np.float32(0.0))
            y[i] = g * g * (gu[r, f + i] * s_up)
        scale[r] = _norm_quant_row(y, w, eps, xq[r])
    return xq, scale


@njit(cache=True, inline="always")
def _rope_into(src, cos, sin, dst, scale):
    """``dst = rope(src * scale)`` for one head vector (rotate-half)."""
    half = src.shape[0] // 2
    for i in range(half):
        a = src[i] * scale
        b = src[half + i] * scale
        dst[i] = a * cos[i] - b * sin[i]
        dst[half + i] = b * cos[half + i] + a * sin[half + i]


@njit(cache=True, parallel=True, fastmath=_FAST)
def attention_block(qkv, scales, cos, sin, kc, vc, start, n_heads, n_kv, d):
    """Scale q/k/v, RoPE, append k/v to the cache, causal GQA attention.

    ``qkv`` float32 ``[T, (H + 2 Hkv) * D]`` (the fused projection before weight scales),
    ``scales`` float32 ``[3]`` (q, k, v weight scales), ``cos``/``sin`` ``[positions, D]``,
    ``kc``/``vc`` float32 ``[Hkv, capacity, D]`` (this layer's cache, written at
    ``start .. start+T-1``).  Returns ``[T, H * D]``.
    """
    t = qkv.shape[0]
    qn, kn = n_heads * d, n_kv * d
    for r in range(t):  # new keys and values into the cache
        p = start + r
        for h in range(n_kv):
            _rope_into(qkv[r, qn + h * d: qn + (h + 1) * d], cos[p], sin[p], kc[h, p], scales[1])
            src = qkv[r, qn + kn + h * d: qn + kn + (h + 1) * d]
            dst = vc[h, p]
            for i in range(d):
                dst[i] = src[i] * scales[2]
    out = np.empty((t, n_heads * d), np.float32)
    rep = n_heads // n_kv
    inv_sqrt = np.float32(1.0 / np.sqrt(d))
    for h in prange(n_heads):
        kv = h // rep
        q = np.empty(d, np.float32)
        scores = np.empty(start + t, np.float32)
        acc = np.empty(d, np.float32)
        for r in range(t):
            p = start + r
            _rope_into(qkv[r, h * d:(h + 1) * d], cos[p], sin[p], q, scales[0])
            m = np.float32(-np.inf)
            for s in range(p + 1):
                ks = kc[kv, s]
                dot = np.float32(0.0)
                for i in range(d):
                    dot += q[i] * ks[i]
                dot *= inv_sqrt
                scores[s] = dot
                m = max(m, dot)
            total = np.float32(0.0)
            for i in range(d):
                acc[i] = 0.0
            for s in range(p + 1):
                e = np.exp(scores[s] - m)
                total += e
                vs = vc[kv, s]
                for i in range(d):
                    acc[i] += e * vs[i]
            o = out[r, h * d:(h + 1) * d]
            for i in range(d):
                o[i] = acc[i] / total
    return out


@njit(cache=True, parallel=True, fastmath=_FAST)
def attention_batch(qkv, scales, cos, sin, kcs, vcs, layer, starts, n_heads, n_kv, d):
    """:func:`attention_block` for B sequences of one new token each, in one call.

    ``qkv`` float32 ``[B, (H + 2 Hkv) * D]``; ``kcs``/``vcs``: ``numba.typed.List`` of the B
    caches' float32 ``[layers, Hkv, capacity_b, D]`` arrays (capacities may differ), written at
    ``[layer, :, starts[b]]``; ``starts`` int64 ``[B]`` (ragged).  Returns ``[B, H * D]``, row
    ``b`` the same bits as ``attention_block(qkv[b:b+1], ...)`` on sequence ``b`` alone: the
    loops over one (sequence, head) are that function's, written out the same way.  prange over
    the (sequence, head) pairs.
    """
    nb = qkv.shape[0]
    qn, kn = n_heads * d, n_kv * d
    for j in prange(nb):  # the new key and value into each sequence's cache
        b = np.int64(j)  # prange's index may be unsigned; typed List indexes are int64
        p = starts[b]
        kc, vc = kcs[b], vcs[b]
        for h in range(n_kv):
            _rope_into(qkv[b, qn + h * d: qn + (h + 1) * d], cos[p], sin[p], kc[layer, h, p],
                       scales[1])
            src = qkv[b, qn + kn + h * d: qn + kn + (h + 1) * d]
            dst = vc[layer, h, p]
            for i in range(d):
                dst[i] = src[i] * scales[2]
    out = np.empty((nb, n_heads * d), np.float32)
    rep = n_heads // n_kv
    inv_sqrt = np.float32(1.0 / np.sqrt(d))
    for w in prange(n_heads * nb):
        # (kv head, sequence, query head of the group): the group's heads read the same
        # keys and values one after another (from L2), and a thread's contiguous share of
        # the pairs holds every sequence of a kv head (a long context is not all on one thread)
        kv, rest = np.int64(w) // (nb * rep), np.int64(w) % (nb * rep)
        b, h = rest // rep, kv * rep + rest % rep
        p = starts[b]
        kc, vc = kcs[b], vcs[b]
        q = np.empty(d, np.float32)
        scores = np.empty(p + 1, np.float32)
        acc = np.empty(d, np.float32)
        _rope_into(qkv[b, h * d:(h + 1) * d], cos[p], sin[p], q, scales[0])
        m = np.float32(-np.inf)
        for s in range(p + 1):
            ks = kc[layer, kv, s]
            dot = np.float32(0.0)
            for i in range(d):
                dot += q[i] * ks[i]
            dot *= inv_sqrt
            scores[s] = dot
            m = max(m, dot)
        total = np.float32(0.0)
        for i in range(d):
            acc[i] = 0.0
        for s in range(p + 1):
            e = np.exp(scores[s] - m)
            total += e
            vs = vc[layer, kv, s]
            for i in range(d):
                acc[i] += e * vs[i]
        o = out[b, h * d:(h + 1) * d]
        for i in range(d):
            o[i] = acc[i] / total
    return out


@njit(cache=True, parallel=True)
def quantize_rows_int8(w):
    """Per-row absmax int8 of a float32 matrix ``[V, n]`` -> ``(int8 [V, n],
    scale float32 [V])``."""
    v, n = w.shape
    q = np.empty((v, n), np.int8)
    s = np.empty(v, np.float32)
    for r in prange(v):
        s[r] = _quant_row(w[r], q[r])
    return q, s


# One token (decode) is ~1-20 us of work per call: a parallel region (waking a thread, a
# barrier) costs more than it saves there, and under load from other processes can cost
# milliseconds.  The same functions compiled without threads (prange runs as range).
rmsnorm_quant_1 = serial_twin(rmsnorm_quant)
relu2_rmsnorm_quant_1 = serial_twin(relu2_rmsnorm_quant)
attention_block_1 = serial_twin(attention_block, fastmath=_FAST)
attention_batch_1 = serial_twin(attention_batch, fastmath=_FAST)


# --- the config-driven block's other FFN middles (SwiGLU; no ffn_sub_norm) ------------------
# References: ``layers.silu_glu`` / ``layers.relu2_glu``, then ``rms_norm`` (when the block has
# ffn_sub_norm) and ``quantize_act``.  silu(g) = g * (1 / (1 + exp(-g))), in that order, as
# the reference: exp is the one step that may differ by an ulp from NumPy's.

@njit(cache=True, inline="always")
def _silu(g):
    return g * (np.float32(1.0) / (np.float32(1.0) + np.exp(-g)))


@njit(cache=True, parallel=True)
def silu_rmsnorm_quant(gu, s_gate, s_up, w, eps):
    """:func:`relu2_rmsnorm_quant` with SwiGLU: ``silu(gate) * up``, ffn_sub_norm, int8 (the
    1bitLLM block; also 2B4T with lesson 04's deliberately wrong activation)."""
    t = gu.shape[0]
    f = gu.shape[1] // 2
    xq = np.empty((t, f), np.int8)
    scale = np.empty(t, np.float32)
    for r in prange(t):
        y = np.empty(f, np.float32)
        for i in range(f):
            y[i] = _silu(gu[r, i] * s_gate) * (gu[r, f + i] * s_up)
        scale[r] = _norm_quant_row(y, w, eps, xq[r])
    return xq, scale


@njit(cache=True, inline="always")
def _gelu_tanh(g):
    c = np.float32(0.7978845608028654)  # sqrt(2 / pi)
    inner = c * (g + np.float32(0.044715) * g * g * g)
    return np.float32(0.5) * g * (np.float32(1.0) + np.tanh(inner))


@njit(cache=True, parallel=True)
def gelu_tanh_rmsnorm_quant(gu, s_gate, s_up, w, eps):
    """:func:`silu_rmsnorm_quant` with Gemma's ``gelu_tanh(gate) * up`` (BitNet-embedding-270M:
    the down projection's own input norm ``w``), int8: ``(xq [T, F], scale [T])``.  Reference:
    ``quantize_act(rms_norm(layers.gelu_tanh_glu(gate, up), w, eps))``."""
    t = gu.shape[0]
    f = gu.shape[1] // 2
    xq = np.empty((t, f), np.int8)
    scale = np.empty(t, np.float32)
    for r in prange(t):
        y = np.empty(f, np.float32)
        for i in range(f):
            y[i] = _gelu_tanh(gu[r, i] * s_gate) * (gu[r, f + i] * s_up)
        scale[r] = _norm_quant_row(y, w, eps, xq[r])
    return xq, scale


@njit(cache=True, parallel=True)
def silu_quant(gu, s_gate, s_up):
    """FFN middle of a block without ffn_sub_norm (Falcon3, Llama3-1.58): ``silu(gate) * up``
    straight to per-token int8: ``(xq int8 [T, F], scale float32 [T])``."""
    t = gu.shape[0]
    f = gu.shape[1] // 2
    xq = np.empty((t, f), np.int8)
    scale = np.empty(t, np.float32)
    for r in prange(t):
        y = np.empty(f, np.float32)
        for i in range(f):
            y[i] = _silu(gu[r, i] * s_gate) * (gu[r, f + i] * s_up)
        scale[r] = _quant_row(y, xq[r])
    return xq, scale


@njit(cache=True, parallel=True)
def relu2_quant(gu, s_gate, s_up):
    """:func:`silu_quant` with squared ReLU: ``relu(gate)**2 * up`` to int8, no sub-norm."""
    t = gu.shape[0]
    f = gu.shape[1] // 2
    xq = np.empty((t, f), np.int8)
    scale = np.empty(t, np.float32)
    for r in prange(t):
        y = np.empty(f, np.float32)
        for i in range(f):
            g = max(gu[r, i] * s_gate, np.float32(0.0))
            y[i] = g * g * (gu[r, f + i] * s_up)
        scale[r] = _quant_row(y, xq[r])
    return xq, scale


silu_rmsnorm_quant_1 = serial_twin(silu_rmsnorm_quant)
silu_quant_1 = serial_twin(silu_quant)
relu2_quant_1 = serial_twin(relu2_quant)
quantize_rows_int8_1 = serial_twin(quantize_rows_int8)  # the attention output without a sub-norm

#: the FFN middle by (activation, block has ffn_sub_norm, one token): with a sub-norm it takes
#: ``(gu, s_gate, s_up, w, eps)``, without ``(gu, s_gate, s_up)``
FFN_QUANT = {
    ("relu2", True, False): relu2_rmsnorm_quant, ("relu2", True, True): relu2_rmsnorm_quant_1,
    ("silu", True, False): silu_rmsnorm_quant, ("silu", True, True): silu_rmsnorm_quant_1,
    ("relu2", False, False): relu2_quant, ("relu2", False, True): relu2_quant_1,
    ("silu", False, False): silu_quant, ("silu", False, True): silu_quant_1,
}
