"""Checks for Lesson 04 (full inference): RoPE, one attention step with a KV cache and GQA,
top-p, and the KV-cache budget ``max_context``.

Each check computes the right answer with the package first (:mod:`bitnet_edu.model.layers`,
:mod:`bitnet_edu.generate`), runs the student's code on copies, and when the result is wrong
compares it with the classic mistakes of that exercise, so a FAIL names the mistake:

* RoPE: interleaved pairs ``(x0, x1), (x2, x3) …`` instead of the engine's halves
  ``(x_i, x_{i+D/2})``; rotating the wrong way (the sign of the sine term);
* attention: ``h % n_kv`` instead of ``h // group``; no ``1/sqrt(head_dim)`` (or ``1/head_dim``);
  softmax over the heads instead of the keys;
* top-p: dropping the token that crosses ``p``, keeping one too many, not renormalising,
  returning the sorted array;
* max_context: full multi-head attention, K or V forgotten, layers forgotten, float32 bytes
  when asked for another size, rounding up;
* cosine search (section 8c): ranking by the raw dot product (forgetting to normalise),
  normalising the columns instead of the rows, finding the query itself, worst first,
  returning the similarities instead of the indices.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..config import BitNetConfig
from ..generate import top_p_filter
from ..model.layers import apply_rope, attention, rope_tables
from ._core import as_array, check, expect_close, student_call

# RMSNorm is graded by Lesson 02's check_rms_norm (same function, same signature).
__all__ = ["check_rope", "check_attention_step", "check_top_p", "check_max_context",
           "check_cosine_search"]


def _close(a, b, rtol=1e-4, atol=1e-5) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))


def _diagnose(got, want, mistakes, what, rtol=1e-4, atol=1e-5):
    """PASS when ``got`` matches ``want``; else the message of the first mistake it matches;
    else the generic "values differ" FAIL of :func:`expect_close`."""
    got_a = as_array(got, what)
    want = np.asarray(want)
    if _close(got_a, want, rtol, atol):
        return
    for value, message in mistakes:
        if _close(got_a, value, rtol, atol):
            raise AssertionError(f"{what}: {message}")
    if got_a.shape != want.shape:
        raise AssertionError(f"{what}: expected shape {want.shape}, got {got_a.shape}")
    expect_close(got_a, want, what, rtol, atol)


# ---- RoPE ------------------------------------------------------------------------------------

def _rope_interleaved(x, cos, sin):
    """The GPT-J / original-paper convention: pairs ``(x[2i], x[2i+1])`` at frequency ``i``."""
    half = x.shape[-1] // 2
    c, s = cos[:, None, :half], sin[:, None, :half]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
    return out


def _rope_interleaved_table(x, cos, sin):
    """Interleaved pairs, but multiplying by the engine's (half-split) tables element-wise."""
    rot = np.empty_like(x)
    rot[..., 0::2], rot[..., 1::2] = -x[..., 1::2], x[..., 0::2]
    return x * cos[:, None, :] + rot * sin[:, None, :]


_ROPE_PAIRS = ("rotated interleaved pairs (x[0], x[1]), (x[2], x[3]), … (the GPT-J / paper "
               "layout). This engine, like Hugging Face's LLaMA and BitNet code, pairs each "
               "dimension of the first half with the dimension D/2 further on — look at how "
               "rope_tables lays out its frequencies")
_ROPE_SIGN = ("the rotation goes the wrong way (by -angle): check the sign of the sine term, "
              "or which half rotate_half negates")
_ROPE_ANGLES = "did not rotate at all (the output equals the input): use the cos/sin tables"


@check
def check_rope(student_fn):
    """``rope(x, cos, sin)``: ``x`` ``[T, H, D]``, ``cos``/``sin`` ``[T, D]`` -> ``[T, H, D]``."""
    rng = np.random.default_rng(1)
    for t, h, d, theta in [(3, 1, 4, 10000.0), (5, 3, 16, 10000.0), (7, 2, 128, 500000.0)]:
        x = rng.standard_normal((t, h, d)).astype(np.float32)
        cos, sin = rope_tables(t, d, theta)
        want = apply_rope(x, cos, sin)
        mistakes = [(_rope_interleaved(x, cos, sin), _ROPE_PAIRS),
                    (_rope_interleaved_table(x, cos, sin), _ROPE_PAIRS),
                    (apply_rope(x, cos, -sin), _ROPE_SIGN),
                    (_rope_interleaved(x, cos, -sin), _ROPE_PAIRS + "; and " + _ROPE_SIGN),
                    (x, _ROPE_ANGLES)]
        _diagnose(student_call(student_fn, x, cos, sin), want, mistakes,
                  f"rope for T={t}, H={h}, D={d}")


