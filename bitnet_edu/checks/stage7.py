"""Checks for Lesson 07 (serving a class): a token-bucket rate limit, reading a streamed reply,
and the design choice of a batch size.

Each check runs the student's code on scripted inputs and names the classic mistake it sees.
"""

from __future__ import annotations

import json

from ..serve.limits import TokenBucket as _Bucket
from ._core import StudentError, check, student_call

__all__ = ["check_token_bucket", "check_sse_text", "check_best_batch"]


def _reference(rate, burst, times):
    b = _Bucket(float(burst), float(rate), float(burst), times[0] if times else 0.0)
    return [b.take(t) == 0.0 for t in times]


#: (rate per second, burst, request times, what a wrong answer at the first disagreement means)
_BUCKET_SCRIPTS = [  # ordered so that each classic mistake first fails its own script
    (1.0, 3, [0.0, 0.0, 0.0, 0.0], "a new client may send `burst` requests at once: start FULL"),
    (1.0, 1, [0.0, 0.0, 1.0],
     "a REFUSED request must not cost a token (the one at t=0 is refused, and by t=1 one whole "
     "token has been refilled)"),
    (0.5, 1, [10.0, 10.0, 11.0, 12.0, 12.5, 14.0],
     "at 0.5 tokens per second the next token comes 2 s after the last one: refill fractions "
     "of a token too"),
    (1.0, 3, [0.0, 0.0, 0.0, 3600.0, 3600.0, 3600.0, 3600.0, 3600.0],
     "tokens are capped at `burst`: a client idle for an hour must not fire 3600 requests at once"),
    (1.0, 3, [0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.2, 2.0],
     "refill is rate x elapsed seconds: after the burst, one request per 1/rate seconds"),
]


@check
def check_token_bucket(TokenBucket):
    """``TokenBucket(rate_per_s, burst)`` with ``allow(now) -> bool``: starts full, refills
    ``rate_per_s`` tokens per second up to ``burst``, a granted request takes one token."""
    for rate, burst, times, why in _BUCKET_SCRIPTS:
        want = _reference(rate, burst, times)
        bucket = student_call(TokenBucket, rate, burst)
        got = [student_call(bucket.allow, t) for t in times]
        for i, (g, w) in enumerate(zip(got, want)):
            if not isinstance(g, bool):
                raise AssertionError(f"allow() returned {g!r}; return True or False")
            if g != w:
                seen = ", ".join(f"allow({t:g})={'T' if x else 'F'}" for t, x in zip(times, got[:i + 1]))
                raise AssertionError(f"TokenBucket(rate_per_s={rate}, burst={burst}): {seen} — "
                                     f"expected {w} at the last one; {why}")


def _events(*pieces, role=True, finish="stop", error=None):
    out = []
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m"}
    if role:
        out += ["data: " + json.dumps({**head, "choices": [{"index": 0, "delta": {"role": "assistant"},
                                                            "finish_reason": None}]}), ""]
    for p in pieces:
        out += ["data: " + json.dumps({**head, "choices": [{"index": 0, "delta": {"content": p},
                                                            "finish_reason": None}]}), ""]
    if error:
        out += ["data: " + json.dumps({"error": {"message": error, "type": "timeout_error"}}), ""]
    else:
        out += ["data: " + json.dumps({**head, "choices": [{"index": 0, "delta": {},
                                                            "finish_reason": finish}]}), ""]
    return out + ["data: [DONE]", ""]


@check
def check_sse_text(sse_text):
    """``sse_text(lines) -> str``: the reply text of a streamed chat completion (lines of the
    server-sent events as text), a ``ValueError`` with the server's message on an error event."""
    cases = [(_events("In", " the", " beginning"), "In the beginning"),
             (_events("data: ", "[DONE]", " ok"), "data: [DONE] ok"),  # text that looks like SSE
             (_events("λόγος", " 🙂"), "λόγος 🙂"),
             (_events(), "")]
    for lines, want in cases:
        try:
            got = student_call(sse_text, list(lines))
        except Exception as e:  # noqa: BLE001
            msg = str(e)
            if "[DONE]" in msg or "Expecting value" in msg:
                raise AssertionError("your code parsed 'data: [DONE]' as JSON: it is the end "
                                     "marker, not an event") from None
            if "content" in msg:
                raise AssertionError("the first event carries only the role (delta "
                                     "{'role': 'assistant'}) and the last an empty delta: use "
                                     "delta.get('content')") from None
            raise
        if not isinstance(got, str):
            raise AssertionError(f"return the text as a str, got {type(got).__name__}")
        if "None" in got and "None" not in want:
            raise AssertionError(f"got {got!r}: events without content added 'None'")
        if got != want:
            raise AssertionError(f"for the pieces of {want!r} you returned {got!r}")
    lines = _events("half an ans", error="the request ran past the server's timeout")
    try:
        got = student_call(sse_text, lines)
    except StudentError as e:  # what the student's code raised, as a message
        if not e.message.startswith("your code raised ValueError") or "timeout" not in e.message:
            raise AssertionError(f"on an error event, raise ValueError(the server's message); "
                                 f"{e.message}") from None
        return
    raise AssertionError(f"an error event was dropped: you returned {got!r} as if the reply "
                         f"were complete; raise ValueError(the server's message)")


#: (seconds per decode step by batch size, latency budget per step, what a wrong pick means)
_BATCH_CASES = [
    ({1: 0.050, 2: 0.055, 4: 0.070, 8: 0.130, 16: 0.330}, 0.200, None),
    ({1: 0.050, 2: 0.055, 4: 0.070, 8: 0.130, 16: 0.330}, 0.400, None),
    ({1: 0.020, 4: 0.030, 8: 0.070, 12: 0.150}, 0.200, None),  # 12 is under budget but slower
    ({1: 0.300, 2: 0.310}, 0.100, None),                      # nothing fits: the smallest batch
]


def _best(step_s, budget):
    fits = [b for b in step_s if step_s[b] <= budget]
    if not fits:
        return min(step_s)
    return max(fits, key=lambda b: (b / step_s[b], -b))


@check
def check_best_batch(best_batch):
    """``best_batch(step_s, budget_s) -> B``: the batch size with the most tokens per second
    (``B / step_s[B]``) among those whose step fits the latency budget; if none fits, the
    smallest."""
    for step_s, budget, _ in _BATCH_CASES:
        want = _best(step_s, budget)
        got = student_call(best_batch, dict(step_s), budget)
        if got == want:
            continue
        what = f"steps {step_s} s, budget {budget} s"
        if got not in step_s:
            raise AssertionError(f"{what}: returned {got!r}, which is not one of the measured "
                                 f"batch sizes {sorted(step_s)}")
        if step_s[got] > budget and any(step_s[b] <= budget for b in step_s):
            raise AssertionError(f"{what}: B={got} takes {step_s[got]} s per step, over the "
                                 f"budget: every student would wait that long for each token")
        if got == min(step_s, key=step_s.get):
            raise AssertionError(f"{what}: B={got} has the fastest STEP but serves only {got} "
                                 f"sequence(s) per step; maximise tokens per second, B / step")
        if got == max(b for b in step_s if step_s[b] <= budget):
            raise AssertionError(f"{what}: B={got} is the largest batch under the budget, but "
                                 f"B={want} gives more tokens per second ({want / step_s[want]:.0f} "
                                 f"vs {got / step_s[got]:.0f}): bigger is not always better")
        raise AssertionError(f"{what}: expected B={want}, got {got}")
