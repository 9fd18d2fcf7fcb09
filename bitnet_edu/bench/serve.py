"""The server under load: ``python -m bitnet_edu.bench serve [--clients 1,4,8,16]``.

Starts ``bitnet-edu serve``'s app in this process (127.0.0.1, a free port, no rate limit) and,
for each number of concurrent clients C, lets C threads each send ``--requests`` streamed
completions (``POST /v1/completions``, ``"stream": true``, greedy, ``--new`` tokens) one after
another.  Reported per C: p50 and p95 of the request latency and of the time to first token,
the aggregate tokens/s (all completion tokens / wall time) and its ratio to C=1, and the number
of failed requests (must be 0).  ``--shape 2b4t`` serves random ternary weights at the 2B4T
shape (prompts are token ids); the default is the shipped small model with text prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.request

import numpy as np

from .. import cpu_threads
from . import positive_ints


def _one(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, tokens, error = None, 0, None
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    error = ev["error"]["message"]
                    continue
                if first is None and ev["choices"][0].get("text"):
                    first = time.perf_counter() - t0
                if ev.get("usage"):
                    tokens = ev["usage"]["completion_tokens"]
    except Exception as e:  # noqa: BLE001 - counted, not raised: the table shows the errors
        error = str(e)
    return {"latency": time.perf_counter() - t0, "ttft": first, "tokens": tokens, "error": error}


def _pct(v, q):
    return float(np.percentile(v, q)) if v else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitnet_edu.bench serve",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=positive_ints, default=[1, 4, 8, 16],
                    help="comma-separated concurrent clients")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--new", type=int, default=32, help="tokens per reply")
    ap.add_argument("--shape", choices=("default", "2b4t"), default="default",
                    help="default: the shipped small model; 2b4t: random weights at the 2B4T shape")
    ap.add_argument("--layers", type=int, default=None, help="with --shape 2b4t: fewer layers")
    ap.add_argument("--threads", type=int, default=None, help="engine threads (default: automatic)")
    ap.add_argument("--max-batch", type=int, default=16)
    args = ap.parse_args(argv)
    counts = args.clients
    if args.requests < 1 or args.new < 1:
        ap.error("--requests and --new must be >= 1")

    import bitnet_edu
    from ..serve.background import BackgroundServer

    load_before = cpu_threads.loadavg()
    if args.shape == "2b4t":
        over = {"num_hidden_layers": args.layers} if args.layers else {}
        model = bitnet_edu.random_model("2b4t", seed=0, **over)
        rng = np.random.default_rng(0)
        prompts = [[int(i) for i in rng.integers(0, model.config.vocab_size, 64)] for _ in range(8)]
    else:
        model = bitnet_edu.load_model()
        prompts = ["In the beginning", "And God said", "The LORD is my shepherd", "Blessed are",
                   "And it came to pass", "Let there be", "For God so loved", "In my Father's house"]
    model.threads = args.threads
    rows = []
    with BackgroundServer(model, model_name="bench", rate_per_min=0, cache_size=0,
                          max_batch=args.max_batch, max_new_tokens=max(512, args.new)) as srv:
        body = {"model": "bench", "max_tokens": args.new, "temperature": 0, "stream": True}
        _one(srv.url, {**body, "prompt": prompts[0], "max_tokens": 2})  # compile / warm up
        for c in counts:
            results, lock = [], threading.Lock()

            def client(k):
                for j in range(args.requests):
                    r = _one(srv.url, {**body, "prompt": prompts[(k + j) % len(prompts)]})
                    with lock:
                        results.append(r)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(k,)) for k in range(c)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            ok = [r for r in results if r["error"] is None]
            lat, ttft = [r["latency"] for r in ok], [r["ttft"] for r in ok if r["ttft"] is not None]
            rows.append({"clients": c, "p50": _pct(lat, 50), "p95": _pct(lat, 95),
                         "ttft50": _pct(ttft, 50), "ttft95": _pct(ttft, 95),
                         "tok_s": sum(r["tokens"] for r in ok) / wall,
                         "errors": len(results) - len(ok)})
            print(f"  {c:3d} clients: {rows[-1]['tok_s']:7.1f} tok/s, {rows[-1]['errors']} errors",
                  flush=True)
        batches = dict(sorted(srv.scheduler.batch_sizes.items()))
    print(f"\n{model!r}; {args.requests} streamed requests per client, {args.new} tokens each, "
          f"greedy; load average {load_before} before, {cpu_threads.loadavg()} now, "
          f"on {os.cpu_count()} CPUs")
    print(f"{'clients':>7} {'latency p50 s':>14} {'p95 s':>7} {'first token p50 s':>18} {'p95 s':>7} "
          f"{'tokens/s':>9} {'x 1 client':>10} {'errors':>7}")
    base = rows[0]["tok_s"] if rows[0]["clients"] == 1 else None
    for r in rows:
        ratio = f"{r['tok_s'] / base:9.2f}x" if base else "         -"
        print(f"{r['clients']:7d} {r['p50']:14.3f} {r['p95']:7.3f} {r['ttft50']:18.3f} "
              f"{r['ttft95']:7.3f} {r['tok_s']:9.1f} {ratio} {r['errors']:7d}")
    print(f"decode steps by batch size: {batches}")
    warning = cpu_threads.busy_warning(load_before)  # after: our own threads count too
    if warning:
        print(warning)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
