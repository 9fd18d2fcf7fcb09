"""``bitnet-edu``: generate, chat, bench and export from the command line.

    bitnet-edu generate --model DIR_OR_GGUF "Once upon a time" -n 64 --temperature 0.8 --seed 0
    bitnet-edu chat --model DIR [--adapter chat]
    bitnet-edu chat --model tiiuae/Falcon3-1B-Instruct-1.58bit     (a hub id: the [hub] extra)
    bitnet-edu bench decode --threads 1,2
    bitnet-edu export --model DIR out.gguf
    bitnet-edu serve --model DIR [--adapter DIR_OR_NAME] [--host 127.0.0.1] [--port 8000]
                     [--api-key KEY]

Every error a user can cause (a bad argument, a missing or broken model file, a directory that
does not exist, too little memory) ends in one line ``bitnet-edu: error: ...`` on stderr and
exit code 2, never a traceback (``BITNET_EDU_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path


class UsageError(Exception):
    """A command-line argument is wrong; the message says which and why."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line and ``main`` returns 2 instead of exiting."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} ({what}), got {v}")
        return v
    return parse


def _float_in(low: float, high: float, what: str, *, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if math.isnan(v) or math.isinf(v) or v > high or v < low or (low_open and v == low):
            bound = f"{'>' if low_open else '>='} {low:g}" + ("" if math.isinf(high) else
                                                           f" and <= {high:g}")
            raise argparse.ArgumentTypeError(f"must be a finite number {bound} ({what}), "
                                             f"got {text}")
        return v
    return parse


def _add_model_args(p, adapter: bool = True):
    p.add_argument("--model", default=None,
                   help="HF directory, .gguf file or hub id (default: shipped model)")
    p.add_argument("--revision", default=None, help="hub revision to pin")
    p.add_argument("--kernel", default=None, help="ternary kernel (bitnet_edu.kernels.available())")
    p.add_argument("--head", default="auto", choices=["auto", "int8", "int4", "float32"])
    if adapter:  # not for export: a GGUF holds the ternary weights only
        p.add_argument("--adapter", default=None, metavar="DIR_OR_NAME",
                       help="a LoRA adapter to run with the model: a PEFT adapter directory, or "
                            "the name of a shipped one (e.g. chat)")


def _add_sampling_args(p):
    p.add_argument("-n", "--max-new-tokens", type=_int_at_least(1, "tokens to generate"),
                   default=64)
    # sampling by default: greedy decoding of a small model loops on one phrase; the defaults are
    # the 2B4T quick-start settings (temperature 0.7, top-p 0.9, repetition penalty 1.05)
    p.add_argument("--temperature", type=_float_in(0, math.inf, "0 = greedy"), default=0.7,
                   help="0 = greedy")
    p.add_argument("--top-k", type=_int_at_least(0, "0 = off"), default=0, help="0 = off")
    p.add_argument("--top-p", type=_float_in(0, 1, "1 = off"), default=0.9)
    p.add_argument("--repetition-penalty", default=1.05,
                   type=_float_in(0, math.inf, "1 = off, > 1 discourages repeats", low_open=True))
    p.add_argument("--seed", type=_int_at_least(0, "any non-negative integer"), default=None)


def _sampling(a) -> dict:
    return dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                repetition_penalty=a.repetition_penalty, seed=a.seed)


def _load(a):
    from .model.loading import load_model
    return load_model(a.model, revision=a.revision, kernel=a.kernel, head=a.head, progress=True,
                      adapter=getattr(a, "adapter", None))


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
    # render the model's template once before the first question: a template that is broken,
    # needs jinja2 or refuses a system message fails here, not after the user typed
    chat_prompt(model, messages + [{"role": "user", "content": "Hello"}])
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


def cmd_evaluate(a) -> int:
    from .evaluate.__main__ import main as evaluate_main
    return evaluate_main(a.rest)


def cmd_export(a) -> int:
    from .export import to_gguf
    parent = Path(a.out).expanduser().resolve().parent
    if not parent.is_dir():  # say so before spending a minute loading the model
        raise ValueError(f"cannot write {a.out}: the directory {parent} does not exist")
    model = _load(a)
    to_gguf(model, a.out)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


