"""A small safetensors reader/writer in plain NumPy (no torch, never pickle).

The format: 8 bytes little-endian header length ``N``, then ``N`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
raw little-endian tensor bytes, offsets relative to the end of the header.

bf16 has no NumPy dtype: it is the top half of a float32, so widening is a 16-bit shift.

Two ways to read: :func:`read_safetensors` maps the file (cheap views, but every page touched
stays in the process's resident memory), :class:`SafetensorsFile` reads one tensor (or a range
of rows) at a time into fresh arrays, for streaming loads that should not hold the file.
Writing streams too: :class:`SafetensorsWriter` writes the header from names, dtypes and
shapes, then each tensor's bytes as they come.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from .atomic import StreamingTensorWriter

__all__ = ["read_safetensors", "write_safetensors", "safetensors_header", "bf16_to_float32",
           "float32_to_bf16", "SafetensorsFile", "SafetensorsWriter"]

# safetensors dtype name -> numpy dtype of the stored bytes
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
          np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
          np.dtype(np.int8): "I8", np.dtype(np.uint64): "U64", np.dtype(np.uint32): "U32",
          np.dtype(np.uint16): "U16", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
_MAX_HEADER = 100 * 2**20  # the spec's limit; a bigger value means a corrupt file


def bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns (any shape) -> float32 of the same shape (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bf16 bit patterns, round to nearest even (as torch does)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = u + 0x7FFF + ((u >> 16) & 1)
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(x)
    out[nan] = 0x7FC0
    return out


def safetensors_header(path) -> tuple[dict, int]:
    """Parse and validate the header: returns ``(entries, data_start)`` (metadata dropped)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, need 8 for the "
                             "header length)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(f"{path}: corrupt safetensors header length {n} at byte offset 0 "
                             f"(file has {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}: corrupt safetensors JSON header (bytes 8..{8 + n}): "
                             f"{e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_start, data_len = 8 + n, size - 8 - n

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for name, e in header.items():
        try:
            dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: tensor {name!r} has a malformed header entry "
                             f"(needs dtype, shape and data_offsets)") from None
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(whole(s) for s in shape):
            raise ValueError(f"{path}: tensor {name!r} has a malformed shape {shape!r} "
                             "(a list of whole numbers >= 0)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(whole, offsets))):
            raise ValueError(f"{path}: tensor {name!r} has malformed data_offsets {offsets!r} "
                             "(two whole numbers [begin, end])")
        b, end = offsets
        nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize  # exact: no int64 wrap
        if not b <= end or end - b != nbytes:
            raise ValueError(f"{path}: tensor {name!r} ({dtype} {shape}) needs {nbytes} bytes "
                             f"but its data_offsets are [{b}, {end}]")
        if end > data_len:
            raise ValueError(f"{path}: truncated file: tensor {name!r} ends at byte offset "
                             f"{data_start + end} but the file has only {size} bytes")
    # two tensors sharing bytes would make one silently the other's data
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], k) for k, e in header.items()
                   if e["data_offsets"][1] > e["data_offsets"][0])
    for (_, e0, k0), (b1, _, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors {k0!r} and {k1!r} overlap: {k1!r} starts at data "
                             f"byte {b1}, before {k0!r} ends at {e0}")
    return header, data_start


def read_safetensors(path, *, names=None, raw_bf16: bool = False) -> dict[str, np.ndarray]:
    """Read tensors from a ``.safetensors`` file into NumPy arrays.

    Args:
        path: the file.
        names: optional iterable of tensor names to read (default: all).
        raw_bf16: keep bf16 tensors as their uint16 bit patterns instead of widening to float32.

    Returns:
        ``{name: array}``; bf16 becomes float32 (exactly), other dtypes keep their NumPy dtype.
        Arrays are read-only views of a memory map where possible (no copy until used).
    """
    header, start = safetensors_header(path)
    if names is not None:
        missing = [n for n in names if n not in header]
        if missing:
            raise ValueError(f"{path}: missing tensor(s) {missing[:5]}")
        header = {n: header[n] for n in names}
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        arr = mm[start + b: start + end].view(_DTYPES[e["dtype"]]).reshape(e["shape"])
        if e["dtype"] == "BF16" and not raw_bf16:
            arr = bf16_to_float32(arr)
        out[name] = arr
    return out