# ---- one attention step ----------------------------------------------------------------------

def _step(q, k, v, kv_of, scale, axis=-1):
    """One decode step with query head ``h`` reading kv head ``kv_of(h)``; softmax over
    ``axis`` of the ``[H, S]`` scores (-1: the keys, right; 0: the heads, wrong)."""
    h, d = q.shape
    scores = np.stack([k[:, kv_of(i)] @ q[i] for i in range(h)]) * scale  # [H, S]
    p = np.exp(scores - scores.max(axis=axis, keepdims=True))
    p /= p.sum(axis=axis, keepdims=True)
    return np.concatenate([p[i] @ v[:, kv_of(i)] for i in range(h)]).astype(np.float32)


@check
def check_attention_step(student_fn):
    """``attention_step(q, k, v, group)``: ``q`` ``[H, D]`` for the new token, ``k``/``v``
    ``[S, Hkv, D]`` the whole cache (new token included), ``group = H // Hkv`` -> ``[H * D]``."""
    rng = np.random.default_rng(2)
    for s, h, hkv, d in [(1, 2, 1, 4), (6, 4, 2, 8), (9, 6, 2, 16), (5, 8, 4, 8)]:
        k = rng.standard_normal((s, hkv, d)).astype(np.float32) * 2
        v = rng.standard_normal((s, hkv, d)).astype(np.float32)
        q = rng.standard_normal((1, h, d)).astype(np.float32) * 2
        group = h // hkv
        want = attention(q, k, v, s - 1)[0]
        r = 1 / np.sqrt(d)
        right = lambda i: i // group  # noqa: E731
        mod = lambda i: i % hkv  # noqa: E731
        mistakes = [
            (_step(q[0], k, v, mod, r),
             "query head h read kv head h % n_kv_heads (the `h % n_kv` mistake): that deals the "
             "query heads out to the kv heads in turn, but GQA groups *neighbouring* query heads "
             "— which kv head should heads 0 … group-1 share?"),
            (_step(q[0], k, v, right, 1.0),
             "the scores are not scaled: forgot the 1/sqrt(head_dim) factor on q·k"),
            (_step(q[0], k, v, mod, 1.0),
             "the scores are not scaled (forgot 1/sqrt(head_dim)), and query head h read kv head "
             "h % n_kv_heads (the `h % n_kv` mistake: GQA groups neighbouring query heads)"),
            (_step(q[0], k, v, right, 1 / d),
             "the scores are divided by head_dim; the scale is 1/sqrt(head_dim)"),
            (_step(q[0], k, v, right, r, axis=0),
             "softmax over the wrong axis: your weights sum to 1 over the heads; each head's "
             "weights must sum to 1 over the cached positions (the keys)"),
            (_step(q[0], k, v, lambda i: min(i, hkv - 1), r),
             "query head h read kv head min(h, n_kv_heads - 1): the later heads all piled onto "
             "the last kv head; each kv head serves `group` query heads"),
        ]
        got = student_call(student_fn, q[0], k, v, group)
        _diagnose(got, want, mistakes,
                  f"attention of one new token over a cache of {s} (H={h}, Hkv={hkv}, "
                  f"group={group}, D={d})")


# ---- top-p -----------------------------------------------------------------------------------

def _keep_top(probs, n, renorm=True, sort=False):
    order = np.argsort(-probs, kind="stable")
    out = np.zeros_like(probs)
    out[order[:n]] = probs[order[:n]]
    if renorm and out.sum() > 0:
        out = out / out.sum()
    return -np.sort(-out) if sort else out


_CROSSING = ("drops the token whose probability takes the sum to p or past it (off by one): "
             "the kept set is the smallest one whose total *reaches* p, so that token is in it")
_ONE_MORE = ("keeps one token too many: the kept set is the *smallest* one whose total reaches p "
             "— stop at the first token with which the sum gets there")
