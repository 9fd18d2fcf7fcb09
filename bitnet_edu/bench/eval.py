"""Evaluation speed at the 2B4T shape: ``python -m bitnet_edu.bench eval``.

A multiple-choice question is one context and ``--choices`` continuations.  Measured in one run,
on random ternary weights (speed does not depend on the values), token ids instead of text:

* **prefill**: one forward of the context (the baseline: what a question costs at the least);
* **shared** (:func:`bitnet_edu.evaluate.score_continuations`): the context once, its KV cache
  reused for every choice; the issue's target is <= 1.5x one prefill for 4 choices;
* **plain**: every choice scored from scratch (context + choice, all logit rows), as a scorer
  without a KV cache does.

Then an estimate of how long the published 2B4T benchmarks would take on this CPU with lm-eval
and this engine, from the prefill and decode speeds just measured and the documents and token
counts written in :data:`PUBLISHED_TASKS` (token counts are rough averages: the real ones come
from the data, which needs the network).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from . import positive_ints

TARGET = 1.5  # shared scoring of 4 choices, in prefills of the context

#: lm-eval task -> (documents, requests per document, prompt tokens per request (shared context
#: counted once), generated tokens per document, what that rests on).  Prompt sizes are rough
#: averages for the LLaMA-3 tokenizer; generation lengths are typical, not the maxima.
PUBLISHED_TASKS = {
    "arc_challenge": (1172, 4, 60, 0, "test split, 0-shot; ~45-token question + 4 short answers"),
    "boolq": (3270, 2, 165, 0, "validation split, 0-shot; passage + question, answers yes/no"),
    "winogrande": (1267, 2, 30, 0, "validation split, 0-shot; 2 partial contexts per item"),
    "gsm8k": (1319, 1, 850, 150, "test split, lm-eval's default 5-shot, ~150 tokens of answer"),
    "hendrycks_math500": (500, 1, 700, 350, "MATH-500 test, 4-shot prompt, ~350-token solution"),
    "humaneval_plus": (164, 1, 150, 200, "0-shot, ~200-token function; executes model code"),
}


def _time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def measure(model, context: int, choices: int, cont: int, repeats: int, seed: int = 0) -> dict:
    """Seconds for one question: ``prefill``, ``shared`` and ``plain`` (medians)."""
    from ..evaluate import score_continuations

    rng = np.random.default_rng(seed)
    v = model.config.vocab_size
    ctx = [int(i) for i in rng.integers(0, v, context)]
    conts = [[int(i) for i in rng.integers(0, v, cont)] for _ in range(choices)]

    def prefill():
        model.forward(ctx, model.new_cache(context), last_only=True)

    def shared():
        score_continuations(model, ctx, conts)

    def plain():
        for c in conts:
            model.logits(ctx + c[:-1])

    shared()  # compile every shape once
    plain()
    return {"prefill": _time(prefill, repeats), "shared": _time(shared, repeats),
            "plain": _time(plain, repeats)}


def _decode_tok_s(model, prompt: int = 32, new: int = 16) -> float:
    from ..model.generation import generate_ids

    ids = [int(i) for i in np.random.default_rng(1).integers(0, model.config.vocab_size, prompt)]
    list(generate_ids(model, ids, new, stop=[]))
    return model.last_stats["decode_tok_s"]


def estimate_hours(prefill_tok_s: float, decode_tok_s: float) -> dict:
    """Hours per published task at these speeds: ``{task: (hours, note)}``."""
    out = {}
    for task, (docs, _reqs, prompt, gen, note) in PUBLISHED_TASKS.items():
        seconds = docs * (prompt / prefill_tok_s + gen / decode_tok_s)
        out[task] = (seconds / 3600, note)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bitnet_edu.bench eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=positive_ints, default=[64, 128, 256],
                   help="comma-separated context lengths (tokens)")
    p.add_argument("--choices", type=int, default=4)
    p.add_argument("--cont", type=int, default=8, help="tokens per choice")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=None, help="fewer layers (a quick look)")
    p.add_argument("--head", default="int8", choices=["int8", "int4", "float32"])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    if a.choices < 1 or a.cont < 1 or a.repeats < 1 or a.threads < 1:
        p.error("--choices, --cont, --repeats and --threads must be >= 1")
    from ..model.random import random_model

    over = {"num_hidden_layers": a.layers} if a.layers else {}
    model = random_model("2b4t", head=a.head, **over)
    model.threads = a.threads
    print(f"{model!r}, {a.threads} threads; compiling ...", flush=True)
    load0 = os.getloadavg()[0]
    rows = []
    for c in a.context:
        m = measure(model, c, a.choices, a.cont, a.repeats)
        rows.append((c, m))
        print(f"  context {c:4d}: prefill {m['prefill'] * 1e3:7.1f} ms, shared "
              f"{m['shared'] * 1e3:7.1f} ms, plain {m['plain'] * 1e3:7.1f} ms", flush=True)
    dec = _decode_tok_s(model)
    what = "2B4T shape" if not a.layers else f"2B4T shape cut to {a.layers} layers (not the real one)"
    print(f"\n{what}, random ternary weights, {a.head} head, {a.threads} threads; one question = "
          f"a context + {a.choices} choices of {a.cont} tokens; medians of {a.repeats}; load "
          f"average {load0:.2f} before, {os.getloadavg()[0]:.2f} now, on {os.cpu_count()} CPUs")
    print(f"{'context':>7}  {'prefill ms':>10}  {'shared, x prefill':>17}  {'plain, x prefill':>16}"
          f"  {'questions/s':>11}  target")
    for c, m in rows:
        r = m["shared"] / m["prefill"]
        ok = "met" if r <= TARGET else "MISSED"
        print(f"{c:>7}  {m['prefill'] * 1e3:>10.1f}  {r:>17.2f}  {m['plain'] / m['prefill']:>16.2f}"
              f"  {1 / m['shared']:>11.2f}  <= {TARGET} {ok}")
    c, m = rows[-1]
    pre_tok_s = c / m["prefill"]
    print(f"\nprefill {pre_tok_s:.1f} tok/s at {c} tokens, decode {dec:.1f} tok/s (one stream), "
          "measured now.  lm-eval on this engine would take about:")
    for task, (hours, note) in estimate_hours(pre_tok_s, dec).items():
        print(f"  {task:18s} {hours:6.1f} h   ({note})")
    if a.layers:
        print("(a cut model: these hours are not the real model's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