def cmd_serve(a) -> int:
    import json
    import logging
    try:
        import uvicorn

        from .serve.app import ServerConfig, create_app
    except ImportError as e:
        raise ValueError(f"the server needs FastAPI and uvicorn ({e.name} is missing): "
                         "pip install 'bitnet-edu[serve]'") from None
    key = a.api_key or os.environ.get("BITNET_EDU_API_KEY") or None
    if a.host not in ("127.0.0.1", "localhost", "::1") and key is None:
        print(f"bitnet-edu: warning: serving on {a.host} without --api-key: anyone who can reach "
              "this machine can use it", file=sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))  # the lines are JSON already
    log = logging.getLogger("bitnet_edu.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    model = _load(a)
    name = a.name or (Path(a.model).name if a.model else "bitnet-edu-default")
    if a.adapter and not a.name:
        name += "+" + model.adapter.name
    cfg = ServerConfig(model_name=name, api_key=key, rate_per_min=a.rate, burst=a.burst,
                       timeout_s=a.timeout, max_batch=a.max_batch, log_prompts=a.log_prompts,
                       max_new_tokens=a.max_tokens)
    app = create_app(model, cfg)
    print(json.dumps({"event": "start", "url": f"http://{a.host}:{a.port}/", "model": name,
                      "api_key": key is not None}), file=sys.stderr)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


def _one_line(err: BaseException) -> str:
    """The error as one line: its message (whitespace collapsed, cut at 400 characters), with
    the exception's type when it is not a ValueError (those are written for users)."""
    try:
        text = " ".join(str(err).split())
    except Exception:  # noqa: BLE001 - a message that cannot be printed
        text = ""
    if isinstance(err, MemoryError):
        return (f"out of memory{f' ({text})' if text else ''}: the model or the context is "
                f"too large for this machine")
    numba_errors = sys.modules.get("numba.core.errors")  # loaded if a kernel ever compiled
    if numba_errors is not None and isinstance(err, numba_errors.NumbaError):
        detail = text.split(" During: ")[0].replace(
            "Failed in nopython mode pipeline (step: nopython frontend) ", "")
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        text = (f"a kernel could not be compiled for these inputs (is a config value of the "
                f"wrong type, e.g. a list where a number belongs?) — Numba: {detail}")
    elif not isinstance(err, (ValueError, UsageError, OSError)):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\nbitnet-edu: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a user's mistake or not, no traceback
        if os.environ.get("BITNET_EDU_DEBUG") == "1":
            raise
        print(f"bitnet-edu: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _main(argv) -> int:
    ap = _Parser(prog="bitnet-edu", description="BitNet b1.58 on the CPU, readable.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="continue a prompt")
    _add_model_args(g)
    _add_sampling_args(g)
    g.add_argument("prompt")
    g.set_defaults(fn=cmd_generate)
    c = sub.add_parser("chat", help="interactive chat in the model's own chat template")
    _add_model_args(c)
    _add_sampling_args(c)
    c.add_argument("--system", default=None)
    c.set_defaults(fn=cmd_chat)
    b = sub.add_parser("bench", help="benchmarks (python -m bitnet_edu.bench ...)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    v = sub.add_parser("evaluate", help="offline tasks, or lm-eval on this engine "
                                        "(python -m bitnet_edu.evaluate ...)")
    v.add_argument("rest", nargs=argparse.REMAINDER)
    v.set_defaults(fn=cmd_evaluate)
    e = sub.add_parser("export", help="write a GGUF I2_S file (runs in bitnet.cpp)")
    _add_model_args(e, adapter=False)
    e.add_argument("out")
    e.set_defaults(fn=cmd_export)
    s = sub.add_parser("serve", help="an OpenAI-compatible server for a class (FastAPI + uvicorn)")
    _add_model_args(s)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: "
                        "the classroom network, then set --api-key)")
    s.add_argument("--port", type=_int_at_least(1, "a TCP port"), default=8000)
    s.add_argument("--api-key", default=None,
                   help="clients must send 'Authorization: Bearer KEY' (or set BITNET_EDU_API_KEY)")
    s.add_argument("--name", default=None, help="the model id clients ask for (/v1/models)")
    s.add_argument("--rate", type=_float_in(0, math.inf, "0 = unlimited"), default=60.0,
                   help="requests per minute per client (0 = unlimited)")
    s.add_argument("--burst", type=_int_at_least(1, "requests at once"), default=10)
    s.add_argument("--timeout", type=_float_in(0, math.inf, "seconds", low_open=True),
                   default=120.0, help="seconds a request may run")
    s.add_argument("--max-batch", type=_int_at_least(1, "sequences decoded together"), default=16)
    s.add_argument("--max-tokens", type=_int_at_least(1, "tokens"), default=512,
                   help="the most tokens one request may ask for")
    s.add_argument("--log-prompts", action="store_true",
                   help="write prompt text into the logs (off by default: students' privacy)")
    s.set_defaults(fn=cmd_serve)
    a = ap.parse_args(argv)
    return a.fn(a) or 0


if __name__ == "__main__":
    sys.exit(main())
