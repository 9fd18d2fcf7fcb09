"""The Numba cache is keyed on the package's compiled sources: an edited helper is recompiled."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba

import bitnet_edu
from bitnet_edu import numba_cache

PKG = Path(bitnet_edu.__file__).resolve().parent


def _copy_package(tmp_path) -> Path:
    dst = tmp_path / "src" / "bitnet_edu"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("__pycache__", "default_model"))
    return dst


def test_kernels_use_the_keyed_cache_dir():
    import bitnet_edu.kernels  # noqa: F401  (configures on import)
    assert numba.config.CACHE_DIR == str(numba_cache.cache_dir())
    assert bitnet_edu.__version__ in Path(numba.config.CACHE_DIR).name


def test_hash_follows_compiled_sources_only(tmp_path):
    root = _copy_package(tmp_path)
    before = numba_cache.source_hash(root)
    assert numba_cache.source_hash(root) == before  # deterministic
    (root / "cli.py").write_text((root / "cli.py").read_text() + "\n# a comment\n")
    assert numba_cache.source_hash(root) == before, "a file without compiled code changed the key"
    helper = root / "kernels" / "intrinsics.py"
    helper.write_text(helper.read_text() + "\n# edited helper\n")
    assert numba_cache.source_hash(root) != before, "an edited intrinsic helper kept the old key"


def test_base_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BITNET_EDU_CACHE_DIR", str(tmp_path / "a"))
    assert numba_cache.cache_dir().parent == tmp_path / "a"
    monkeypatch.delenv("BITNET_EDU_CACHE_DIR")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "b"))
    assert numba_cache.cache_dir().parent == tmp_path / "b"


_RUN = """
import numpy as np, numba
from bitnet_edu.kernels import head
x = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
t = (np.arange(3 * 256) % 255 - 127).astype(np.int8).reshape(3, 256)
print(head.head_logits(x, t, np.ones(3, np.float32)).round(3).tolist())
print(numba.config.CACHE_DIR)
import bitnet_edu; print(bitnet_edu.__file__)
"""


def _run(src: Path, cache: Path):
    env = {**os.environ, "PYTHONPATH": str(src), "BITNET_EDU_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", _RUN], env=env, capture_output=True, text=True,
                         cwd=src,  # not the checkout: "-c" puts the working directory first
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    logits, cache_dir, used = out.stdout.strip().splitlines()[-3:]
    assert Path(used).is_relative_to(src), f"ran {used}, not the copy in {src}"
    return logits, Path(cache_dir)


def _cached_files(d: Path) -> set:
    return {p.relative_to(d) for p in d.rglob("*.nbi")} if d.exists() else set()


def test_an_edited_helper_is_recompiled(tmp_path):
    """Run the int8 head from a copy of the package, edit the intrinsic helper it inlines, run
    again: the second run compiles into a fresh directory instead of loading the old code."""
    src = _copy_package(tmp_path)
    cache = tmp_path / "cache"
    logits1, dir1 = _run(src.parent, cache)
    assert _cached_files(dir1), "the first run cached nothing"
    _, again = _run(src.parent, cache)
    assert again == dir1  # unchanged sources: the same cache is reused
    helper = src / "kernels" / "intrinsics.py"
    helper.write_text(helper.read_text() + "\n# an edit that changes no behaviour\n")
    logits2, dir2 = _run(src.parent, cache)
    assert dir2 != dir1 and dir2.parent == dir1.parent
    assert _cached_files(dir2), "the edited helper's users were not compiled afresh"
    assert logits2 == logits1
