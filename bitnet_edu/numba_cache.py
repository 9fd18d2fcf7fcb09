"""Where Numba keeps the compiled kernels: one directory per package version and source hash.

Numba's on-disk cache checks only the timestamp and size of the file that *defines* a cached
function.  Our kernels inline code from other files (the LLVM intrinsics of
``kernels/intrinsics.py`` are compiled into ``vnni.py``'s and ``head.py``'s functions), so an
edit of a helper, or an upgrade of the package that changes only a helper, would keep running
the old machine code.  Keying the cache directory on a hash of every source file that holds
Numba code makes any such change start from an empty cache.  (The CPU name and features are
already part of Numba's own key, so one directory serves several targets.)

The base directory: ``$BITNET_EDU_CACHE_DIR``, else ``$NUMBA_CACHE_DIR``, else the user's cache
folder (``$XDG_CACHE_HOME`` or ``~/.cache``, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%``
on Windows) + ``bitnet_edu/numba``.  :func:`configure` must run before the first
``@njit(cache=True)`` function is defined; ``bitnet_edu.kernels`` calls it on import.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

__all__ = ["configure", "cache_dir", "source_hash"]

PACKAGE = Path(__file__).resolve().parent


def source_hash(root: Path = PACKAGE) -> str:
    """sha256 (16 hex digits) over the path and bytes of every ``.py`` file under ``root`` that
    defines compiled code (``njit`` functions or ``intrinsic`` helpers): what ends up in the
    cached machine code.  Files that only call Numba (threads) do not count."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        data = path.read_bytes()
        if b"njit" in data or b"intrinsic" in data:
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:16]


def _user_cache_base() -> Path:
    if os.environ.get("BITNET_EDU_CACHE_DIR"):
        return Path(os.environ["BITNET_EDU_CACHE_DIR"])
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bitnet_edu" / "numba"


def cache_dir(root: Path = PACKAGE) -> Path:
    """The cache directory for this version and these sources (not created)."""
    from . import __version__
    return _user_cache_base() / f"{__version__}-{source_hash(root)}"


def configure() -> Path:
    """Point Numba's cache at :func:`cache_dir` (once per process); returns the directory."""
    import numba

    d = cache_dir()
    if numba.config.CACHE_DIR != str(d):
        numba.config.CACHE_DIR = str(d)
    return d
