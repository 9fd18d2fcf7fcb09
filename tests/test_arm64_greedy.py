"""The shipped default model generates the same greedy tokens on aarch64 as on this machine.

The aarch64 side runs in the emulated Python that ``scripts/arm64_env.sh`` builds (qemu user
mode), named by ``$BITNET_EDU_ARM64_PYTHON`` (its Numba cache: ``$BITNET_EDU_ARM64_CACHE``);
``make test-arm64`` sets both.  Without it the test
is skipped, so the plain test suite pays nothing for emulation.  Both sides run the same script
in a fresh process; the native one is the oracle.  On aarch64 the kernels take their portable
paths (no x86 intrinsics), so equal tokens mean those paths are exact there.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ARM64_PYTHON = os.environ.get("BITNET_EDU_ARM64_PYTHON")
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not ARM64_PYTHON, reason="no emulated aarch64 Python (run `make test-arm64`)")

# One greedy run: the machine, the byte-dot ISA the kernels were compiled for, the prompt's
# logits' argmax, the 32 new ids and their text, as one JSON line.
SCRIPT = r"""
import json, platform, sys
import numpy as np
import bitnet_edu
from bitnet_edu.kernels.intrinsics import isa, target_features

head = sys.argv[1]
m = bitnet_edu.load_model(head=head)
ids = m.encode("In the beginning God created")
new = m.generate(ids, 32, temperature=0)
print(json.dumps({"machine": platform.machine(), "isa": isa(target_features()),
                  "prompt_argmax": int(np.argmax(m.logits(ids)[-1])),
                  "ids": ids, "new": [int(i) for i in new], "text": m.decode(new)}))
"""


def _run(python: list[str], head: str, cache: Path | None, timeout: float) -> dict:
    env = dict(os.environ)
    if cache is not None:
        env["BITNET_EDU_CACHE_DIR"] = str(cache)
    # the x86 oracle must not inherit an emulated-target switch from the caller
    env.pop("NUMBA_CPU_NAME", None)
    env.pop("NUMBA_CPU_FEATURES", None)
    p = subprocess.run([*python, "-c", SCRIPT, head], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"{python[0]} failed:\n{p.stderr[-4000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("head", ["float32", "int8"])
def test_greedy_tokens_match_native(head, tmp_path):
    # the emulated side keeps its compiled kernels in a cache of its own between runs
    arm_cache = Path(os.environ.get("BITNET_EDU_ARM64_CACHE") or tmp_path / "arm64")
    arm = _run([ARM64_PYTHON], head, arm_cache, timeout=1800)
    native = _run([sys.executable], head, None, timeout=600)
    assert arm["machine"] == "aarch64"
    assert arm["isa"] == "portable"  # no x86 intrinsic can be compiled for aarch64
    assert native["machine"] == platform.machine()
    assert arm["ids"] == native["ids"]  # the tokenizer (Rust, aarch64 build) agrees
    assert arm["prompt_argmax"] == native["prompt_argmax"]
    assert len(native["new"]) > 0
    assert arm["new"] == native["new"], (arm["text"], native["text"])
    assert arm["text"] == native["text"]
