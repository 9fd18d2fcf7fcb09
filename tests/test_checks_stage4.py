"""Lesson 04's exercise checks, as a wrong-answer catalogue: the right answer passes, a stub is
NOT IMPLEMENTED, and each classic mistake FAILs with its own message (not a generic "values
differ").  Plus the model's ``ffn_activation`` hook that the lesson's case study uses."""

import numpy as np
import pytest

from bitnet_edu import checks
from bitnet_edu.checks import FAIL, NOT_IMPLEMENTED, PASS


def stub(*args, **kwargs):
    raise NotImplementedError()


# --- RoPE --------------------------------------------------------------------------------------

def rope_right(x, cos, sin):
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def rope_interleaved(x, cos, sin):  # pairs (0, 1), (2, 3), ... at frequency i
    half = x.shape[-1] // 2
    c, s = cos[:, None, :half], sin[:, None, :half]
    out = np.empty_like(x)
    a, b = x[..., 0::2], x[..., 1::2]
    out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
    return out


def rope_interleaved_tables(x, cos, sin):  # interleaved rotate, the half-split tables as given
    rot = np.stack([-x[..., 1::2], x[..., 0::2]], axis=-1).reshape(x.shape)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def rope_wrong_sign(x, cos, sin):
    half = x.shape[-1] // 2
    rot = np.concatenate([x[..., half:], -x[..., :half]], axis=-1)  # [b, -a] instead of [-b, a]
    return x * cos[:, None, :] + rot * sin[:, None, :]


def rope_identity(x, cos, sin):
    return x


# --- one attention step ------------------------------------------------------------------------

def step(q, k, v, group, *, kv_of=None, scale=None, axis=-1):
    h, d = q.shape
    kv_of = kv_of or (lambda i: i // group)
    scale = 1 / np.sqrt(d) if scale is None else scale(d)
    s = np.stack([k[:, kv_of(i)] @ q[i] for i in range(h)]) * scale
    p = np.exp(s - s.max(axis=axis, keepdims=True))
    p /= p.sum(axis=axis, keepdims=True)
    return np.concatenate([p[i] @ v[:, kv_of(i)] for i in range(h)]).astype(np.float32)


def step_right(q, k, v, group):
    return step(q, k, v, group)


def step_mod(q, k, v, group):
    return step(q, k, v, group, kv_of=lambda i: i % k.shape[1])


def step_no_scale(q, k, v, group):
    return step(q, k, v, group, scale=lambda d: 1.0)


def step_over_d(q, k, v, group):
    return step(q, k, v, group, scale=lambda d: 1.0 / d)


def step_heads_axis(q, k, v, group):
    return step(q, k, v, group, axis=0)


def step_mod_no_scale(q, k, v, group):
    return step(q, k, v, group, kv_of=lambda i: i % k.shape[1], scale=lambda d: 1.0)


def step_tile(q, k, v, group):  # np.tile repeats the whole kv block: head h gets kv head h % n_kv
    h, d = q.shape
    kk, vv = np.tile(k, (1, group, 1)), np.tile(v, (1, group, 1))
    s = np.einsum("hd,shd->hs", q, kk) / np.sqrt(d)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hs,shd->hd", p, vv).reshape(-1)


def step_repeat(q, k, v, group):  # np.repeat keeps neighbours together: right
    h, d = q.shape
    kk, vv = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = np.einsum("hd,shd->hs", q, kk) / np.sqrt(d)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hs,shd->hd", p, vv).reshape(-1)


def step_2d_out(q, k, v, group):
    return step(q, k, v, group).reshape(q.shape)


# --- top-p -------------------------------------------------------------------------------------

def top_p_right(probs, p):
    order = np.argsort(-probs, kind="stable")
    n = int(np.searchsorted(np.cumsum(probs[order]), p) + 1)
    out = np.zeros_like(probs)
    out[order[:n]] = probs[order[:n]]
    return out / out.sum()


def top_p_loop(probs, p):  # the same, as a loop: also right
    out, total = np.zeros_like(probs), 0.0
    for i in np.argsort(-probs, kind="stable"):
        out[i] = probs[i]
        total += probs[i]
        if total >= p:
            break
    return out / out.sum()


def top_p_exclusive(probs, p):  # keeps tokens while the running sum stays below p
    order = np.argsort(-probs, kind="stable")
    keep = order[np.cumsum(probs[order]) < p]
    out = np.zeros_like(probs)
    out[keep] = probs[keep]
    return out / out.sum() if out.sum() else out


def top_p_exclusive_le(probs, p):
    order = np.argsort(-probs, kind="stable")
    keep = order[np.cumsum(probs[order]) <= p]
    keep = keep if len(keep) else order[:1]
    out = np.zeros_like(probs)
    out[keep] = probs[keep]
    return out / out.sum()


def top_p_no_renorm(probs, p):
    out = top_p_right(probs, p)
    return np.where(out > 0, probs, 0.0)


def top_p_one_more(probs, p):
    order = np.argsort(-probs, kind="stable")
    n = int(np.searchsorted(np.cumsum(probs[order]), p, side="right") + 1)
    out = np.zeros_like(probs)
    out[order[:n]] = probs[order[:n]]
    return out / out.sum()


def top_p_sorted(probs, p):
    return -np.sort(-top_p_right(probs, p))


# --- max_context -------------------------------------------------------------------------------

def per_token(c, bpv, heads=None, kv=2, layers=True):
    return kv * (c.num_hidden_layers if layers else 1) * (heads or c.num_key_value_heads) \
        * c.head_dim * bpv


def ctx_right(c, n_bytes, bytes_per_value=2):
    return n_bytes // per_token(c, bytes_per_value)


def ctx_mha(c, n_bytes, bytes_per_value=2):
    return n_bytes // per_token(c, bytes_per_value, heads=c.num_attention_heads)


def ctx_only_k(c, n_bytes, bytes_per_value=2):
    return n_bytes // per_token(c, bytes_per_value, kv=1)


def ctx_one_layer(c, n_bytes, bytes_per_value=2):
    return n_bytes // per_token(c, bytes_per_value, layers=False)


def ctx_float32(c, n_bytes, bytes_per_value=2):
    return n_bytes // per_token(c, 4)


def ctx_ceil(c, n_bytes, bytes_per_value=2):
    return -(-n_bytes // per_token(c, bytes_per_value))


def ctx_fraction(c, n_bytes, bytes_per_value=2):
    return n_bytes / per_token(c, bytes_per_value)


def ctx_float_whole(c, n_bytes, bytes_per_value=2):
    return float(n_bytes // per_token(c, bytes_per_value))


# --- cosine search (section 8c) -----------------------------------------------------------------

def _unit(v, axis=1):
    return v / np.linalg.norm(v, axis=axis, keepdims=True)


def search_right(v, k):
    s = _unit(v) @ _unit(v).T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :k]


def search_drop_self(v, k):  # itself first (cosine 1), then drop that column: also right
    return np.argsort(-(_unit(v) @ _unit(v).T), axis=1)[:, 1:k + 1]


def search_in_place(v, k):  # overwrites its input: the copy the check passes makes that harmless
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return search_right(v, k)


def search_list(v, k):
    return search_right(v, k).tolist()


def search_dot(v, k):
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :k]


def search_dot_drop(v, k):
    return np.argsort(-(v @ v.T), axis=1)[:, 1:k + 1]


def search_columns(v, k):
    u = _unit(v, axis=0)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :k]


