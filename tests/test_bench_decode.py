"""``bench decode --isa avx2 --busy 1``: the laptop measurement anyone can reproduce here."""

from __future__ import annotations

import subprocess
import sys


def test_isa_and_busy_rows_are_printed():
    out = subprocess.run(
        [sys.executable, "-m", "bitnet_edu.bench", "decode", "--layers", "1", "--prompt", "8",
         "--new", "3", "--threads", "1", "--head", "int8", "--isa", "avx2", "--busy", "1"],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("bitnet_edu (")]
    assert len(rows) == 2 and all("avx2," in r for r in rows), out.stdout
    busy = sorted(int(r[r.index("int8)") + 1]) for r in rows)
    assert busy == [0, 1]
    assert all(float(r[-4]) > 0 and float(r[-5]) > 0 for r in rows)  # decode, prefill tok/s
