"""Full-shape inference speed: ``python -m bitnet_edu.bench decode [--threads 1,2] [--shape NAME]``.

``--shape``: a preset of :data:`bitnet_edu.config.PRESETS` (default ``2b4t``; the family members
``falcon3-1b``, ``falcon3-3b``, ``falcon3-7b``, ``falcon3-10b``, ``llama3-8b-1.58``,
``1bitllm-large``, ``1bitllm-3b``; ``bitnet-embedding-0.6b``: an embedding model, whose row
is its embedding throughput, texts of ``--prompt`` tokens through ``model.embed``, beside the
ternary kernel's multiply-add rate measured in the same run as a ceiling).  Each row
also gives the bytes one decoded token reads: every packed ternary layer and the output head's
table (an untied ``lm_head``: the embedding's table is only looked up), KV cache not counted.

Random ternary weights at the real shape (speed does not depend on the values).  Each
configuration (thread count, head, situation) runs in a fresh subprocess, so its peak RSS and
cold start (process start -> model built and first prefill compiled) are its own; inside it the
measurement is repeated ``--repeats`` times and the MEDIAN is reported (a shared laptop is
noisy; the best run flatters).  Reported: prefill tok/s over a 128-token prompt, decode tok/s
over 64 tokens, peak RSS, for the int8 head (the default) and the 4-bit head (``--head``).

* ``--isa avx2|avxvnni|portable``: Numba compiles our kernels for that CPU instead of this one
  (its own target switch, its own compiled-code cache), so an AVX2-only laptop's speed can be
  measured on an AVX-512 machine; each row names the instruction set its process ran.
* ``--bitnet-cpp DIR``: also runs bitnet.cpp's ``DIR/bin/llama-bench`` (same prompt, tokens,
  threads and repeats) on a GGUF written from the same random model (``to_gguf``, cached), and
  prints ours / bitnet.cpp.  Its head is the f16 embedding; ours is int8 or int4.
* ``--busy N``: the whole measurement again with N competing busy processes (a Python loop each,
  pinned nowhere): a student's laptop with a browser and JupyterLab running.
* ``--threads`` takes numbers (the engine is told that many threads) and ``default`` (nothing
  set: the engine's automatic choice, and bitnet.cpp's own default).
* ``--transformers``: also transformers' BitNetForCausalLM at the same shape (slow, ~5 GB: few
  tokens) and the ratio.
* ``--adapter R``: a LoRA adapter of rank R (random A and B on all seven projections of every
  layer), or ``--adapter DIR`` a PEFT adapter directory of this shape: each of our processes
  times the model without and with it, alternating in the same process (same warm caches, same
  load), and prints both, the ratio, and the adapter's float32 bytes against the ternary
  weights' bytes (each read once per decoded token).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import cpu_threads

TARGETS = {"decode_tok_s": 22.0, "prefill_tok_s": 110.0, "peak_rss_gb": 0.9}

_X86 = ("+64bit,+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,+sse4.1,+ssse3,+sse3,+sse2,"
        "+sse,+cx16,+movbe,+lzcnt")
#: --isa NAME: Numba compiles for another CPU than this one (its code still runs here), so an
#: AVX2-only laptop's kernels can be measured on an AVX-512 machine
ISA_TARGETS = {
    "native": {},
    "avxvnni": {"NUMBA_CPU_NAME": "alderlake", "NUMBA_CPU_FEATURES": _X86 + ",+avxvnni"},
    "avx2": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": _X86},
    "portable": {"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": "+64bit,+sse2,+sse"},
}
DEFAULT = 0  # --threads "default": nothing set, the engine chooses
_USER_ENV = dict(os.environ)  # bitnet.cpp runs in it (importing our kernels sets GOMP_SPINCOUNT)


def _isa_env(name: str) -> dict:
    env = dict(ISA_TARGETS[name])
    if env:  # its own compiled-kernel cache, beside the native one
        from bitnet_edu.numba_cache import _user_cache_base
        env["BITNET_EDU_CACHE_DIR"] = str(_user_cache_base() / f"isa-{name}")
    return env


def _peak_rss_gb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _median(xs):
    return float(statistics.median(xs))


def bench_adapter(spec: str, config):
    """``--adapter``: a whole number = a random adapter of that rank on all seven projections;
    otherwise a PEFT adapter directory (checked against ``config``)."""
    from bitnet_edu.model.lora import load_adapter, random_adapter
    if spec.isdigit():
        return random_adapter(config, int(spec), seed=1)
    return load_adapter(spec, config)


def bytes_per_token(m) -> int:
    """Bytes of weights one decoded token reads: the packed ternary layers and the output head
    (its embedding row is one row; the KV cache grows with the context and is not counted)."""
    head = m.lm_head.nbytes if hasattr(m, "lm_head") else 0  # an embedding model has none
    return sum(L.nbytes for L in m.layers) + head + m.norm.nbytes


def run_ours(threads: int, prompt: int, new: int, head: str, layers: int | None, kernel,
             repeats: int = 1, adapter: str | None = None, shape: str = "2b4t") -> dict:
    """Time one configuration in this process (call in a fresh one for honest RSS):
    ``repeats`` times a ``prompt``-token prefill then ``new`` decode steps, each from an empty
    cache; medians.  ``threads``: ``model.threads`` (0: left at None, the automatic choice).
    ``adapter`` (:func:`bench_adapter`): each repeat also runs with the adapter, right after
    the run without (``*_adapter`` keys)."""
    t0 = time.perf_counter()
    from bitnet_edu.kernels.intrinsics import isa
    from bitnet_edu.model.random import random_model
    over = {"num_hidden_layers": layers} if layers else {}
    m = random_model(shape, seed=0, head=head, kernel=kernel, **over)
    m.threads = threads or None
    if not hasattr(m, "lm_head"):  # an embedding model (BitNet-embedding): no decoding
        return run_embedding(m, t0, threads, prompt, head, repeats, shape)
    lora = bench_adapter(adapter, m.config) if adapter else None
    built = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = rng.integers(0, m.config.vocab_size, prompt).tolist()
    for a in [None] + ([lora] if lora else []):
        m.adapter = a
        m.forward(ids[:8], m.new_cache(16), last_only=True)  # compile / load the Numba cache
        m.forward(ids[:1], m.new_cache(16))                  # the one-token paths too
    m.adapter = None
    cold = time.perf_counter() - t0

    def one_run(pre, dec):
        cache = m.new_cache(prompt + new)
        t = time.perf_counter()
        logits = m.forward(ids, cache, last_only=True)
        pre.append(prompt / (time.perf_counter() - t))
        tok = int(np.argmax(logits[0]))
        t = time.perf_counter()
        for _ in range(new):
            tok = int(np.argmax(m.forward([tok], cache)[0]))
        dec.append(new / (time.perf_counter() - t))

    pre, dec, pre_a, dec_a = [], [], [], []
    for _ in range(repeats):
        m.adapter = None
        one_run(pre, dec)
        if lora is not None:
            m.adapter = lora
            one_run(pre_a, dec_a)
    m.adapter = None
    out = {"engine": f"bitnet_edu ({m.kernel_name} {isa()}, head {head})", "threads": threads,
           "prefill_tok_s": _median(pre), "decode_tok_s": _median(dec),
           "prefill_runs": pre, "decode_runs": dec,
           "peak_rss_gb": _peak_rss_gb(), "build_s": built, "cold_start_s": cold,
           "weights_gb": m.memory_report()["total"] / 2**30, "shape": shape,
           "bytes_per_token": bytes_per_token(m)}
    if lora is not None:
        ranks = sorted({a.shape[0] for a, _, _ in lora.modules.values()})
        out.update(adapter=lora.name, adapter_ranks=ranks, adapter_modules=len(lora.modules),
                   adapter_bytes=lora.nbytes, ternary_bytes=sum(L.nbytes for L in m.layers),
                   prefill_tok_s_adapter=_median(pre_a), decode_tok_s_adapter=_median(dec_a),
                   prefill_runs_adapter=pre_a, decode_runs_adapter=dec_a)
    return out


def run_embedding(m, t0: float, threads: int, prompt: int, head: str, repeats: int,
                  shape: str) -> dict:
    """An embedding model's row: ``repeats`` texts of ``prompt`` random tokens each through
    ``model.embed`` (the whole text at once, as a prefill), medians; decode is not a thing
    (``decode_tok_s`` 0).  Beside it the kernel's multiply-add rate measured in this run on
    as many tokens (:func:`.batch.kernel_ceiling`), turned into a tokens/s ceiling by the model's
    ternary multiply-adds per token (attention and the glue not counted)."""
    from bitnet_edu.kernels.intrinsics import isa
    built = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = rng.integers(0, m.config.vocab_size, prompt).tolist()
    m.embed([ids[:8]])  # compile / load the Numba cache
    cold = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        m.embed([ids])
        runs.append(prompt / (time.perf_counter() - t))
    from .batch import kernel_ceiling  # layer 0's widest matrix, as many tokens as a text
    macs = kernel_ceiling(m, prompt, repeats=5, packed=m.layers[0].packed["mlp.gate_proj"])
    per_token = sum(L.packed[p].out * L.packed[p].k for L in m.layers for p in L.packed)
    return {"engine": f"bitnet_edu ({m.kernel_name} {isa()}, table {head})", "threads": threads,
            "prefill_tok_s": _median(runs), "decode_tok_s": 0.0, "prefill_runs": runs,
            "decode_runs": [], "peak_rss_gb": _peak_rss_gb(), "build_s": built,
            "cold_start_s": cold, "weights_gb": m.memory_report()["total"] / 2**30,
            "shape": shape, "embedding": True, "bytes_per_token": bytes_per_token(m),
            "kernel_macs": macs, "embed_ceiling_tok_s": macs / per_token}


def run_transformers(threads: int, new: int, layers: int | None) -> dict:
    """transformers' BitNetForCausalLM (offline autobitlinear, bf16) at the 2B4T shape."""
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import replace_with_bitnet_linear
    from transformers.utils.quantization_config import BitNetQuantConfig

    if threads:
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