class SafetensorsFile:
    """One ``.safetensors`` file read tensor by tensor with plain reads (no memory map).

    ``header``: ``{name: {"dtype", "shape", "data_offsets"}}`` (validated on open).  Each
    :meth:`read` returns a new array, so nothing of the file stays resident after the caller
    drops it (a memory map would keep every page it touched).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.header, self._start = safetensors_header(self.path)

    def dtype(self, name: str) -> str:
        return self.header[name]["dtype"]

    def shape(self, name: str) -> tuple:
        return tuple(int(s) for s in self.header[name]["shape"])

    def read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Tensor ``name`` (or rows ``start:stop`` of its first axis) in its stored dtype; bf16
        stays uint16 bit patterns (:func:`bf16_to_float32` widens them)."""
        e, shape = self.header[name], self.shape(name)
        dt = np.dtype(_DTYPES[e["dtype"]])
        begin, end = e["data_offsets"]
        if rows is not None:
            row = int(np.prod(shape[1:], dtype=np.int64)) * dt.itemsize
            a, b = rows
            begin, end, shape = begin + a * row, begin + b * row, (b - a, *shape[1:])
        out = np.empty(end - begin, np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self._start + begin)
            if f.readinto(out) != out.size:
                raise ValueError(f"{self.path}: tensor {name!r} is cut short (file changed?)")
        return out.view(dt).reshape(shape)


class SafetensorsWriter(StreamingTensorWriter):
    """Write a ``.safetensors`` file whose tensors arrive one at a time.

    ``specs``: ``{name: (dtype name, shape)}`` in file order, e.g. ``("U8", (640, 2560))``.
    The header is written on open; then :meth:`write` each tensor in that order, as one array
    or an iterable of arrays (row blocks) whose bytes add up to the tensor.  Use as a context
    manager: the file appears under its name only when every tensor was written.
    """

    def __init__(self, path, specs: dict, metadata: dict | None = None):
        sizes, header, offset = {}, {}, 0
        for name, (dtype, shape) in specs.items():
            if dtype not in _DTYPES:
                raise ValueError(f"tensor {name!r}: unknown safetensors dtype {dtype!r}")
            n = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
            header[name] = {"dtype": dtype, "shape": [int(s) for s in shape],
                            "data_offsets": [offset, offset + n]}
            sizes[name] = n
            offset += n
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * ((-len(text)) % 8)  # 8-byte aligned data, as the library does
        super().__init__(path, struct.pack("<Q", len(text)) + text, sizes)


def write_safetensors(path, tensors: dict[str, np.ndarray], *, bf16: set | None = None,
                      metadata: dict | None = None) -> Path:
    """Write ``{name: array}`` as a ``.safetensors`` file (names in sorted order).

    Names in ``bf16`` are float arrays stored as bf16 (rounded to nearest even); uint16 arrays
    listed there are taken as bf16 bit patterns already.
    """
    bf16 = set(bf16 or ())
    arrays, specs = {}, {}
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if name in bf16:
            a, dt = (a if a.dtype == np.uint16 else float32_to_bf16(a.astype(np.float32))), "BF16"
        else:
            dt = _NAMES.get(a.dtype)
            if dt is None:
                raise ValueError(f"tensor {name!r}: dtype {a.dtype} has no safetensors equivalent")
        arrays[name], specs[name] = a, (dt, a.shape)
    path = Path(path)
    with SafetensorsWriter(path, specs, metadata) as w:
        for name, a in arrays.items():
            w.write(name, a)
    return path
