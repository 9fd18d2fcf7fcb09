"""Batched decoding: forward_batch is bit-exact per row, the continuous-batching scheduler gives
every request what it gets alone, requests join and leave between steps, and bad input is a
clear error."""

import threading

import numpy as np
import pytest

import bitnet_edu
from bitnet_edu.model.batching import BatchScheduler, generate_batch_ids
from bitnet_edu.model.generation import generate_ids

SMALL = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             max_position_embeddings=256)


@pytest.fixture(scope="module", params=["int8", "int4", "float32"])
def model(request):
    return bitnet_edu.random_model(dict(SMALL), seed=3, head=request.param)


@pytest.fixture(scope="module")
def default_model():
    return bitnet_edu.load_model()


def _prefilled(model, prompts, extra=8):
    caches = []
    for p in prompts:
        c = model.new_cache(len(p) + extra)
        model.forward(p, c)
        caches.append(c)
    return caches


def test_forward_batch_rows_equal_one_sequence_at_a_time(model):
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, SMALL["vocab_size"], n)) for n in (1, 5, 17, 40)]  # ragged
    batch, alone = _prefilled(model, prompts), _prefilled(model, prompts)
    for step in range(3):
        toks = rng.integers(0, SMALL["vocab_size"], len(prompts))
        got = model.forward_batch(toks, batch)
        want = np.concatenate([model.forward([t], c) for t, c in zip(toks, alone)])
        np.testing.assert_array_equal(got, want)  # bit for bit, not approximately
        assert [c.length for c in batch] == [len(p) + step + 1 for p in prompts]
    for cb, ca in zip(batch, alone):
        np.testing.assert_array_equal(cb.k[:, :, :cb.length], ca.k[:, :, :ca.length])


@pytest.mark.parametrize("h,hkv,d", [(4, 2, 64), (20, 5, 128)])  # SMALL, the 2B4T heads
def test_attention_batch_rows_equal_attention_block_alone(h, hkv, d):
    """The batched attention kernel (every sequence in one call, each its own cache) gives
    each sequence the bits attention_block / its serial twin give it alone, and writes the
    same keys and values; ragged lengths past the serial/parallel switch at 1024, caches of
    different capacities."""
    from numba.typed import List

    from bitnet_edu.model import fused
    from bitnet_edu.model.layers import rope_tables
    rng = np.random.default_rng(11)
    starts = np.array([0, 1, 7, 64, 100, 1023, 1030, 2], np.int64)
    layers, layer = 2, 1
    cos, sin = rope_tables(1100, d, 500000.0)
    qkv = rng.standard_normal((len(starts), (h + 2 * hkv) * d)).astype(np.float32)
    scales = np.array([0.7, 1.3, 0.9], np.float32)
    ks = [rng.standard_normal((layers, hkv, p + 1 + j, d)).astype(np.float32)
          for j, p in enumerate(starts)]
    vs = [rng.standard_normal(k.shape).astype(np.float32) for k in ks]
    want, want_k, want_v = [], [], []
    for b, p in enumerate(starts):
        for fn in (fused.attention_block_1, fused.attention_block):
            k, v = ks[b].copy(), vs[b].copy()
            want.append(fn(qkv[b:b + 1], scales, cos, sin, k[layer], v[layer], int(p), h, hkv,
                           d)[0])
        want_k.append(k)
        want_v.append(v)
    for fn in (fused.attention_batch, fused.attention_batch_1):
        k, v = [a.copy() for a in ks], [a.copy() for a in vs]
        got = fn(qkv, scales, cos, sin, List(k), List(v), layer, starts, h, hkv, d)
        for b in range(len(starts)):
            np.testing.assert_array_equal(got[b], want[2 * b])
            np.testing.assert_array_equal(got[b], want[2 * b + 1])
            np.testing.assert_array_equal(k[b], want_k[b])
            np.testing.assert_array_equal(v[b], want_v[b])


def test_forward_batch_reference_path_agrees_with_fast_path(model):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    fast = model.forward_batch([9, 10], _prefilled(model, prompts))
    model.fast = False
    try:
        ref = model.forward_batch([9, 10], _prefilled(model, prompts))
    finally:
        model.fast = True
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-3)


