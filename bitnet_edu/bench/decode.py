"""Full 2B4T-shape inference speed: ``python -m bitnet_edu.bench decode [--threads 1,2] [--transformers]``.

Random ternary weights at the real shape (speed does not depend on the values).  Each thread
count runs in a fresh subprocess so its peak RSS and cold start (process start -> model built
and first prefill compiled) are its own.  Reported: prefill tok/s over a 128-token prompt,
decode tok/s over 64 tokens, peak RSS, for the int8 head (the default) and the 4-bit head
(``--head``); with ``--transformers`` also transformers'
BitNetForCausalLM at the same shape (slow, ~5 GB: few tokens) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

TARGETS = {"decode_tok_s": 22.0, "prefill_tok_s": 110.0, "peak_rss_gb": 0.9}

_X86 = "+64bit,+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,+sse4.1,+ssse3,+sse3,+sse2,+sse,+cx16,+movbe,+lzcnt"
#: --isa NAME: Numba compiles for another CPU than this one (its code still runs here), so an
#: AVX2-only laptop's kernels can be measured on an AVX-512 machine
ISA_TARGETS = {
    "native": {},
    "avxvnni": {"NUMBA_CPU_NAME": "alderlake", "NUMBA_CPU_FEATURES": _X86 + ",+avxvnni"},
    "avx2": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": _X86},
    "portable": {"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": "+64bit,+sse2,+sse"},
}


def _isa_env(name: str) -> dict:
    env = dict(ISA_TARGETS[name])
    if env:  # its own compiled-kernel cache, beside the native one
        from bitnet_edu.numba_cache import _user_cache_base
        env["BITNET_EDU_CACHE_DIR"] = str(_user_cache_base() / f"isa-{name}")
    return env


def _busy_loop():  # a competing program: one core's worth of pure-Python work
    while True:
        pass


def _peak_rss_gb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_ours(threads: int, prompt: int, new: int, head: str, layers: int | None, kernel) -> dict:
    """Time one configuration in this process (call in a fresh one for honest RSS)."""
    t0 = time.perf_counter()
    import numba
    numba.set_num_threads(threads)
    from bitnet_edu.model.random import random_model
    over = {"num_hidden_layers": layers} if layers else {}
    m = random_model("2b4t", seed=0, head=head, kernel=kernel, **over)
    built = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = rng.integers(0, m.config.vocab_size, prompt).tolist()
    m.forward(ids[:8], m.new_cache(16), last_only=True)  # compile / load the Numba cache
    cold = time.perf_counter() - t0
    cache = m.new_cache(prompt + new)
    t = time.perf_counter()
    logits = m.forward(ids, cache, last_only=True)
    prefill = time.perf_counter() - t
    tok = int(np.argmax(logits[0]))
    t = time.perf_counter()
    for _ in range(new):
        tok = int(np.argmax(m.forward([tok], cache)[0]))
    decode = time.perf_counter() - t
    from bitnet_edu.kernels.intrinsics import isa
    return {"engine": f"bitnet_edu ({m.kernel_name} {isa()}, head {head})", "threads": threads,
            "prefill_tok_s": prompt / prefill, "decode_tok_s": new / decode,
            "peak_rss_gb": _peak_rss_gb(), "build_s": built, "cold_start_s": cold,
            "weights_gb": m.memory_report()["total"] / 2**30}


def run_transformers(threads: int, new: int, layers: int | None) -> dict:
    """transformers' BitNetForCausalLM (offline autobitlinear, bf16) at the 2B4T shape."""
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import replace_with_bitnet_linear
    from transformers.utils.quantization_config import BitNetQuantConfig

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    cfg = BitNetConfig(tie_word_embeddings=True, max_position_embeddings=4096,
                       num_hidden_layers=layers or 30)
    with torch.device("meta"):
        model = BitNetForCausalLM(cfg)
    qc = BitNetQuantConfig(linear_class="autobitlinear", quantization_mode="offline")
    model = replace_with_bitnet_linear(model, quantization_config=qc)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.copy_(torch.randint(-1, 2, p.shape, generator=g).to(p.dtype))
            else:
                p.normal_(0, 0.02, generator=g) if p.ndim == 2 else p.fill_(1.0)
        for name, b in model.named_buffers():
            if name.endswith("weight_scale"):
                b.fill_(1.0)
    model.tie_weights()
    model.eval()
    built = time.perf_counter() - t0
    ids = torch.randint(0, cfg.vocab_size, (1, 16), generator=g)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(new):
            out = model(tok, past_key_values=cache, use_cache=True)
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        decode = time.perf_counter() - t
    return {"engine": "transformers (bf16, autobitlinear)", "threads": threads,
            "prefill_tok_s": float("nan"), "decode_tok_s": new / decode,
            "peak_rss_gb": _peak_rss_gb(), "build_s": built, "cold_start_s": built}


def head_accuracy(mode: str, rows: int = 16384, hidden: int = 2560, n: int = 64, seed: int = 0) -> dict:
    """Cost of a quantized head: its logits vs the float32 table's (random rows and states)."""
    from bitnet_edu.model.transformer import Head
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((rows, hidden), dtype=np.float32) * np.float32(0.02)
    x = rng.standard_normal((n, hidden), dtype=np.float32)
    exact, approx = Head(table, "float32").logits(x), Head(table, mode).logits(x)
    rel = np.abs(approx - exact).max(axis=1) / np.abs(exact).max(axis=1)
    top5 = np.argsort(-approx, axis=1)[:, :5]
    top1 = exact.argmax(1)
    return {"max_rel_err": float(rel.max()), "top1_agree": float(np.mean(top1 == approx.argmax(1))),
            "top1_in_top5": float(np.mean([e in t for e, t in zip(top1, top5)]))}