_RENORM = ("not renormalised: divide the kept probabilities by their sum, so that they add up to "
           "1 again (a distribution to sample from)")


def _top_p_mistakes(probs, p):
    """``(wrong result, message)`` for the classic top-p mistakes on this case."""
    cum = np.cumsum(np.sort(probs)[::-1])
    n_right = int(np.searchsorted(cum, p) + 1)
    rules = [(n_right, ""), (int(np.sum(cum < p)), _CROSSING), (int(np.sum(cum <= p)), _CROSSING),
             (n_right + 1, _ONE_MORE)]
    out = []
    for n, rule in rules:
        if rule and n == n_right:
            continue  # on this case that rule happens to give the right set
        for renorm in (True, False):
            if not rule and renorm:
                continue  # the right answer
            msg = "; and ".join(m for m in (rule, "" if renorm else _RENORM) if m)
            if n == 0:
                msg = "kept no token at all: the most probable token is always kept; " + msg
            out.append((_keep_top(probs, n, renorm), msg))
    out.append((_keep_top(probs, n_right, True, sort=True),
                "returned the probabilities in sorted order: every token must stay at its own "
                "index (its token id)"))
    return out


@check
def check_top_p(student_fn):
    """``top_p(probs, p)``: ``probs`` ``[V]`` summing to 1 -> ``[V]``, the nucleus renormalised."""
    cases = [(np.array([0.5, 0.3, 0.15, 0.05]), 0.7), (np.array([0.1, 0.6, 0.3]), 0.65),
             (np.array([0.5, 0.3, 0.15, 0.05]), 0.8), (np.array([0.1, 0.6, 0.3]), 0.05),
             (np.array([0.05, 0.2, 0.4, 0.1, 0.25]), 0.9), (np.full(4, 0.25), 1.0)]
    for p, top in cases:
        what, want = f"top_p={top} on {p.tolist()}", top_p_filter(p.copy(), top)
        got = student_call(student_fn, p, top)
        _diagnose(got, want, _top_p_mistakes(p, top), what, rtol=1e-6, atol=1e-9)


# ---- max_context -----------------------------------------------------------------------------

