"""A small safetensors reader/writer in plain NumPy (no torch, never pickle).

The format: 8 bytes little-endian header length ``N``, then ``N`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
raw little-endian tensor bytes, offsets relative to the end of the header.

bf16 has no NumPy dtype: it is the top half of a float32, so widening is a 16-bit shift.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

__all__ = ["read_safetensors", "write_safetensors", "safetensors_header", "bf16_to_float32",
           "float32_to_bf16"]

# safetensors dtype name -> (numpy dtype of the stored bytes, bytes per element)
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
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, need 8 for the header length)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(f"{path}: corrupt safetensors header length {n} at byte offset 0 "
                             f"(file has {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors JSON header (bytes 8..{8 + n}): {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_start, data_len = 8 + n, size - 8 - n
    for name, e in header.items():
        try:
            dtype, shape, (b, end) = e["dtype"], [int(s) for s in e["shape"]], e["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has a malformed header entry {e!r}") from None
        if dtype not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
        if not (0 <= b <= end) or end - b != nbytes:
            raise ValueError(f"{path}: tensor {name!r} ({dtype} {shape}) needs {nbytes} bytes but its "
                             f"data_offsets are [{b}, {end}]")
        if end > data_len:
            raise ValueError(f"{path}: truncated file: tensor {name!r} ends at byte offset "
                             f"{data_start + end} but the file has only {size} bytes")
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


def write_safetensors(path, tensors: dict[str, np.ndarray], *, bf16: set | None = None,
                      metadata: dict | None = None) -> Path:
    """Write ``{name: array}`` as a ``.safetensors`` file.

    Names in ``bf16`` are float arrays stored as bf16 (rounded to nearest even); uint16 arrays
    listed there are taken as bf16 bit patterns already.
    """
    bf16 = set(bf16 or ())
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if name in bf16:
            a, dt = (a if a.dtype == np.uint16 else float32_to_bf16(a.astype(np.float32))), "BF16"
        else:
            dt = _NAMES.get(a.dtype)
            if dt is None:
                raise ValueError(f"tensor {name!r}: dtype {a.dtype} has no safetensors equivalent")
        blob = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 8)  # align the data section to 8 bytes, as the library does
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    return path