def search_self(v, k):
    return np.argsort(-(_unit(v) @ _unit(v).T), axis=1)[:, :k]


def search_worst(v, k):
    s = _unit(v) @ _unit(v).T
    np.fill_diagonal(s, np.inf)
    return np.argsort(s, axis=1)[:, :k]


def search_scores(v, k):
    s = _unit(v) @ _unit(v).T
    np.fill_diagonal(s, -np.inf)
    return -np.sort(-s, axis=1)[:, :k]


def search_float_indices(v, k):
    return search_right(v, k).astype(np.float64)


def search_transposed(v, k):
    return search_right(v, k).T


RIGHT = [(checks.check_cosine_search, search_right), (checks.check_cosine_search, search_drop_self),
         (checks.check_cosine_search, search_in_place), (checks.check_cosine_search, search_list),
         (checks.check_rope, rope_right), (checks.check_attention_step, step_right),
         (checks.check_attention_step, step_repeat),
         (checks.check_top_p, top_p_right), (checks.check_top_p, top_p_loop),
         (checks.check_max_context, ctx_right)]

WRONG = [
    (checks.check_rope, rope_interleaved, "interleaved pairs"),
    (checks.check_rope, rope_interleaved_tables, "interleaved pairs"),
    (checks.check_rope, rope_wrong_sign, "wrong way"),
    (checks.check_rope, rope_identity, "did not rotate"),
    (checks.check_attention_step, step_mod, "`h % n_kv` mistake"),
    (checks.check_attention_step, step_tile, "`h % n_kv` mistake"),
    (checks.check_attention_step, step_no_scale, "forgot the 1/sqrt(head_dim)"),
    (checks.check_attention_step, step_mod_no_scale, "forgot 1/sqrt(head_dim)), and query head"),
    (checks.check_attention_step, step_over_d, "divided by head_dim"),
    (checks.check_attention_step, step_heads_axis, "softmax over the wrong axis"),
    (checks.check_attention_step, step_2d_out, "expected shape"),
    (checks.check_top_p, top_p_exclusive, "off by one"),
    (checks.check_top_p, top_p_exclusive_le, "off by one"),
    (checks.check_top_p, top_p_no_renorm, "not renormalised"),
    (checks.check_top_p, top_p_one_more, "one token too many"),
    (checks.check_top_p, top_p_sorted, "sorted order"),
    (checks.check_max_context, ctx_mha, "full multi-head attention"),
    (checks.check_max_context, ctx_only_k, "only one of K and V"),
    (checks.check_max_context, ctx_one_layer, "counted one layer"),
    (checks.check_max_context, ctx_float32, "4 bytes (float32)"),
    (checks.check_max_context, ctx_ceil, "rounded up"),
    (checks.check_max_context, ctx_fraction, "fraction of a token"),
    (checks.check_max_context, ctx_float_whole, "whole number of tokens (an int)"),
    (checks.check_cosine_search, search_dot, "raw dot product"),
    (checks.check_cosine_search, search_dot_drop, "raw dot product"),
    (checks.check_cosine_search, search_columns, "each column (axis=0)"),
    (checks.check_cosine_search, search_self, "each row found itself"),
    (checks.check_cosine_search, search_worst, "worst first"),
    (checks.check_cosine_search, search_scores, "not their similarities"),
    (checks.check_cosine_search, search_float_indices, "return integer indices"),
    (checks.check_cosine_search, search_transposed, "expected shape"),
]


