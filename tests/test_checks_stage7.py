"""Lesson 07's checks: right answers pass, stubs are NOT IMPLEMENTED, and each classic mistake
FAILs with its own message (the wrong-answer catalogue)."""

import json

import pytest

from bitnet_edu import checks
from bitnet_edu.checks import FAIL, NOT_IMPLEMENTED, PASS


def make_bucket(*, start_full=True, cap=True, charge_refusal=False, whole_tokens=False):
    class Bucket:
        def __init__(self, rate_per_s, burst):
            self.rate, self.burst = rate_per_s, burst
            self.tokens, self.last = (float(burst) if start_full else 0.0), None

        def allow(self, now):
            if self.last is not None:
                gained = (now - self.last) * self.rate
                self.tokens += int(gained) if whole_tokens else gained
                if cap:
                    self.tokens = min(self.tokens, self.burst)
            self.last = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            if charge_refusal:
                self.tokens -= 1
            return False
    return Bucket


def sse_right(lines):
    out = []
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if "error" in ev:
            raise ValueError(ev["error"]["message"])
        out.append(ev["choices"][0]["delta"].get("content") or "")
    return "".join(out)


def sse_done_as_json(lines):
    return "".join(json.loads(l[6:])["choices"][0]["delta"].get("content") or ""
                   for l in lines if l.startswith("data: "))


def sse_content_key(lines):
    return "".join(json.loads(l[6:])["choices"][0]["delta"]["content"]
                   for l in lines if l.startswith("data: ") and l != "data: [DONE]")


def sse_str_none(lines):
    return "".join(str(json.loads(l[6:])["choices"][0]["delta"].get("content"))
                   for l in lines if l.startswith("data: ") and l != "data: [DONE]"
                   and "error" not in l)


def sse_drops_errors(lines):
    return "".join(json.loads(l[6:]).get("choices", [{}])[0].get("delta", {}).get("content") or ""
                   for l in lines if l.startswith("data: ") and l != "data: [DONE]")


def best_right(step_s, budget):
    fits = [b for b in step_s if step_s[b] <= budget] or [min(step_s)]
    return max(fits, key=lambda b: (b / step_s[b], -b))


CORRECT = [("check_token_bucket", make_bucket()), ("check_sse_text", sse_right),
           ("check_best_batch", best_right)]

WRONG = [
    ("check_token_bucket", make_bucket(start_full=False), "start FULL"),
    ("check_token_bucket", make_bucket(cap=False), "capped at `burst`"),
    ("check_token_bucket", make_bucket(charge_refusal=True), "REFUSED request must not cost"),
    ("check_token_bucket", make_bucket(whole_tokens=True), "0.5 tokens per second"),
    ("check_sse_text", sse_done_as_json, "parsed 'data: [DONE]' as JSON"),
    ("check_sse_text", sse_content_key, "carries only the role"),
    ("check_sse_text", sse_str_none, "added 'None'"),
    ("check_sse_text", sse_drops_errors, "error event was dropped"),
    ("check_best_batch", lambda s, b: max(s), "over the budget"),
    ("check_best_batch", lambda s, b: min(s, key=s.get), "fastest STEP"),
    ("check_best_batch", lambda s, b: max([x for x in s if s[x] <= b] or [min(s)]),
     "bigger is not always better"),
    ("check_best_batch", lambda s, b: 3, "not one of the measured"),
]


@pytest.mark.parametrize("name, fn", CORRECT, ids=[n for n, _ in CORRECT])
def test_correct_answers_pass(name, fn):
    assert getattr(checks, name)(fn).status == PASS


@pytest.mark.parametrize("name", [n for n, _ in CORRECT])
def test_stubs_are_not_implemented(name):
    def stub(*a, **k):
        raise NotImplementedError()
    assert getattr(checks, name)(stub).status == NOT_IMPLEMENTED


@pytest.mark.parametrize("name, fn, words", WRONG, ids=[w for _, _, w in WRONG])
def test_classic_mistakes_fail_with_their_own_message(name, fn, words):
    res = getattr(checks, name)(fn)
    assert res.status == FAIL and words in res.message, res.message