def _start_busy():
    import multiprocessing as mp
    p = mp.get_context("spawn").Process(target=_busy_loop, daemon=True)
    p.start()
    return p


def _child(args) -> int:
    fn = run_transformers if args.child == "transformers" else run_ours
    kw = (dict(threads=args.threads_one, new=args.hf_tokens, layers=args.layers)
          if args.child == "transformers" else
          dict(threads=args.threads_one, prompt=args.prompt, new=args.new, head=args.head,
               layers=args.layers, kernel=args.kernel))
    print("RESULT " + json.dumps(fn(**kw)))
    return 0


def _spawn(args, child: str, threads: int, head: str = "int8") -> dict:
    cmd = [sys.executable, "-m", "bitnet_edu.bench", "decode", "--child", child,
           "--threads-one", str(threads), "--prompt", str(args.prompt), "--new", str(args.new),
           "--head", head, "--hf-tokens", str(args.hf_tokens)]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    if args.kernel:
        cmd += ["--kernel", args.kernel]
    # BLAS is not on our path (the ternary kernels and heads are Numba): one OpenBLAS thread,
    # so its idle pool never competes with Numba's workers for the cores.
    env = {**os.environ, "NUMBA_NUM_THREADS": str(max(threads, 1)), "OMP_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": "1" if child == "ours" else str(threads),
           **(_isa_env(args.isa) if child == "ours" else {})}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{child} run failed:\n{out.stderr[-2000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitnet_edu.bench decode", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--head", default="int8,int4",
                    help="comma-separated heads: int8 (default model), int4 (8x smaller), float32 (exact)")
    ap.add_argument("--kernel", default=None)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers (quick look; not the real shape)")
    ap.add_argument("--transformers", action="store_true", help="also time transformers (~5 GB, slow)")
    ap.add_argument("--hf-tokens", type=int, default=4)
    ap.add_argument("--isa", default="native", choices=list(ISA_TARGETS),
                    help="compile our kernels for this instruction set (avx2: an AVX2-only laptop)")
    ap.add_argument("--busy", type=int, default=0,
                    help="also measure with this many competing busy processes running")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads-one", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    rows = []
    heads = args.head.split(",")
    bad = [h for h in heads if h not in ("int8", "int4", "float32")]
    if bad:
        ap.error(f"unknown head {bad[0]!r}: choose from int8, int4, float32")
    situations = [0] + ([args.busy] if args.busy else [])
    for busy in situations:
        procs = [_start_busy() for _ in range(busy)]
        try:
            for t in [int(s) for s in args.threads.split(",")]:
                for head in heads:
                    rows.append({**_spawn(args, "ours", t, head), "busy": busy})
                if args.transformers:
                    rows.append({**_spawn(args, "transformers", t), "busy": busy})
        finally:
            for p in procs:
                p.kill()
                p.join()
    shape = f"2B4T shape{'' if not args.layers else f' with {args.layers} layers'}"
    print(f"\n{shape}, random ternary weights, prompt {args.prompt}, decode {args.new} "
          f"(transformers: {args.hf_tokens} decode tokens); load average now "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other processes slow 2 threads most)")
    print(f"{'engine':46s} {'busy':>4s} {'thr':>3s} {'prefill tok/s':>13s} {'decode tok/s':>12s} "
          f"{'peak RSS GB':>11s} {'cold start s':>12s}")
    for r in rows:
        print(f"{r['engine']:46s} {r['busy']:4d} {r['threads']:3d} {r['prefill_tok_s']:13.1f} "
              f"{r['decode_tok_s']:12.2f} {r['peak_rss_gb']:11.2f} {r['cold_start_s']:12.1f}")
    rows = [r for r in rows if r["busy"] == 0]  # targets: the unloaded machine
    for t in sorted({r["threads"] for r in rows}):
        ours = [r for r in rows if r["threads"] == t and r["engine"].startswith("bitnet_edu")]
        ours = sorted(ours, key=lambda r: -r["decode_tok_s"])
        hf = [r for r in rows if r["threads"] == t and r["engine"].startswith("transformers")]
        if ours and hf:
            print(f"decode speed-up vs transformers at {t} thread(s): "
                  f"{ours[0]['decode_tok_s'] / hf[0]['decode_tok_s']:.1f}x")
    ours = [r for r in rows if r["engine"].startswith("bitnet_edu")]
    for head in dict.fromkeys(r["engine"] for r in ours):  # targets per head: its best thread count
        mine = [r for r in ours if r["engine"] == head]
        best = {k: (min if k == "peak_rss_gb" else max)(r[k] for r in mine) for k in TARGETS}
        print(f"targets, {head}: " + ", ".join(
            f"{k} {best[k]:.2f} ({'met' if (best[k] <= v if k == 'peak_rss_gb' else best[k] >= v) else 'not met'}"
            f", target {v})" for k, v in TARGETS.items()))
    for mode in ("int8", "int4"):
        acc = head_accuracy(mode)
        print(f"{mode} head accuracy cost (16k random rows, 64 random hidden states): max relative logit "
              f"error {acc['max_rel_err']:.2e}, top-1 agreement {acc['top1_agree']:.3f}, float top-1 in "
              f"its top-5 {acc['top1_in_top5']:.3f}")
    return 0
