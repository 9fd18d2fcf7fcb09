"""Batched decoding at the 2B4T shape: ``python -m bitnet_edu.bench batch [--batch 1,4,8,16]``.

B sequences, each a ``--prompt``-token prompt (random ids) and ``--new`` new tokens, decoded
together by :class:`bitnet_edu.model.batching.BatchScheduler` (the set-up of llama.cpp's
``llama-batched-bench``: all prompts arrive at once).  Reported per B: the aggregate decode rate
(decode tokens of all sequences / decode seconds), the wall time of the whole batch, and the
ratio to B=1.  The single-stream line runs ``model.generate``'s one-request loop, so a change that
slowed down one student's chat would show there.  Medians of ``--repeats`` runs; random ternary
weights (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from .. import cpu_threads
from . import positive_ints

#: aggregate decode tok/s the serving issue asks for on 2 threads at the 2B4T shape
TARGETS = {8: 150.0, 16: 200.0}


def _one_batch(model, b: int, prompt: int, new: int, seed: int) -> dict:
    from ..model.batching import BatchScheduler

    rng = np.random.default_rng(seed)
    sched = BatchScheduler(model, max_batch=b)
    reqs = [sched.submit(list(rng.integers(0, model.config.vocab_size, prompt)), new, stop=[])
            for _ in range(b)]
    t0 = time.perf_counter()
    sched.run()
    wall = time.perf_counter() - t0
    assert all(len(r.tokens) == new for r in reqs)
    return {"decode_tok_s": sched.decode_tokens / sched.decode_s, "wall_s": wall,
            "prefill_s": sched.prefill_s, "tokens": b * new}


def _single_stream(model, prompt: int, new: int, seed: int) -> float:
    from ..model.generation import generate_ids

    rng = np.random.default_rng(seed)
    ids = list(rng.integers(0, model.config.vocab_size, prompt))
    out = list(generate_ids(model, ids, new, stop=[]))
    assert len(out) == new
    return model.last_stats["decode_tok_s"]


def kernel_ceiling(model, tokens: int = 16, repeats: int = 20, packed=None) -> float:
    """Multiply-adds per second of this engine's ternary GEMM on ``tokens`` tokens, measured in
    this process on one matrix while it sits in the CPU caches (no DRAM traffic): what a
    batched decode step (or an embedding model's prefill) could reach if it were nothing but
    that kernel.  ``packed``: the matrix, by default layer 0's gate/up of a decoder."""
    packed = model.layers[0].gate_up if packed is None else packed
    run = model.kernel.linear_1 if tokens == 1 else model.kernel.linear_fast
    rng = np.random.default_rng(0)
    xq = rng.integers(-127, 128, (tokens, packed.k)).astype(np.int8)
    xs = np.ones(tokens, np.float32)
    with model._numba_threads():
        run(packed, xq, xs, 1.0)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run(packed, xq, xs, 1.0)
            times.append(time.perf_counter() - t)
    return tokens * packed.out * packed.k / statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitnet_edu.bench batch", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=positive_ints, default=[1, 4, 8, 16],
                    help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence")
    ap.add_argument("--new", type=int, default=32, help="new tokens per sequence")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers (a quick look; not the real shape)")
    ap.add_argument("--head", default="int8", choices=("int8", "int4", "float32"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = args.batch
    if args.threads < 1 or args.prompt < 1 or args.new < 2 or args.repeats < 1:
        ap.error("--threads, --prompt and --repeats must be >= 1, --new >= 2")

    import bitnet_edu

    load_before = cpu_threads.loadavg()
    over = {"num_hidden_layers": args.layers} if args.layers else {}
    model = bitnet_edu.random_model("2b4t", seed=0, head=args.head, **over)
    model.threads = args.threads
    print(f"{model!r}, {args.threads} threads; compiling ...", flush=True)
    _one_batch(model, min(2, max(sizes)), 8, 3, seed=99)  # compile every path once
    _single_stream(model, 8, 3, seed=99)

    single = statistics.median(_single_stream(model, args.prompt, args.new, seed=r)
                               for r in range(args.repeats))
    rows = []
    for b in sizes:
        runs = [_one_batch(model, b, args.prompt, args.new, seed=r) for r in range(args.repeats)]
        rows.append({"B": b, **{k: statistics.median(r[k] for r in runs) for k in runs[0]}})
        print(f"  B={b:3d}: {rows[-1]['decode_tok_s']:7.1f} tok/s", flush=True)

    macs = kernel_ceiling(model)
    c = model.config
    per_token = sum(p.out * p.k for L in model.layers for p in (L.qkv, L.o, L.gate_up, L.down)) \
        + c.vocab_size * c.hidden_size  # the ternary linears and the head
    ceiling = macs / per_token
    shape = "2B4T shape" + (f" with {args.layers} layers" if args.layers else "")
    print(f"\n{shape}, random ternary weights, {args.head} head, {args.threads} threads, "
          f"{args.prompt}-token prompts, {args.new} new tokens each, median of {args.repeats}; "
          f"load average {load_before} before, {cpu_threads.loadavg()} now, on {os.cpu_count()} CPUs")
    base = next((r["decode_tok_s"] for r in rows if r["B"] == 1), None)
    print(f"compute ceiling, measured now: the GEMM kernel does {macs / 1e9:.0f} G multiply-adds/s on "
          f"16 cached tokens; a token needs {per_token / 1e9:.2f} G (linears + head), so no batch "
          f"can decode faster than {ceiling:.0f} tok/s on this CPU with this kernel")
    print(f"{'B':>4} {'decode tok/s (all sequences)':>29} {'x B=1':>7} {'of ceiling':>10} "
          f"{'batch wall s':>13} {'target':>8}")
    for r in rows:
        ratio = f"{r['decode_tok_s'] / base:6.2f}x" if base else "      -"
        target = TARGETS.get(r["B"]) if not args.layers and args.threads == 2 else None
        tcol = (f"{'>=':>3}{target:5.0f}" + (" met" if r["decode_tok_s"] >= target else " MISSED")
                if target else "")
        print(f"{r['B']:4d} {r['decode_tok_s']:29.1f} {ratio:>7} {r['decode_tok_s'] / ceiling:10.0%} "
              f"{r['wall_s']:13.2f} {tcol}")
    warning = cpu_threads.busy_warning(load_before)  # after: our own threads count too
    if warning:
        print(warning)
    line = f"single stream (model.generate's loop): {single:.1f} tok/s decode"
    if base:
        line += f"; the scheduler at B=1: {base / single:.2f}x of it"
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
