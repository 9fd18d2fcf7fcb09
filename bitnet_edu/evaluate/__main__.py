"""``python -m bitnet_edu.evaluate``: score a model on the offline tasks, or run lm-eval on it.

    python -m bitnet_edu.evaluate offline [--model PATH] [--head int8] [--limit N] [--json F]
    python -m bitnet_edu.evaluate lm-eval run --model bitnet_edu --model_args pretrained=PATH \\
        --tasks bitnet_edu_next_verse,bitnet_edu_cloze,bitnet_edu_heldout [--limit N] ...
    python -m bitnet_edu.evaluate build-tasks

``offline`` uses our own scorer (no lm-eval needed).  ``lm-eval ...`` is lm-eval's own command
line, unchanged, run after the ``bitnet_edu`` model is registered and with ``--include_path``
pointing at the offline tasks (lm-eval 0.4 has no plugin entry point for models, so a plain
``lm_eval`` command would not know ``--model bitnet_edu``).  ``build-tasks`` rewrites the tasks'
JSON data from the corpus (needs ``[train]``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _offline(argv) -> int:
    from . import offline

    p = argparse.ArgumentParser(prog="python -m bitnet_edu.evaluate offline",
                                description="the offline tasks, scored by bitnet_edu.evaluate")
    p.add_argument("--model", default=None, help="model directory or .gguf (default: shipped)")
    p.add_argument("--head", default="auto", choices=["auto", "float32", "int8", "int4"])
    p.add_argument("--tasks", default=",".join(offline.TASKS),
                   help="comma-separated, from: " + ", ".join(offline.TASKS))
    p.add_argument("--limit", type=int, default=None, help="first N documents of each task")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    if a.limit is not None and a.limit < 1:
        p.error("--limit must be >= 1")
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in offline.TASKS]
    if bad:
        p.error(f"unknown task {bad[0]!r}; the offline tasks are {', '.join(offline.TASKS)}")
    from ..model import load_model

    model = load_model(a.model, head=a.head)
    res = {t: offline.run_task(model, t, limit=a.limit) for t in tasks}
    print(offline.format_table(res))
    print("seconds: " + ", ".join(f"{t} {r['seconds']:.1f}" for t, r in res.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({t: {k: v for k, v in r.items() if k != "preds"} for t, r in res.items()},
                      f, indent=1)
    return 0


def _lm_eval(argv) -> int:
    try:
        from . import harness  # noqa: F401  (registers the bitnet_edu model)
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .offline import TASK_DIR

    if argv and argv[0] == "run" and "--include_path" not in argv:
        argv = argv + ["--include_path", str(TASK_DIR)]
    sys.argv = ["lm-eval"] + list(argv)
    cli_evaluate()
    return 0


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, ImportError) as err:  # a bad path, file or option: one line
        if os.environ.get("BITNET_EDU_DEBUG") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "offline":
        return _offline(rest)
    if cmd in ("lm-eval", "lm_eval"):
        return _lm_eval(rest)
    if cmd == "build-tasks":
        from .offline import build

        for task, path in build().items():
            print(f"{task}: {path}")
        return 0
    print(f"unknown command {cmd!r}: use offline, lm-eval or build-tasks (see --help)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
