"""Writing files safely: a private temporary file in the destination folder, renamed at the end.

Both model writers (safetensors, GGUF) and training checkpoints write through these helpers:

* the temporary file is created by :func:`tempfile.mkstemp` (``O_CREAT | O_EXCL``, a random
  name, mode 0600), so a symlink planted at a predictable ``out.gguf.tmp`` is never followed;
* the finished file replaces the destination with :func:`os.replace` (atomic on one file
  system), so a reader never sees a half-written model and a failure leaves the old file;
* on any error the temporary file is removed.

:class:`StreamingTensorWriter` adds what both tensor formats share: a header written on open,
then each tensor's bytes in header order, as one array or as row blocks, checked against the
size the header promised.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "StreamingTensorWriter"]


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Context manager yielding a file object; its content replaces ``path`` only on success.

    Raises ``ValueError`` (naming the path) when the destination folder does not exist.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{path}: the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StreamingTensorWriter:
    """Base of the streaming writers: ``header`` bytes, then tensors in ``sizes`` order.

    Subclasses build ``header`` (bytes) and ``sizes`` (``{name: nbytes}`` in file order) and may
    set ``alignment`` (each tensor's data is zero-padded to a multiple of it; 1 = none).  Use as
    a context manager; :meth:`write` takes one array or an iterable of arrays whose bytes add
    up to the tensor.  The file appears under its name only when every tensor was written.
    """

    alignment = 1

    def __init__(self, path, header: bytes, sizes: dict):
        self.path = Path(path)
        self._header, self._sizes = header, dict(sizes)
        self._order, self._next, self._file, self._ctx = list(sizes), 0, None, None

    def __enter__(self):
        self._ctx = atomic_write(self.path)
        self._file = self._ctx.__enter__()
        self._file.write(self._header + b"\0" * ((-len(self._header)) % self.alignment))
        return self

    def write(self, name: str, data) -> None:
        """Write tensor ``name`` (the next one in the header): an array or iterable of arrays."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            want = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise ValueError(f"tensor {name!r} written out of order: expected {want!r}")
        done = 0
        for part in ([data] if isinstance(data, np.ndarray) else data):
            a = np.ascontiguousarray(part)
            a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # both formats: little-endian
            self._file.write(a.reshape(-1).view(np.uint8).data)
            done += a.nbytes
        if done != self._sizes[name]:
            raise ValueError(f"tensor {name!r}: got {done} bytes, its header says "
                             f"{self._sizes[name]}")
        self._file.write(b"\0" * ((-done) % self.alignment))
        self._next += 1

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self._next != len(self._order):
            exc = ValueError(f"{self.path}: tensor {self._order[self._next]!r} was never written")
            self._ctx.__exit__(type(exc), exc, None)
            raise exc
        return self._ctx.__exit__(exc_type, exc, tb)
