"""``bitnet-edu``: generate, chat, bench and export from the command line.

    bitnet-edu generate --model DIR_OR_GGUF "Once upon a time" -n 64 --temperature 0.8 --seed 0
    bitnet-edu chat --model DIR
    bitnet-edu bench decode --threads 1,2
    bitnet-edu export --model DIR out.gguf
"""

from __future__ import annotations

import argparse
import sys


def _add_model_args(p):
    p.add_argument("--model", default=None, help="HF directory, .gguf file or hub id (default: shipped model)")
    p.add_argument("--revision", default=None, help="hub revision to pin")
    p.add_argument("--kernel", default=None, help="ternary kernel (bitnet_edu.kernels.available())")
    p.add_argument("--head", default="auto", choices=["auto", "int8", "int4", "float32"])


def _add_sampling_args(p):
    p.add_argument("-n", "--max-new-tokens", type=int, default=64)
    # sampling by default: greedy decoding of a small model loops on one phrase
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def _sampling(a) -> dict:
    return dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                repetition_penalty=a.repetition_penalty, seed=a.seed)


def _load(a):
    from .model.loading import load_model
    return load_model(a.model, revision=a.revision, kernel=a.kernel, head=a.head, progress=True)


def cmd_generate(a) -> int:
    model = _load(a)
    for piece in model.stream(a.prompt, a.max_new_tokens, **_sampling(a)):
        print(piece, end="", flush=True)
    s = model.last_stats
    print(f"\n[{s['prompt_tokens']} prompt tokens at {s['prefill_tok_s']:.1f} tok/s, "
          f"{s['new_tokens']} new at {s['decode_tok_s']:.1f} tok/s]", file=sys.stderr)
    return 0


def cmd_chat(a) -> int:
    from .generate import chat_prompt
    model = _load(a)
    messages = [{"role": "system", "content": a.system}] if a.system else []
    print("chat with the model; an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        print("bot> ", end="", flush=True)
        reply = ""
        for piece in model.stream(chat_prompt(model, messages), a.max_new_tokens, **_sampling(a)):
            reply += piece
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": reply})
    return 0


def cmd_bench(a) -> int:
    from .bench.__main__ import main as bench_main
    return bench_main(a.rest)


def cmd_export(a) -> int:
    from .export import to_gguf
    model = _load(a)
    to_gguf(model, a.out)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bitnet-edu", description="BitNet b1.58 on the CPU, readable.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="continue a prompt")
    _add_model_args(g)
    _add_sampling_args(g)
    g.add_argument("prompt")
    g.set_defaults(fn=cmd_generate)
    c = sub.add_parser("chat", help="interactive chat with the 2B4T chat template")
    _add_model_args(c)
    _add_sampling_args(c)
    c.add_argument("--system", default=None)
    c.set_defaults(fn=cmd_chat)
    b = sub.add_parser("bench", help="benchmarks (python -m bitnet_edu.bench ...)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    e = sub.add_parser("export", help="write a GGUF I2_S file (runs in bitnet.cpp)")
    _add_model_args(e)
    e.add_argument("out")
    e.set_defaults(fn=cmd_export)
    a = ap.parse_args(argv)
    try:
        return a.fn(a) or 0
    except ValueError as err:  # clear message, no traceback, for user errors
        print(f"bitnet-edu: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