def head_accuracy(mode: str, rows: int = 16384, hidden: int = 2560, n: int = 64,
                  seed: int = 0) -> dict:
    """Cost of a quantized head: its logits vs the float32 table's (random rows and states)."""
    from bitnet_edu.model.transformer import Head
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((rows, hidden), dtype=np.float32) * np.float32(0.02)
    x = rng.standard_normal((n, hidden), dtype=np.float32)
    exact, approx = Head(table, "float32").logits(x), Head(table, mode).logits(x)
    rel = np.abs(approx - exact).max(axis=1) / np.abs(exact).max(axis=1)
    top5 = np.argsort(-approx, axis=1)[:, :5]
    top1 = exact.argmax(1)
    return {"max_rel_err": float(rel.max()),
            "top1_agree": float(np.mean(top1 == approx.argmax(1))),
            "top1_in_top5": float(np.mean([e in t for e, t in zip(top1, top5)]))}


# --- bitnet.cpp ----------------------------------------------------------------------------------

def default_gguf(layers: int | None) -> Path:
    """Where the bench keeps its GGUF of ``random_model("2b4t", seed=0)`` (1.2 GB at 30 layers):
    the user's cache folder, reused by later runs."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bitnet_edu" / "bench" / f"random-2b4t-{layers or 30}L.gguf"


def write_gguf(path: Path, layers: int | None) -> Path:
    """The same random model our rows run, written by ``to_gguf`` (in a child process, so its
    memory is gone before anything is timed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    code = ("import sys, warnings; warnings.simplefilter('ignore')\n"
            "from bitnet_edu.model.random import random_model\n"
            "from bitnet_edu.formats import to_gguf\n"
            "layers = int(sys.argv[2])\n"
            "over = {'num_hidden_layers': layers} if layers else {}\n"
            "to_gguf(random_model('2b4t', seed=0, **over), sys.argv[1], progress=False)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(layers or 0)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"writing {path} failed:\n{out.stderr[-2000:]}")
    return path


def parse_llama_bench(text: str) -> dict:
    """llama-bench ``-o jsonl`` output -> ``{"prefill_tok_s", "decode_tok_s"}`` (medians of its
    per-repetition ``samples_ts``; nan when a test is missing) and ``model_type``."""
    res = {"prefill_tok_s": float("nan"), "decode_tok_s": float("nan"), "model_type": "?"}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        runs = r.get("samples_ts") or [r["avg_ts"]]
        key = "decode_tok_s" if r.get("n_gen", 0) else "prefill_tok_s"
        res[key] = _median(runs)
        res[key.replace("tok_s", "runs")] = runs
        res["model_type"] = r.get("model_type", "?")
    return res


def run_bitnet_cpp(build: str, gguf: Path, threads: int, prompt: int, new: int,
                   repeats: int) -> dict:
    """bitnet.cpp's ``llama-bench`` from build dir ``build`` on ``gguf`` (``threads`` 0: its own
    default)."""
    exe = Path(build) / "bin" / "llama-bench"
    cmd = [str(exe), "-m", str(gguf), "-p", str(prompt), "-n", str(new), "-r", str(repeats),
           "-o", "jsonl"] + (["-t", str(threads)] if threads else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=_USER_ENV)
    if out.returncode:
        raise RuntimeError(f"{exe} failed:\n{out.stderr[-2000:]}")
    return {"engine": f"bitnet.cpp ({Path(build).name}, head f16)", "threads": threads,
            **parse_llama_bench(out.stdout), "peak_rss_gb": float("nan"),
            "cold_start_s": float("nan")}


# --- driver --------------------------------------------------------------------------------------

def _child(args) -> int:
    if args.child == "transformers":
        r = run_transformers(threads=args.threads_one, new=args.hf_tokens, layers=args.layers)
    else:
        r = run_ours(threads=args.threads_one, prompt=args.prompt, new=args.new,
                     head=args.head, layers=args.layers, kernel=args.kernel,
                     repeats=args.repeats, adapter=args.adapter, shape=args.shape)
    print("RESULT " + json.dumps(r))
    return 0


def _spawn(args, child: str, threads: int, head: str = "int8") -> dict:
    cmd = [sys.executable, "-m", "bitnet_edu.bench", "decode", "--child", child,
           "--threads-one", str(threads), "--prompt", str(args.prompt), "--new", str(args.new),
           "--head", head, "--hf-tokens", str(args.hf_tokens), "--repeats", str(args.repeats),
           "--shape", args.shape]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    if args.kernel:
        cmd += ["--kernel", args.kernel]
    if args.adapter and child == "ours":
        cmd += ["--adapter", args.adapter]
    env = dict(os.environ)
    if threads:  # "default" leaves Numba's and OpenMP's own defaults alone
        env.update(NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    # BLAS is not on our path (the ternary kernels and heads are Numba): one OpenBLAS thread,
    # so its idle pool never competes with Numba's workers for the cores.
    env["OPENBLAS_NUM_THREADS"] = "1" if child == "ours" else str(threads or os.cpu_count())
    if child == "ours":
        env.update(_isa_env(args.isa))
        env.update(kv.split("=", 1) for kv in args.env)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{child} run failed:\n{out.stderr[-2000:]}")


def adapter_rows(r: dict) -> list[dict]:
    """One child's result with ``--adapter`` as two table rows: without, then with it."""
    if "adapter" not in r:
        return [r]
    with_ = {**r, "engine": f"{r['engine']} + LoRA {r['adapter']}",
             "prefill_tok_s": r["prefill_tok_s_adapter"],
             "decode_tok_s": r["decode_tok_s_adapter"], "with_adapter": True}
    return [r, with_]


def print_adapter_lines(rows: list[dict]) -> None:
    """Per configuration with an adapter: its size against the ternary weights, and the speed
    with / without."""
    for r in rows:
        if "adapter" not in r or r.get("with_adapter"):
            continue
        ab, tb = r["adapter_bytes"], r["ternary_bytes"]
        print(f"LoRA {r['adapter']} (r={'/'.join(map(str, r['adapter_ranks']))}, "
              f"{r['adapter_modules']} projections), {r['engine'][12:-1]}, busy {r['busy']}, "
              f"threads {_thr(r['threads'])}: adapter {ab / 2**20:.2f} MiB float32 vs ternary "
              f"weights {tb / 2**20:.1f} MiB ({100 * ab / tb:.1f}%, both read once per token); "
              f"decode {r['decode_tok_s']:.2f} -> {r['decode_tok_s_adapter']:.2f} tok/s "
              f"({r['decode_tok_s_adapter'] / r['decode_tok_s']:.3f}x), prefill "
              f"{r['prefill_tok_s']:.1f} -> {r['prefill_tok_s_adapter']:.1f} tok/s "
              f"({r['prefill_tok_s_adapter'] / r['prefill_tok_s']:.3f}x)")


def _threads(spec: str) -> list[int]:
    return [DEFAULT if s.strip() == "default" else int(s) for s in spec.split(",")]


def _thr(t: int) -> str:
    return "def" if t == DEFAULT else str(t)


def print_table(rows: list[dict]) -> None:
    """One line per run, then ours / bitnet.cpp per situation and thread count."""
    print(f"{'engine':48s} {'busy':>4s} {'thr':>3s} {'prefill tok/s':>13s} {'decode tok/s':>12s} "
          f"{'peak RSS GB':>11s} {'cold start s':>12s} {'MB/token':>9s}")
    for r in rows:
        bpt = r.get("bytes_per_token")
        print(f"{r['engine']:48s} {r['busy']:4d} {_thr(r['threads']):>3s} "
              f"{r['prefill_tok_s']:13.1f} {r['decode_tok_s']:12.2f} {r['peak_rss_gb']:11.2f} "
              f"{r['cold_start_s']:12.1f} {'' if bpt is None else f'{bpt / 1e6:9.1f}'}")
    for r in rows:
        if not r["engine"].startswith("bitnet_edu"):
            continue
        ref = [c for c in rows if c["engine"].startswith("bitnet.cpp")
               and (c["busy"], c["threads"]) == (r["busy"], r["threads"])]
        if ref:
            c = ref[0]
            print(f"ours / bitnet.cpp, {r['engine'][12:-1]}, busy {r['busy']}, "
                  f"threads {_thr(r['threads'])}: prefill "
                  f"{r['prefill_tok_s'] / c['prefill_tok_s']:.2f}x, decode "
                  f"{r['decode_tok_s'] / c['decode_tok_s']:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitnet_edu.bench decode",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2",
                    help="comma-separated thread counts; 'default': the automatic choice")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--head", default="int8,int4",
                    help="comma-separated heads: int8 (default model), int4 (8x smaller), "
                         "float32 (exact)")
    ap.add_argument("--kernel", default=None)
    ap.add_argument("--shape", default="2b4t", type=str.lower,
                    help="the model shape: a preset name (2b4t, falcon3-1b, falcon3-3b, "
                         "falcon3-7b, falcon3-10b, llama3-8b-1.58, 1bitllm-large, "
                         "1bitllm-3b; bitnet-embedding-0.6b: embedding throughput of "
                         "--prompt-token texts instead of decoding)")
    ap.add_argument("--layers", type=int, default=None,
                    help="fewer layers (quick look; not the real shape)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs per configuration; the median is reported")
    ap.add_argument("--isa", default="native", choices=list(ISA_TARGETS),
                    help="compile our kernels for this instruction set (avx2: an AVX2-only laptop)")
    ap.add_argument("--busy", type=int, default=0,
                    help="also measure with this many competing busy processes running")
    ap.add_argument("--bitnet-cpp", default=None, metavar="DIR",
                    help="also run bitnet.cpp's DIR/bin/llama-bench (DIR: its build folder)")
    ap.add_argument("--gguf", default=None,
                    help="the GGUF for --bitnet-cpp (default: written once from the random model)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for our processes (e.g. NUMBA_THREADING_LAYER=tbb)")
    ap.add_argument("--transformers", action="store_true",
                    help="also time transformers (~5 GB, slow)")
    ap.add_argument("--hf-tokens", type=int, default=4)
    ap.add_argument("--adapter", default=None, metavar="R_OR_DIR",
                    help="also time with a LoRA adapter: a rank (random A, B on all seven "
                         "projections) or a PEFT adapter directory of the 2B4T shape")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads-one", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    from bitnet_edu.config import PRESETS
    if args.shape not in PRESETS:
        ap.error(f"unknown --shape {args.shape!r}; known: {', '.join(PRESETS)}")
    if args.shape != "2b4t" and (args.transformers or args.bitnet_cpp or args.adapter):
        ap.error("--transformers, --bitnet-cpp and --adapter run at the 2B4T shape only")
    heads = args.head.split(",")
    bad = [h for h in heads if h not in ("int8", "int4", "float32")]
    if bad:
        ap.error(f"unknown head {bad[0]!r}: choose from int8, int4, float32")
    if args.adapter is not None:
        if args.adapter.isdigit():
            if int(args.adapter) < 1:
                ap.error("--adapter takes a rank >= 1 or an adapter directory")
        else:
            from bitnet_edu.model.lora import resolve_adapter
            try:
                resolve_adapter(args.adapter)
            except ValueError as e:
                ap.error(str(e))
    if any("=" not in kv for kv in args.env):
        ap.error("--env takes KEY=VALUE")
    gguf = None
    if args.bitnet_cpp:
        if not (Path(args.bitnet_cpp) / "bin" / "llama-bench").exists():
            ap.error(f"no llama-bench in {args.bitnet_cpp}/bin")
        gguf = Path(args.gguf) if args.gguf else default_gguf(args.layers)
        if not gguf.exists():
            print(f"writing {gguf} (the random model for bitnet.cpp) ...", flush=True)
            write_gguf(gguf, args.layers)
    rows = []
    for busy in [0] + ([args.busy] if args.busy else []):
        with cpu_threads.busy_programs(busy):
            for t in _threads(args.threads):
                for head in heads:
                    rows += [{**r, "busy": busy}
                             for r in adapter_rows(_spawn(args, "ours", t, head))]
                if gguf is not None:
                    rows.append({**run_bitnet_cpp(args.bitnet_cpp, gguf, t, args.prompt,
                                                  args.new, args.repeats), "busy": busy})
                if args.transformers:
                    rows.append({**_spawn(args, "transformers", t), "busy": busy})
    real = PRESETS[args.shape]["num_hidden_layers"]
    shape = (f"{'2B4T' if args.shape == '2b4t' else args.shape} shape"
             f"{'' if not args.layers else f' with {args.layers} of its {real} layers (REDUCED)'}")
    print(f"\n{shape}, random ternary weights, prompt {args.prompt}, decode {args.new}, "
          f"median of {args.repeats} runs (transformers: {args.hf_tokens} decode tokens); "
          f"load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
          + ("; busy N: N competing busy processes" if args.busy else ""))
    print_table(rows)
    print_adapter_lines(rows)
    # targets: the unloaded machine, the base model
    rows = [r for r in rows if r["busy"] == 0 and not r.get("with_adapter")]
    for t in sorted({r["threads"] for r in rows}):
        ours = [r for r in rows if r["threads"] == t and r["engine"].startswith("bitnet_edu")]
        ours = sorted(ours, key=lambda r: -r["decode_tok_s"])
        hf = [r for r in rows if r["threads"] == t and r["engine"].startswith("transformers")]
        if ours and hf:
            print(f"decode speed-up vs transformers at {_thr(t)} thread(s): "
                  f"{ours[0]['decode_tok_s'] / hf[0]['decode_tok_s']:.1f}x")
    ours = [r for r in rows if r["engine"].startswith("bitnet_edu")]
    for head in dict.fromkeys(r["engine"] for r in ours if not r.get("embedding")):
        mine = [r for r in ours if r["engine"] == head]
        best = {k: (min if k == "peak_rss_gb" else max)(r[k] for r in mine) for k in TARGETS}
        met = {k: best[k] <= v if k == "peak_rss_gb" else best[k] >= v for k, v in TARGETS.items()}
        print(f"targets, {head}: " + ", ".join(
            f"{k} {best[k]:.2f} ({'met' if met[k] else 'not met'}, target {v})"
            for k, v in TARGETS.items()))
    for r in [r for r in ours if r.get("embedding")]:
        print(f"embedding, {r['engine'][12:-1]}, {_thr(r['threads'])} thread(s): "
              f"{r['prefill_tok_s']:.1f} tok/s = {r['prefill_tok_s'] / args.prompt:.2f} texts/s "
              f"of {args.prompt} tokens; the kernel ran {r['kernel_macs'] / 1e9:.1f} GMAC/s on "
              f"{args.prompt} tokens in this run -> at most {r['embed_ceiling_tok_s']:.1f} tok/s "
              f"(ternary multiply-adds only): {r['prefill_tok_s'] / r['embed_ceiling_tok_s']:.0%} "
              "of it")
    ours = [r for r in ours if not r.get("embedding")]
    for r in ours:
        print(f"bytes per decoded token, {r['engine'][12:-1]}: {r['bytes_per_token'] / 1e6:.1f} MB "
              f"(ternary layers + output head; KV cache not counted) -> at "
              f"{r['decode_tok_s']:.2f} tok/s {r['bytes_per_token'] * r['decode_tok_s'] / 1e9:.2f} "
              "GB/s")
    if not args.layers and args.shape == "2b4t":  # the accuracy lines: the real table size
        for mode in ("int8", "int4"):
            acc = head_accuracy(mode)
            print(f"{mode} head accuracy cost (16k random rows, 64 random hidden states): max "
                  f"relative logit error {acc['max_rel_err']:.2e}, top-1 agreement "
                  f"{acc['top1_agree']:.3f}, float top-1 in its top-5 {acc['top1_in_top5']:.3f}")
    return 0