@pytest.mark.parametrize("chk,fn", RIGHT, ids=lambda v: getattr(v, "__name__", ""))
def test_right_answer_passes(chk, fn):
    assert chk(fn).status == PASS


@pytest.mark.parametrize("chk", sorted({c for c, _ in RIGHT}, key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_stub_is_not_implemented(chk):
    assert chk(stub).status == NOT_IMPLEMENTED


@pytest.mark.parametrize("chk,fn,words", WRONG, ids=lambda v: getattr(v, "__name__", ""))
def test_classic_mistake_is_named(chk, fn, words):
    res = chk(fn)
    assert res.status == FAIL
    assert words in res.message, res.message


def test_crash_and_none_are_reported():
    res = checks.check_top_p(lambda p, top: {}["oops"])
    assert res.status == FAIL and "KeyError" in res.message
    res = checks.check_max_context(lambda c, b, bpv=2: None)
    assert res.status == FAIL and "returned None" in res.message


def test_cosine_search_times_out_and_names_none(monkeypatch):
    from bitnet_edu.checks import _core
    monkeypatch.setattr(_core, "TIMEOUT_S", 0.5)

    def forever(v, k):
        while True:
            pass

    res = checks.check_cosine_search(forever)
    assert res.status == FAIL and "still running" in res.message
    res = checks.check_cosine_search(lambda v, k: None)
    assert res.status == FAIL and "returned None" in res.message
    res = checks.check_cosine_search(lambda v, k: {}["oops"])
    assert res.status == FAIL and "KeyError" in res.message


def test_cosine_search_cases_tell_the_mistakes_apart():
    # on the check's own inputs the raw dot product must rank differently from the cosine,
    # else the "forgot to normalise" mistake would pass
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((12, 5)) * np.exp(rng.uniform(-2.3, 2.3, (12, 1)))).astype(np.float32)
    assert not np.array_equal(search_dot(x, 4), search_right(x, 4))


def test_top_p_mistake_messages_differ():
    # the crossing-token and the renormalising messages are distinct and combine
    res = checks.check_top_p(lambda p, top: np.where(top_p_exclusive(p, top) > 0, p, 0.0))
    assert res.status == FAIL and "off by one" in res.message and "not renormalised" in res.message


# --- the ffn_activation hook (lesson 04's "fast but wrong" case study) ---------------------

@pytest.fixture(scope="module")
def small_model():
    from bitnet_edu import random_model
    return random_model("2b4t", seed=0, num_hidden_layers=1, hidden_size=64,
                        intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, vocab_size=64, head="float32")


def test_ffn_activation_hook(small_model):
    from bitnet_edu.model.layers import relu2_glu, silu_glu
    m = small_model
    assert m.ffn_activation == "relu2"
    ids = [1, 5, 9, 3]
    base = m.logits(ids)
    m.ffn_activation = "silu"
    try:
        wrong = m.logits(ids)
    finally:
        m.ffn_activation = "relu2"
    assert not np.allclose(base, wrong)
    np.testing.assert_array_equal(m.logits(ids), base)  # switching back restores the numbers
    with pytest.raises(ValueError, match="ffn_activation"):
        m.ffn_activation = "gelu"
    assert m.ffn_activation == "relu2"
    g = np.array([-100.0, -1.0, 0.0, 2.0], np.float32)
    u = np.ones(4, np.float32)
    np.testing.assert_allclose(silu_glu(g, u), g / (1 + np.exp(-g.astype(np.float64))), rtol=1e-6,
                               atol=1e-30)
    np.testing.assert_array_equal(relu2_glu(g, u), [0, 0, 0, 4])
