"""Lesson 06's design exercise, the response-cache key: two right designs pass, a stub is NOT
IMPLEMENTED, and each classic mistake FAILs with its own message (the wrong-answer catalogue)."""

import json

import pytest

from bitnet_edu import checks
from bitnet_edu.checks import FAIL, NOT_IMPLEMENTED, PASS
from bitnet_edu.deploy import ResponseCache

DEFAULTS = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "seed": None}


def canonical(settings, *, greedy_drops=("top_k", "top_p", "seed"), fill=True, number=float):
    s = {**DEFAULTS, **settings} if fill else dict(settings)
    if s.get("temperature", 0) <= 0:
        for k in greedy_drops:
            s.pop(k, None)
    return tuple(sorted((k, v if v is None else number(v)) for k, v in s.items()))


def right_tuple(prompt, settings):
    return prompt, canonical(settings)


def right_package(prompt, settings):  # the package's own key is a right answer too
    return ResponseCache.key(prompt, settings)


def stub(prompt, settings):
    raise NotImplementedError()


WRONG = [  # (wrong key function, words its FAIL message must contain)
    (lambda p, s: hash((p, canonical(s))), "a hash?"),
    (lambda p, s: [p, canonical(s)], "unhashable"),
    (lambda p, s: None, "forget `return`"),
    (lambda p, s: (p.strip(), canonical(s)), "trailing space"),
    (lambda p, s: (p, canonical({k: v for k, v in s.items() if k != "max_new_tokens"})), "100 tokens"),
    (lambda p, s: (p, canonical({k: v for k, v in s.items() if k != "seed"})), "two seeds"),
    (lambda p, s: (p, canonical(s, greedy_drops=("top_k", "top_p", "seed", "repetition_penalty"))),
     "GREEDY output too"),
    (lambda p, s: (p, str(s)), "insertion order"),
    (lambda p, s: (p, tuple(sorted(s.items()))), "its default"),  # == already unifies 0 and 0.0
    (lambda p, s: (p, canonical(s, fill=False)), "its default"),
    (lambda p, s: (p, canonical(s, greedy_drops=())), "never reads its seed"),
    (lambda p, s: (p, canonical(s, greedy_drops=("seed",))), "never reads top_p"),
    (lambda p, s: (p, json.dumps(s, sort_keys=True)), "0 and 0.0"),
]


@pytest.mark.parametrize("fn", [right_tuple, right_package])
def test_right_designs_pass(fn):
    assert checks.check_cache_key(fn).status == PASS


def test_stub_is_not_implemented():
    assert checks.check_cache_key(stub).status == NOT_IMPLEMENTED


@pytest.mark.parametrize("fn, words", WRONG, ids=[w for _, w in WRONG])
def test_classic_mistakes_fail_with_their_own_message(fn, words):
    res = checks.check_cache_key(fn)
    assert res.status == FAIL and words in res.message, res.message


def test_the_check_copies_the_settings_it_passes():
    def mutating(prompt, settings):
        settings.clear()  # would empty the check's own catalogue if it were not a copy
        return prompt, ()

    checks.check_cache_key(mutating)
    assert checks.check_cache_key(right_tuple).status == PASS
