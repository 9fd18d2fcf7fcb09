"""Several continuations of one cached sequence in one forward pass.

Scoring a multiple-choice question asks for the logits of each choice after the same context.
With the context's keys and values in a KV cache, each choice is a short continuation; run one
by one, every choice streams all the ternary weights again for a handful of tokens.
:func:`forward_segments` puts the tokens of all choices through each weight matrix in one GEMM
call instead, while attention keeps them apart: segment ``s`` sees the cached positions and its
own earlier tokens, never another segment's.

How the cache makes that cheap: every segment starts at the same position ``L`` (just after
the cached tokens).  Per layer, segment 1 writes its keys and values to slots ``L ...`` and
attends; segment 2 then writes its own over the same slots and attends; and so on.  Each layer
has its own cache arrays, so a segment never reads another's keys.  ``cache.length`` stays
``L``: after the call the slots past ``L`` hold the last segment's keys, which the next write
replaces.

Each segment's logits are those of ``model.forward(segment, cache)`` run alone with
``cache.length == L``: activations are quantized per token, the ternary sums are exact
integers and every rescale is per row, so more rows in a GEMM change no row (the float32 head
may round differently, as BLAS sums in another order for another number of rows).
"""

from __future__ import annotations

import numpy as np

from . import fused
from .layers import rms_norm

__all__ = ["forward_segments"]


def forward_segments(model, segments, cache) -> list:
    """Logits of each token segment as a continuation of the sequence cached in ``cache``.

    ``segments``: a list of token-id sequences (each non-empty); ``cache``: a
    :class:`~bitnet_edu.model.layers.KVCache` of ``model`` with ``L = cache.length`` tokens
    and room for ``L + max(len(segment))``.  Returns float32 ``[len(segment), vocab]`` per
    segment, row ``j`` predicting the token after ``segment[j]``; ``cache.length`` is unchanged.
    """
    segs = [model._token_ids(s) for s in segments]
    if not segs:
        raise ValueError("forward_segments needs at least one segment")
    start = model._cache_start(cache, max(len(s) for s in segs))
    if not model.fast:  # the reference path, one by one
        out = []
        for s in segs:
            cache.length = start
            out.append(model.forward(s, cache))
        cache.length = start
        return out
    c = model.config
    bounds = np.cumsum([0] + [len(s) for s in segs])
    model._rope(start + int(max(len(s) for s in segs)))
    x = model.head.embed(np.concatenate(segs))
    with model._numba_threads():
        for i, L in enumerate(model.layers):
            def attend(qkv, scales, i=i):
                out = np.empty((len(qkv), c.num_attention_heads * c.head_dim), np.float32)
                for a, b in zip(bounds[:-1], bounds[1:]):
                    # the kernel forward() would pick for this segment alone
                    attn = fused.attention_block_1 if b - a == 1 and start < 1024 \
                        else fused.attention_block
                    out[a:b] = attn(np.ascontiguousarray(qkv[a:b]), scales, model._cos,
                                    model._sin, cache.k[i], cache.v[i], start,
                                    c.num_attention_heads, c.num_key_value_heads, c.head_dim)
                return out
            x = model._layer_glue(L, x, attend, model._lora(i))
        xn = rms_norm(x, model.norm, c.rms_norm_eps)
        logits = model.lm_head.logits(xn)
    bad = ~np.isfinite(xn).all(axis=1)
    if bad.any():
        logits[bad] = np.nan
    return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
