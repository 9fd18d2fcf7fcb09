"""The main demo (``make demo``): one pass through every lesson, measured on this machine.

    python -m bitnet_edu.demo [--prompt TEXT] [--max-new-tokens N] [--no-2b]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np


#: how the demo samples: temperature 0.7, top-p 0.9, repetition penalty 1.05
SAMPLING = dict(temperature=0.7, top_p=0.9, repetition_penalty=1.05)


def _rule(title: str):
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _shape(proj: str) -> tuple[int, int]:
    """(out, in) of one 2B4T projection, from the presets table."""
    from .config import BitNetConfig
    return BitNetConfig.preset("2b4t").linear_shapes()[proj]


def stage1(rng):
    from .quant import error_report

    shape = _shape("q_proj")
    _rule(f"Lesson 01: absmean ternary quantization of one {shape[0]}x{shape[1]} layer (2B4T q_proj)")
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    r = error_report(w)
    print(f"scale = mean|W| = {r['scale']:.5f}")
    print(f"levels: -1 {r['minus_one_fraction']:.1%}   0 {r['zero_fraction']:.1%}   +1 {r['plus_one_fraction']:.1%}")
    print(f"error: SQNR {r['sqnr_db']:.2f} dB, relative {r['relative_error']:.1%}")
    n = w.size
    for name, b in [("float32", 4), ("bf16", 2), ("int8", 1), ("ternary 2-bit", 0.25), ("base-3 (5/byte)", 0.2)]:
        print(f"  {name:16s} {n * b / 2**20:7.2f} MiB")
    return w


def stage2(w, rng):
    from .bitlinear import BitLinearInference

    _rule("Lesson 02: BitLinear inference form (int8 x ternary -> int32 -> one rescale)")
    layer = BitLinearInference.from_float(w)
    x = rng.standard_normal((4, w.shape[1])).astype(np.float32)
    y, steps = layer.forward(x, trace=True)
    ref = x @ w.T
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    print(f"{layer}")
    print(f"x -> int8 (scale {steps['x_scale'][0, 0]:.4f}) -> int32 sums, e.g. {steps['acc_int32'][0, :4]}")
    print(f"relative error vs the float layer: {rel:.1%} (a trained BitNet learns around it)")


def stage3():
    import numba

    from . import kernels
    from .bench.kernels import run

    th = numba.get_num_threads()
    shape = _shape("gate_proj")
    _rule(f"Lesson 03: ternary kernels vs numpy float32 ({shape[0]}x{shape[1]} GEMV, {th} threads)")
    res = run(shapes=[shape], threads=(th,), tokens=(1,), names=["naive", "mad", kernels.DEFAULT],
              cold_mb=64, repeat=3, compile_cost=False, torch_bf16=False, log=lambda s: None)
    for r in res["rows"]:
        print(f"  {r['kernel']:6s} {r['ms']:7.3f} ms  {r['bits_per_weight']:4.2f} bits/weight  "
              f"{r['vs_numpy_f32']:5.2f}x numpy float32 ({r['numpy_f32_ms']:.3f} ms)")
    print(f"  the engine uses: {kernels.DEFAULT}   (full race: python -m bitnet_edu.bench kernels)")


def stage4(prompt: str, max_new_tokens: int):
    import bitnet_edu

    _rule("Lessons 04-05: text from the embedded BitNet (trained with this package)")
    if not (bitnet_edu.DEFAULT_MODEL / "config.json").exists():
        print("the embedded model is not installed; see README (python -m bitnet_edu.train --config small)")
        return
    t0 = time.perf_counter()
    model = bitnet_edu.load_model()
    print(f"loaded in {time.perf_counter() - t0:.2f} s; weights {model.memory_report()['total'] / 2**20:.1f} MiB")
    t0 = time.perf_counter()
    model.generate(prompt, 2, temperature=0.0)  # first run compiles the Numba glue; cached on disk after
    print(f"warm-up (Numba compile on the first run only): {time.perf_counter() - t0:.1f} s")
    print(f"prompt: {prompt!r}\n")
    t0 = time.perf_counter()
    # the 2B4T quick-start settings (arXiv 2504.12285's model card): greedy decoding loops
    for piece in model.stream(prompt, max_new_tokens=max_new_tokens, seed=0, **SAMPLING):
        print(piece, end="", flush=True)
    dt = time.perf_counter() - t0
    s = model.last_stats
    print(f"\n\n{s['new_tokens']} tokens in {dt:.2f} s: prefill {s['prefill_tok_s']:.0f} tok/s, "
          f"decode {s['decode_tok_s']:.0f} tok/s; process peak memory {peak_rss_mb():.0f} MB")


def stage4_2b(tokens: int = 16):
    import bitnet_edu

    _rule("The full 2B4T shape (random ternary weights: speed does not depend on values)")
    t0 = time.perf_counter()
    model = bitnet_edu.random_model("2b4t", seed=0)
    print(f"built in {time.perf_counter() - t0:.1f} s")
    ids = list(range(1, 9))
    model.generate(ids, max_new_tokens=2, temperature=0.0)  # compile / warm up
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, temperature=0.0)
    dt = time.perf_counter() - t0
    print(f"decode: {len(out)} tokens in {dt:.2f} s = {len(out) / dt:.1f} tok/s "
          f"(vs bitnet.cpp: python -m bitnet_edu.bench decode --bitnet-cpp DIR); model "
          f"{model.memory_report()['total'] / 2**30:.2f} GiB, process peak {peak_rss_mb():.0f} MB")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        print(f"note: load average {load:.1f} on {cores} cores — other programs share the CPU, so this "
              f"figure is low; `python -m bitnet_edu.bench decode` on a quiet machine gives the real one")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="bitnet_edu demo: every lesson, measured here")
    ap.add_argument("--prompt", default="In the beginning")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--no-2b", action="store_true", help="skip the 2B-shape speed demo")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    w = stage1(rng)
    stage2(w, rng)
    stage3()
    stage4(args.prompt, args.max_new_tokens)
    if not args.no_2b:
        try:
            stage4_2b()
        except (ImportError, AttributeError, NotImplementedError) as e:
            print(f"(2B-shape demo unavailable: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