def _kv_tokens(c, n_bytes, bpv, *, heads=None, kv=2, layers=True, ceil=False):
    per = kv * (c.num_hidden_layers if layers else 1) * (heads or c.num_key_value_heads) \
        * c.head_dim * bpv
    return int(-(-n_bytes // per)) if ceil else int(n_bytes // per)


@check
def check_max_context(student_fn):
    """``max_context(config, n_bytes, bytes_per_value=2)``: the most tokens whose K and V, in
    every layer, fit in ``n_bytes`` (a whole number, rounded down; memory only)."""
    cases = [(BitNetConfig.preset("2b4t"), 2**30, 2), (BitNetConfig.preset("2b4t"), 10**9, 4),
             (BitNetConfig(vocab_size=2048, hidden_size=256, intermediate_size=640,
                           num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                           head_dim=32), 3 * 2**20 + 12345, 2),
             (BitNetConfig(vocab_size=64, hidden_size=48, intermediate_size=96,
                           num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
                           head_dim=8), 100_000, 1)]
    for c, n_bytes, bpv in cases:
        want = _kv_tokens(c, n_bytes, bpv)
        what = (f"max_context for {c.num_hidden_layers} layers, {c.num_attention_heads} query / "
                f"{c.num_key_value_heads} kv heads, head_dim {c.head_dim}, {n_bytes} bytes, "
                f"{bpv} bytes per value")
        got = student_call(student_fn, c, n_bytes, bpv)
        if got is None:
            raise AssertionError(f"{what}: your function returned None — did you forget `return`?")
        if isinstance(got, bool) or not isinstance(got, (numbers.Integral, numbers.Real)):
            raise AssertionError(f"{what}: expected a number of tokens, got {type(got).__name__}")
        if got == want and not isinstance(got, numbers.Integral):
            raise AssertionError(f"{what}: return a whole number of tokens (an int), got "
                                 f"{type(got).__name__} {got!r}")
        if got == want:
            continue
        mistakes = [
            (_kv_tokens(c, n_bytes, bpv, heads=c.num_attention_heads),
             "you sized the cache for full multi-head attention: with GQA only the kv heads "
             "are cached, not one K and V per query head"),
            (_kv_tokens(c, n_bytes, bpv, kv=1),
             "you counted only one of K and V: the cache stores both, per layer and per token"),
            (_kv_tokens(c, n_bytes, bpv, layers=False),
             "you counted one layer: every layer has its own K and V cache"),
            (_kv_tokens(c, n_bytes, 4), "you used 4 bytes (float32) per value: use bytes_per_value"),
            (_kv_tokens(c, n_bytes, bpv, ceil=True),
             "you rounded up: that many tokens no longer fit in n_bytes; round down"),
            (n_bytes / (2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * bpv),
             "a fraction of a token cannot be cached: round down to a whole number"),
        ]
        for value, message in mistakes:
            if value != want and got == value:
                raise AssertionError(f"{what}: {message}")
        raise AssertionError(f"{what}: expected {want} tokens, got {got!r}")


# ---- cosine search (section 8c) --------------------------------------------------------------

def _ranked(x, k, *, normalize="rows", self_too=False, ascending=False, drop_first=False):
    """Row ``i``'s ``k`` best rows of ``x`` by dot product after ``normalize`` ("rows", "columns"
    or None), best first; ``self_too``: row ``i`` may find itself; ``drop_first``: rank with
    itself, then drop the first column (right only when row ``i`` ranks itself first)."""
    if normalize == "rows":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    elif normalize == "columns":
        x = x / np.linalg.norm(x, axis=0, keepdims=True)
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    if not (self_too or drop_first):
        np.fill_diagonal(s, np.inf if ascending else -np.inf)  # the row itself sorts last
    order = np.argsort(s if ascending else -s, axis=1, kind="stable")
    return order[:, 1:k + 1] if drop_first else order[:, :k]


_NO_NORM = ("ranked by the raw dot product: without dividing each row by its length, long "
            "vectors win whatever their direction. Cosine similarity is the dot product of "
            "L2-normalised rows (np.linalg.norm(..., axis=1, keepdims=True))")
_COLUMNS = ("normalised each column (axis=0) instead of each row: every vector (a row) must "
            "have length 1, so divide by np.linalg.norm(x, axis=1, keepdims=True)")
_SELF = ("each row found itself (its cosine with itself is 1, the largest there is): a text is "
         "not its own search result, so leave row i out of row i's results")
_WORST = "the rows come worst first: sort by decreasing similarity (best first)"


@check
def check_cosine_search(student_fn):
    """``search(vectors, k)``: ``vectors`` float ``[n, d]`` (rows of any length) -> ints
    ``[n, k]``: for each row, the ``k`` *other* rows most cosine-similar to it, best first."""
    from ..evaluate.retrieval import nearest

    rng = np.random.default_rng(8)
    for n, d, k in [(6, 3, 2), (12, 5, 4), (20, 8, 1), (9, 4, 8)]:
        # directions at random, lengths spread over two orders of magnitude: a raw dot product
        # ranks these differently from the cosine
        x = rng.standard_normal((n, d)) * np.exp(rng.uniform(-2.3, 2.3, (n, 1)))
        x = x.astype(np.float32)
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        want, _ = nearest(unit, unit, k, exclude=np.arange(n))
        what = f"search over {n} vectors of dim {d}, k={k}"
        got = student_call(student_fn, x, k)
        arr = as_array(got, what)
        if arr.shape == want.shape and np.issubdtype(arr.dtype, np.floating) and not \
                np.array_equal(arr, np.round(arr)):
            raise AssertionError(f"{what}: got fractional numbers: return the rows' indices "
                                 "(ints), not their similarities")
        mistakes = [(_ranked(x, k, normalize=None), _NO_NORM),
                    (_ranked(x, k, normalize=None, drop_first=True), _NO_NORM),
                    (_ranked(x, k, normalize="columns"), _COLUMNS),
                    (_ranked(x, k, self_too=True), _SELF),
                    (_ranked(x, k, normalize=None, self_too=True), _NO_NORM + "; and " + _SELF),
                    (_ranked(x, k, ascending=True), _WORST),
                    (_ranked(x, k, ascending=True, self_too=True), _WORST)]
        _diagnose(arr, want, mistakes, what, rtol=0, atol=0)
        if not np.issubdtype(arr.dtype, np.integer):
            raise AssertionError(f"{what}: the right rows, as {arr.dtype}: return integer "
                                 "indices (e.g. from np.argsort)")
