"""Checks for Lesson 08 (evaluation): the log-likelihood of a continuation from logits, lm-eval's
``acc_norm``, and the design of cloze distractors.

Each check computes the right answer with :mod:`bitnet_edu.evaluate` first, runs the student's
code on copies, and when the result is wrong compares it with the classic mistakes, so a FAIL
names the mistake:

* log-likelihood: the logit rows one position late (row j predicts token j+1, not j); raw logits
  instead of log-softmax; the context's trailing space left in the context (lm-eval moves it to
  the continuation); no prefix (bos) token; a mean instead of a sum; log base 2; a probability;
  ``is_greedy`` true when *some* token is the argmax instead of every one;
* acc_norm: dividing by tokens, or by UTF-8 bytes, instead of characters; counting the delimiter
  in the length; no normalisation at all (that is ``acc``); a count instead of a fraction;
* distractors: repeats, the answer itself, words from the context, spellings the text never
  writes (a lowercased proper noun), another capitalisation, another frequency or length.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from functools import lru_cache

import numpy as np

from ._core import check, student_call

__all__ = ["check_loglikelihood", "check_acc_norm", "check_distractors"]


@lru_cache(maxsize=1)
def _shipped_model():
    from .. import load_model

    return load_model()


def _ll_from_ids(model, ctx, cont, *, rows="right", logsoftmax=True):
    """log p(cont | ctx) with one of the classic mistakes built in."""
    from ..evaluate import log_softmax_rows

    ids = list(ctx) + list(cont)
    if rows == "late":  # row j+1 used for token j: feeds the whole sequence, drops the first row
        lg = model.logits(ids)[len(ctx):]
    else:
        lg = model.logits(ids[:-1])[len(ctx) - 1:]
    if logsoftmax:
        lp = log_softmax_rows(lg, cont)
    else:
        lp = np.asarray(lg, np.float64)[np.arange(len(cont)), cont]
    greedy_each = np.asarray(lg).argmax(-1) == np.asarray(cont)
    return float(lp.sum()), bool(greedy_each.all()), bool(greedy_each.any())


#: (context, continuation): a trailing space to move, a multi-token answer greedy decoding
#: writes, one it partly writes, one it writes in full after a newline
_LL_CASES = [
    ("And God said, ", "Let there be light: and there was light."),
    ("And it came to pass, when the king heard it,", " that he said unto him,"),
    ("And it came to pass, when the king heard it,", " that he rent his clothes"),
    ("The LORD is my shepherd; I shall not ", "want."),
    ("And the LORD spake unto Moses, saying,", "\nSpeak unto the children of"),
]


def _ll_mistakes(model, context, continuation):
    from ..evaluate import encode_pair

    enc = lambda s: list(model.tokenizer.encode(s, add_special_tokens=False).ids)  # noqa: E731
    ctx, cont = encode_pair(model, context, continuation)
    right, _, _ = _ll_from_ids(model, ctx, cont)
    out = [
        (_ll_from_ids(model, ctx, cont, rows="late")[0],
         "the logit rows are one position late: row j of model.logits(ids) predicts token j+1, "
         "so the continuation's first token is predicted by the context's LAST row "
         "(rows len(context)-1 ... len(ids)-2)"),
        (_ll_from_ids(model, ctx, cont, logsoftmax=False)[0],
         "you summed raw logits: a logit is not a log-probability until you subtract "
         "log(sum(exp(row))) (log-softmax each row first)"),
        (_ll_from_ids(model, ctx[1:], cont)[0] if len(ctx) > 1 else None,
         "the prefix token is missing: the model was trained with <|endoftext|> "
         "(model.config.bos_token_id) before every text, so the context starts with it"),
        (right / len(cont), "that is the MEAN log-probability per token; the log-likelihood "
                            "is the SUM over the continuation's tokens"),
        (right / math.log(2), "that is in bits (log base 2); lm-eval's log-likelihood is in "
                              "nats (natural log)"),
        (math.exp(right), "that is a probability; return its natural log"),
    ]
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        moved = "the context's trailing space stayed in the context; lm-eval moves it to the " \
                "continuation (\"said, \" + \"Let\" is scored as \"said,\" + \" Let\": BPE " \
                "glues a space to the word after it, so \" Let\" is the token the model expects)"
        sep_ctx, sep_cont = [ctx[0]] + enc(context), enc(continuation)
        out.append((_ll_from_ids(model, sep_ctx, sep_cont)[0], moved))
        whole = enc(context + continuation)
        k = len(enc(context))
        if 0 < len(whole) - k:  # whole string split after the context's own tokens
            for head in (whole[:k], enc(context)):
                out.append((_ll_from_ids(model, [ctx[0]] + head, whole[k:])[0], moved))
    return ctx, cont, right, [(v, msg) for v, msg in out if v is not None]


def _number(got, what):
    if isinstance(got, (bool, np.bool_)) or not isinstance(got, (numbers.Real, np.floating)):
        raise AssertionError(f"{what}: expected a float, got {type(got).__name__}")
    v = float(got)
    if not math.isfinite(v):
        raise AssertionError(f"{what}: got {v}; a log-probability is a finite number <= 0")
    return v


@check
def check_loglikelihood(loglikelihood, model=None):
    """``loglikelihood(model, context, continuation) -> (logprob_sum, is_greedy)`` by lm-eval's
    rules, from ``model.logits`` (``model``: the shipped model unless given)."""
    from ..evaluate import loglikelihood as reference

    model = model if model is not None else _shipped_model()
    for context, continuation in _LL_CASES:
        want_lp, want_greedy = reference(model, context, continuation)
        ctx, cont, _, mistakes = _ll_mistakes(model, context, continuation)
        _, _, any_greedy = _ll_from_ids(model, ctx, cont)
        got = student_call(loglikelihood, model, context, continuation, copy_args=False)
        what = f"loglikelihood(model, {context!r}, {continuation!r})"
        if got is None:
            raise AssertionError(f"{what}: your function returned None — did you forget `return`?")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise AssertionError(f"{what}: return a pair (logprob_sum, is_greedy), got "
                                 f"{type(got).__name__}")
        lp = _number(got[0], what + "[0]")
        if not math.isclose(lp, want_lp, rel_tol=1e-4, abs_tol=2e-3):
            for value, message in mistakes:
                if (not math.isclose(value, want_lp, rel_tol=1e-4, abs_tol=2e-3)
                        and math.isclose(lp, value, rel_tol=1e-4, abs_tol=2e-3)):
                    raise AssertionError(f"{what}: {message}")
            raise AssertionError(f"{what}: expected log-probability {want_lp:.4f}, got {lp:.4f}")
        g = got[1]
        if not isinstance(g, (bool, np.bool_)):
            raise AssertionError(f"{what}: is_greedy must be True or False, got {g!r}")
        if bool(g) != want_greedy:
            if want_greedy is False and any_greedy:
                raise AssertionError(f"{what}: is_greedy is {bool(g)}, expected False: some "
                                     f"tokens are the argmax of their row, not all of them "
                                     f"(greedy decoding would have written something else)")
            raise AssertionError(f"{what}: is_greedy is {bool(g)}, expected {want_greedy}: "
                                 f"True exactly when EVERY continuation token is the argmax of "
                                 f"the row that predicts it")


# ---- acc_norm ---------------------------------------------------------------------------------

def _q(choices, logprobs, tokens, gold):
    return {"choices": list(choices), "logprobs": list(logprobs), "tokens": list(tokens),
            "gold": gold}


def _acc_norm_by(questions, length, delimiter=" ", count=False):
    hits = 0
    for q in questions:
        lens = np.asarray([length(q, i, c, delimiter) for i, c in enumerate(q["choices"])], float)
        hits += int(np.argmax(np.asarray(q["logprobs"], float) / lens) == q["gold"])
    return hits if count else hits / len(questions)


_CHARS = lambda q, i, c, d: len(c)  # noqa: E731 - lm-eval's acc_norm
_MISTAKES_NORM = [
    ("bytes", lambda q, i, c, d: len(c.encode("utf-8")),
     "you divided by UTF-8 bytes; that is lm-eval's acc_bytes. acc_norm divides by len(choice) "
     "in CHARACTERS (lm_eval/api/task.py: completion_len = len(i) for each choice); they "
     "differ on non-ASCII text like 'Ζεύς'"),
    ("tokens", lambda q, i, c, d: q["tokens"][i],
     "you divided by the number of tokens; acc_norm divides by len(choice) in characters, "
     "which does not depend on the tokenizer"),
    ("delimiter", lambda q, i, c, d: len(d + c),
     "you counted the delimiter in the length; lm-eval divides by the length of the choice "
     "alone, without the space (or newline) scored before it"),
    ("none", lambda q, i, c, d: 1,
     "no length normalisation: that is plain acc (argmax of the log-probabilities); acc_norm "
     "divides each by its choice's length first"),
]

#: each question separates one mistake from the right answer (the check also runs them alone)
_NORM_QUESTIONS = [
    _q(["Ζεύς", "Zeus!"], [-4.2, -5.0], [2, 2], 1),       # chars vs bytes
    _q(["in", "into"], [-2.1, -4.0], [1, 2], 1),           # the delimiter's extra character
    _q(["Jerusalem", "wept"], [-3.0, -4.0], [1, 4], 0),    # tokens vs characters
    _q(["a", "abundance", "Egypt"], [-3.0, -9.0, -8.0], [1, 3, 2], 1),  # any normalisation
    _q(["naïve", "plain", "so"], [-6.0, -4.5, -3.0], [3, 1, 1], 1),
]


@check
def check_acc_norm(acc_norm):
    """``acc_norm(questions, delimiter=" ") -> float``: lm-eval's acc_norm over ``questions``
    (dicts with ``choices``, ``logprobs``, ``tokens``, ``gold``)."""
    delimiter = " "
    want_all = _acc_norm_by(_NORM_QUESTIONS, _CHARS, delimiter)
    right_sig = tuple(_acc_norm_by([q], _CHARS, delimiter) for q in _NORM_QUESTIONS)
    got_all = student_call(acc_norm, [dict(q) for q in _NORM_QUESTIONS], delimiter)
    what = "acc_norm(questions)"
    got_all = _number(got_all, what)
    count = _acc_norm_by(_NORM_QUESTIONS, _CHARS, delimiter, count=True)
    if math.isclose(got_all, want_all, abs_tol=1e-9):
        # a right total; still every question alone (two mistakes can cancel out)
        pass
    elif math.isclose(got_all, count) and count != want_all:
        raise AssertionError(f"{what}: returned {got_all:g}, the NUMBER of questions right; "
                             f"return the fraction ({count} of {len(_NORM_QUESTIONS)})")
    sig = []
    for q in _NORM_QUESTIONS:
        v = _number(student_call(acc_norm, [dict(q)], delimiter), what)
        sig.append(v)
    sig = tuple(sig)
    if sig == right_sig and math.isclose(got_all, want_all, abs_tol=1e-9):
        newline = _q(["in", "into"], [-2.1, -4.0], [1, 2], 1)
        v = _number(student_call(acc_norm, [newline], "\n"), what)
        if v != 1.0:
            raise AssertionError(f"{what}: with delimiter='\\n' a question went wrong: the "
                                 f"delimiter is not part of the choice's length")
        return
    for _, length, message in _MISTAKES_NORM:
        mistake_sig = tuple(_acc_norm_by([q], length, delimiter) for q in _NORM_QUESTIONS)
        if mistake_sig != right_sig and all(math.isclose(a, b) for a, b in zip(sig, mistake_sig)):
            raise AssertionError(f"{what}: {message}")
    bad = [i for i, (a, b) in enumerate(zip(sig, right_sig)) if not math.isclose(a, b)]
    if bad:
        q = _NORM_QUESTIONS[bad[0]]
        raise AssertionError(f"{what}: wrong on the question with choices {q['choices']} and "
                             f"logprobs {q['logprobs']} (gold {q['gold']}): expected "
                             f"{right_sig[bad[0]]:g}, got {sig[bad[0]]:g}")
    raise AssertionError(f"{what}: expected {want_all:g} over all {len(_NORM_QUESTIONS)} "
                         f"questions, got {got_all:g}")


# ---- distractors --------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z]+")


def words_as_written(text: str) -> list[str]:
    """The words of ``text`` with their case kept (runs of ASCII letters)."""
    return _WORD.findall(text)


@lru_cache(maxsize=1)
def training_counts() -> Counter:
    """How often the training split writes each word, case kept (``Judah`` and ``judah`` are
    two entries)."""
    from ..train.data import split_texts

    return Counter(w for t in split_texts("train") for w in words_as_written(t))


#: (context, answer): cloze items from held-out verses (the shipped task's first ones)
_DISTRACTOR_CASES = [
    ("And it came to pass, that, as I made my journey, and was come nigh unto Damascus about "
     "noon,", "suddenly"),
    ("For this cause I Paul, the", "prisoner"),
    ("Thy princes are rebellious, and companions of thieves: every one loveth gifts, and "
     "followeth", "after"),
    ("And the LORD said unto Moses, Stretch out thine hand toward heaven, that there may be",
     "darkness"),
]
FREQ_FACTOR, LENGTH_SLACK = 2.0, 2


def _shape(w):
    return "lower" if w.islower() else "Title" if w.istitle() else "UPPER" if w.isupper() else "mixed"


@check
def check_distractors(distractors, counts=None):
    """``distractors(answer, context, counts, k=3) -> list of k words``: wrong choices for a
    cloze item that a model cannot reject by spelling, case, frequency or length.  ``counts``:
    a ``Counter`` of the training text's words as written (default :func:`training_counts`)."""
    counts = Counter(counts) if counts is not None else training_counts()
    for context, answer in _DISTRACTOR_CASES:
        for k in (3, 4):
            got = student_call(distractors, answer, context, Counter(counts), k, copy_args=False)
            what = f"distractors({answer!r}, {context[:30]!r}..., counts, k={k})"
            if got is None:
                raise AssertionError(f"{what}: your function returned None — did you forget "
                                     f"`return`?")
            if not isinstance(got, (list, tuple)) or not all(isinstance(w, str) for w in got):
                raise AssertionError(f"{what}: return a list of words (str), got {got!r}")
            got = list(got)
            if len(got) != k:
                raise AssertionError(f"{what}: returned {len(got)} words; a {k + 1}-way question "
                                     f"needs k={k} distractors")
            if len({w.lower() for w in got}) != k:
                raise AssertionError(f"{what}: {got} repeats a word: two equal choices share one "
                                     f"score, the question has fewer real choices")
            for w in got:
                if w.lower() == answer.lower():
                    raise AssertionError(f"{what}: {w!r} is the answer itself: the question then "
                                         f"has two right choices")
            in_ctx = {w.lower() for w in words_as_written(context)}
            for w in got:
                if w.lower() in in_ctx:
                    raise AssertionError(
                        f"{what}: {w!r} is already in the context; a language model copies "
                        f"words it has just seen, so this choice is scored by repetition, "
                        f"not by fit (the offline tasks leave such words out)")
            n = counts.get(answer, 0)
            for w in got:
                c = counts.get(w, 0)
                if c == 0:
                    other = [v for v in (w.capitalize(), w.lower(), w.upper())
                             if v != w and counts.get(v, 0)]
                    hint = (f" (only {other[0]!r}: a proper noun lowercased)" if other else "")
                    raise AssertionError(
                        f"{what}: the training text never writes {w!r}{hint}; a model rejects a "
                        f"spelling it has never seen, so the distractor gives itself away — "
                        f"pick words the text writes exactly so")
                if _shape(w) != _shape(answer):
                    raise AssertionError(
                        f"{what}: {w!r} is {_shape(w)} case and the answer {answer!r} is "
                        f"{_shape(answer)}: the capital letters tell the model which one fits "
                        f"mid-sentence")
                if not n / FREQ_FACTOR <= c <= n * FREQ_FACTOR:
                    raise AssertionError(
                        f"{what}: {w!r} appears {c} times in the training text and the answer "
                        f"{n}: a model that simply prefers {'common' if c < n else 'rare'} words "
                        f"{'wins' if c < n else 'is misled'}; keep each within a factor "
                        f"{FREQ_FACTOR:g} of the answer's count")
                if abs(len(w) - len(answer)) > LENGTH_SLACK:
                    raise AssertionError(
                        f"{what}: {w!r} has {len(w)} letters and the answer {len(answer)}: a "
                        f"longer word has a lower total log-probability (acc prefers short "
                        f"choices) and acc_norm then over-corrects; keep lengths within "
                        f"{LENGTH_SLACK} letters")
