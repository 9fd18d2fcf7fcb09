"""Lesson 08's checks: right answers pass, stubs are NOT IMPLEMENTED, and each classic mistake
FAILs with its own message (the wrong-answer catalogue)."""

import math
from collections import Counter

import numpy as np
import pytest

from bitnet_edu import checks
from bitnet_edu.checks import FAIL, NOT_IMPLEMENTED, PASS
from bitnet_edu.checks import stage8


def _log_softmax(rows):
    rows = np.asarray(rows, np.float64)
    m = rows.max(-1, keepdims=True)
    return rows - (np.log(np.exp(rows - m).sum(-1, keepdims=True)) + m)


def make_ll(*, move_space=True, prefix=True, late=False, raw=False, mean=False, bits=False,
            any_greedy=False, float32=False):
    def loglikelihood(model, context, continuation):
        enc = lambda s: list(model.tokenizer.encode(s, add_special_tokens=False).ids)  # noqa
        if move_space:
            n = len(context) - len(context.rstrip())
            if n:
                context, continuation = context[:-n], context[-n:] + continuation
        whole, ctx = enc(context + continuation), enc(context)
        cont = whole[len(ctx):]
        ctx = ([model.config.bos_token_id] if prefix else []) + ctx
        ids = ctx + cont
        rows = model.logits(ids)[len(ctx):] if late else model.logits(ids[:-1])[len(ctx) - 1:]
        if float32:
            rows = rows.astype(np.float32)
            lp = rows - np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - rows.max(-1, keepdims=True)
            lp = lp[np.arange(len(cont)), cont].astype(np.float32)
        else:
            lp = (np.asarray(rows, np.float64) if raw else _log_softmax(rows))[np.arange(len(cont)), cont]
        total = float(lp.sum())
        total = total / len(cont) if mean else total / math.log(2) if bits else total
        hit = rows.argmax(-1) == np.asarray(cont)
        return total, bool(hit.any() if any_greedy else hit.all())
    return loglikelihood


def acc_norm_right(questions, delimiter=" "):
    return float(np.mean([np.argmax(np.asarray(q["logprobs"]) / [len(c) for c in q["choices"]])
                          == q["gold"] for q in questions]))


def acc_norm_by(length, count=False):
    def acc_norm(questions, delimiter=" "):
        hits = [np.argmax(np.asarray(q["logprobs"]) / [length(q, i, c, delimiter)
                                                       for i, c in enumerate(q["choices"])])
                == q["gold"] for q in questions]
        return float(sum(hits)) if count else float(np.mean(hits))
    return acc_norm


def distractors_right(answer, context, counts, k=3):
    n = counts[answer]
    seen = {w.lower() for w in stage8.words_as_written(context)} | {answer.lower()}
    cands = [w for w, c in counts.items() if n / 2 <= c <= 2 * n and abs(len(w) - len(answer)) <= 1
             and w.lower() not in seen and w.islower() == answer.islower()]
    cands.sort(key=lambda w: (abs(math.log(counts[w] / n)), w))
    return cands[:k]


def distractors_with(bad):
    def fn(answer, context, counts, k=3):
        good = distractors_right(answer, context, counts, k)
        return [bad(answer, context, counts)] + good[1:]
    return fn


def by_rank(answer, context, counts, k=3):  # near in frequency rank only: the builder's rule
    ranked = [w for w, _ in counts.most_common() if w.islower() and w != answer]
    r = [w for w, _ in counts.most_common()].index(answer)
    return [w for w in ranked[max(0, r - 3):r + 40] if w.lower() not in context.lower()][:k]


CORRECT = [("check_loglikelihood", make_ll()), ("check_loglikelihood", make_ll(float32=True)),
           ("check_acc_norm", acc_norm_right), ("check_distractors", distractors_right)]

WRONG = [
    ("check_loglikelihood", make_ll(late=True), "one position late"),
    ("check_loglikelihood", make_ll(raw=True), "raw logits"),
    ("check_loglikelihood", make_ll(move_space=False), "trailing space"),
    ("check_loglikelihood", make_ll(prefix=False), "prefix token is missing"),
    ("check_loglikelihood", make_ll(mean=True), "MEAN"),
    ("check_loglikelihood", make_ll(bits=True), "bits"),
    ("check_loglikelihood", make_ll(any_greedy=True), "some tokens are the argmax"),
    ("check_loglikelihood", lambda m, c, x: make_ll()(m, c, x)[0], "return a pair"),
    ("check_acc_norm", acc_norm_by(lambda q, i, c, d: len(c.encode())), "UTF-8 bytes"),
    ("check_acc_norm", acc_norm_by(lambda q, i, c, d: q["tokens"][i]), "number of tokens"),
    ("check_acc_norm", acc_norm_by(lambda q, i, c, d: len(d + c)), "counted the delimiter"),
    ("check_acc_norm", acc_norm_by(lambda q, i, c, d: 1), "plain acc"),
    ("check_acc_norm", acc_norm_by(lambda q, i, c, d: len(c), count=True), "NUMBER of questions"),
    ("check_distractors", lambda a, c, n, k=3: distractors_right(a, c, n, k)[:2], "needs k="),
    ("check_distractors", distractors_with(lambda a, c, n: a.capitalize()), "the answer itself"),
    ("check_distractors", lambda a, c, n, k=3: [distractors_right(a, c, n, k)[0]] * k, "repeats"),
    ("check_distractors", distractors_with(lambda a, c, n: stage8.words_as_written(c)[-1].lower()),
     "already in the context"),
    ("check_distractors", distractors_with(lambda a, c, n: "judah"), "proper noun lowercased"),
    ("check_distractors", distractors_with(lambda a, c, n: "Judah"), "case"),
    ("check_distractors", distractors_with(lambda a, c, n: "the"), "appears"),
    ("check_distractors", by_rank, "letters"),  # the rank rule ignores length
]


@pytest.mark.parametrize("name, fn", CORRECT, ids=[n for n, _ in CORRECT])
def test_correct_answers_pass(name, fn):
    assert getattr(checks, name)(fn).status == PASS


@pytest.mark.parametrize("name", sorted({n for n, _ in CORRECT}))
def test_stubs_are_not_implemented(name):
    def stub(*a, **k):
        raise NotImplementedError()
    assert getattr(checks, name)(stub).status == NOT_IMPLEMENTED


@pytest.mark.parametrize("name, fn, words", WRONG, ids=[w for _, _, w in WRONG])
def test_classic_mistakes_fail_with_their_own_message(name, fn, words):
    res = getattr(checks, name)(fn)
    assert res.status == FAIL and words in res.message, res.message


def test_long_distractors_fail_on_length():
    counts = Counter({"after": 100, "over": 90, "down": 110, "unto": 120, "nevertheless": 100})
    res = checks.check_distractors(lambda a, c, n, k=3: ["nevertheless", "over", "down", "unto"][:k],
                                   counts=counts | Counter({"suddenly": 100, "prisoner": 100,
                                                            "darkness": 100}))
    assert res.status == FAIL and "letters" in res.message, res.message


def test_a_crash_is_reported_not_raised():
    res = checks.check_acc_norm(lambda qs, d=" ": 1 / 0)
    assert res.status == FAIL and "ZeroDivisionError" in res.message