def test_generate_list_is_each_prompt_alone(default_model):
    m = default_model
    prompts = ["In the beginning", "And God said", "The LORD is my shepherd", "Amen"]
    alone = [m.generate(p, 12) for p in prompts]
    assert m.generate(prompts, 12) == alone  # greedy
    assert m.last_stats["requests"] == len(prompts)
    assert max(m.last_stats["batch_sizes"]) == len(prompts)  # all four decoded together
    kw = dict(temperature=0.8, top_p=0.9, repetition_penalty=1.05, seed=7)
    want = [m.generate(p, 12, **{**kw, "seed": 7 + i}) for i, p in enumerate(prompts)]
    assert m.generate(prompts, 12, **kw) == want


def test_requests_join_and_leave_between_steps(model):
    sched = BatchScheduler(model, max_batch=2)
    specs = [([1, 2, 3], 2), ([4, 5], 6), ([6], 1), ([7, 8, 9, 10], 3), ([11], 4)]
    reqs = [sched.submit(ids, n, stop=[]) for ids, n in specs]
    assert sched.pending == 5
    sizes = []
    while sched.step():
        sizes.append(sched.running)
    assert all(r.finish_reason == "length" for r in reqs)
    assert [len(r.tokens) for r in reqs] == [n for _, n in specs]
    for (ids, n), r in zip(specs, reqs):
        assert r.tokens == list(generate_ids(model, ids, n, stop=[]))
    assert max(sched.batch_sizes) == 2 and sched.pending == 0
    assert sched.decode_tokens == sum(n - 1 for _, n in specs)  # the first token is from prefill


def test_stop_tokens_end_one_request_not_the_others(model):
    first = list(generate_ids(model, [1, 2, 3], 5, stop=[]))
    sched = BatchScheduler(model)
    a = sched.submit([1, 2, 3], 5, stop=[first[2]])
    b = sched.submit([1, 2, 3], 5, stop=[])
    sched.run()
    assert a.finish_reason == "stop" and a.tokens == first[:first.index(first[2])]
    assert b.finish_reason == "length" and b.tokens == first


def test_zero_new_tokens_and_cancel(model):
    sched = BatchScheduler(model)
    z = sched.submit([1, 2], 0)
    c = sched.submit([1, 2], 50, stop=[])
    sched.step()
    c.cancel()
    sched.run()
    assert z.tokens == [] and z.finish_reason == "length"
    assert c.finish_reason == "cancelled" and 0 < len(c.tokens) < 50


def test_background_thread_streams_each_request(model):
    sched = BatchScheduler(model, max_batch=4).start()
    try:
        results = {}

        def client(k):
            r = sched.submit([k + 1, k + 2], 6, stop=[])
            results[k] = list(r.events(timeout=60))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for k in range(6):
            assert results[k] == list(generate_ids(model, [k + 1, k + 2], 6, stop=[]))
    finally:
        sched.shutdown()


def test_bad_input_is_a_clear_error(model):
    c = model.new_cache(4)
    with pytest.raises(ValueError, match="same KV cache"):
        model.forward_batch([1, 2], [c, c])
    with pytest.raises(ValueError, match="one token per sequence"):
        model.forward_batch([1, 2], [c])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_batch([SMALL["vocab_size"]], [c])
    full = model.new_cache(1)
    model.forward([1], full)
    with pytest.raises(ValueError, match="context too long"):
        model.forward_batch([1], [full])
    sched = BatchScheduler(model)
    with pytest.raises(ValueError, match="exceeds the context"):
        sched.submit([1] * 250, 10)
    with pytest.raises(ValueError, match="temperature"):
        sched.submit([1], 3, temperature=-1)
    with pytest.raises(ValueError, match="no tokens"):
        sched.submit([], 3)
    with pytest.raises(ValueError, match="max_batch"):
        BatchScheduler(model, max_batch=0)
    assert sched.pending == 0  # nothing half-queued


def test_generate_batch_ids_reports_throughput(model):
    out = generate_batch_ids(model, [[1], [2, 3]], 4, stop=[])
    assert [len(o) for o in out] == [4, 4]
    s = model.last_stats
    assert s["requests"] == 2 and s["new_tokens"] == 8 and s["tokens_per_s"] > 0
