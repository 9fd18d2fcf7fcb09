"""The GGUF container: a small, defensive reader and a streaming writer (little-endian, v2/v3).

Layout of a file::

    "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x  (key: string, value_type u32, value)
    tensor_count x  (name: string, n_dims u32, dims u64[n_dims], ggml_type u32, offset u64)
    padding to `general.alignment` (default 32)
    data section: each tensor at data_start + offset (offset a multiple of the alignment)

A string is a u64 byte length then UTF-8 bytes (no NUL).  An array is an element type u32, a
count u64, then the elements.  ``dims`` are in ggml order: ``dims[0]`` moves fastest (the
``in_features`` of a weight), so the NumPy shape is ``dims`` reversed.

I2_S (type 36, bitnet.cpp) is declared in ggml with block size 1 and type size 1, but its real
byte size (ggml_nbytes in bitnet.cpp's ggml) is ``n/4 + 32``: 2-bit codes plus a 32-byte trailer
whose first 4 bytes are the float32 scale.

Every malformed input raises :class:`GGUFError` (a ``ValueError``) naming the byte offset or
the tensor; nothing is allocated from a count before checking it against the file size.

Both directions stream: the reader maps the file only to parse the header and reads tensor data
with plain reads (a memory map would keep every page it touched resident), and
:class:`GGUFWriter` writes the header from names, types and shapes, then each tensor as it
comes.  See ``docs/formats.md`` for the keys and tensors of a BitNet file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...packing import i2s_tensor_bytes, unpack_i2s
from ..atomic import StreamingTensorWriter

__all__ = [
    "GGUFError", "GGUFReader", "GGUFTensor", "GGUFWriter", "TensorData", "Value", "write_gguf",
    "GGML_F32", "GGML_F16", "GGML_BF16", "GGML_I2_S", "GGML_TYPE_NAMES", "tensor_nbytes",
    "T_UINT8", "T_INT8", "T_UINT16", "T_INT16", "T_UINT32", "T_INT32", "T_FLOAT32", "T_BOOL",
    "T_STRING", "T_ARRAY", "T_UINT64", "T_INT64", "T_FLOAT64",
]

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 used 32-bit counts; v2 and v3 share this layout
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 4  # arrays of arrays: real files use none; a cap keeps recursion bounded

# GGUF metadata value types
(T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY,
 T_UINT64, T_INT64, T_FLOAT64) = range(13)
_SCALAR = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I",
           T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q",
           T_FLOAT64: "<d"}
_NP = {T_UINT8: np.uint8, T_INT8: np.int8, T_UINT16: np.uint16, T_INT16: np.int16,
       T_UINT32: np.uint32, T_INT32: np.int32, T_FLOAT32: np.float32, T_BOOL: np.bool_,
       T_UINT64: np.uint64, T_INT64: np.int64, T_FLOAT64: np.float64}
_TYPE_NAMES = ["UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING",
               "ARRAY", "UINT64", "INT64", "FLOAT64"]

# ggml tensor types this package reads and writes
GGML_F32, GGML_F16, GGML_BF16, GGML_I2_S = 0, 1, 30, 36
# names of the others, for a readable error message only
GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
                   10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 24: "I8",
                   26: "I32", 28: "F64", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 36: "I2_S",
                   37: "TL1", 38: "TL2"}
I2S_TRAILER = 32


class GGUFError(ValueError):
    """A malformed, truncated or unsupported GGUF file."""


def tensor_nbytes(ggml_type: int, n: int) -> int:
    """Bytes of a tensor of ``n`` values in the data section (I2_S: codes + 32-byte trailer)."""
    if ggml_type == GGML_F32:
        return 4 * n
    if ggml_type in (GGML_F16, GGML_BF16):
        return 2 * n
    if ggml_type == GGML_I2_S:
        return n // 4 + I2S_TRAILER
    name = GGML_TYPE_NAMES.get(ggml_type, "unknown")
    raise GGUFError(f"ggml type {ggml_type} ({name}) is not supported; this reader handles "
                    "F32, F16, BF16 and I2_S")


def _align(x: int, a: int) -> int:
    return x + (-x) % a


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor-info record. ``shape`` is in NumPy order (ggml dims reversed)."""

    name: str
    ggml_type: int
    shape: tuple
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.ggml_type, str(self.ggml_type))


@dataclass(frozen=True)
class Value:
    """A metadata value with its explicit GGUF type (``subtype``: element type of an array)."""

    type: int
    value: object
    subtype: int | None = None


class _Cursor:
    """Reads little-endian fields from a byte buffer; any overrun raises GGUFError."""

    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"truncated file: {what} needs {n} bytes at byte offset {self.pos}, "
                            f"but the file has only {self.size} bytes")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        start = self.pos
        n = self.unpack("<Q", f"length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{what} at byte offset {start} is not valid UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0):
        """One metadata value: Python scalar, str, list, or NumPy array for numeric arrays."""
        if vtype in _SCALAR:
            v = self.unpack(_SCALAR[vtype], what)
            # float32 keeps its shortest repr: 1e-5 stays 1e-05, not 9.99999974738e-06
            return float(str(np.float32(v))) if vtype == T_FLOAT32 else v
        if vtype == T_STRING:
            return self.string(what)
        if vtype == T_ARRAY:
            return self.array(what, depth)
        raise GGUFError(f"{what}: unknown value type {vtype} at byte offset {self.pos - 4}")

    def array(self, what: str, depth: int):
        if depth >= MAX_NESTING:
            raise GGUFError(f"{what}: arrays nested deeper than {MAX_NESTING} at byte offset "
                            f"{self.pos}")
        etype = self.unpack("<I", f"element type of {what}")
        count = self.unpack("<Q", f"length of {what}")
        if etype in _NP:
            itemsize = np.dtype(_NP[etype]).itemsize
            self.need(count * itemsize, f"{what} ({count} x {_TYPE_NAMES[etype]})")
            a = np.frombuffer(self.buf, _NP[etype], count, self.pos).copy()
            self.pos += count * itemsize
            return a
        if etype not in (T_STRING, T_ARRAY):
            raise GGUFError(f"{what}: unknown array element type {etype} at byte offset "
                            f"{self.pos - 12}")
        # each string or array element takes at least 8 or 12 bytes: bound the count first
        self.need(count * (8 if etype == T_STRING else 12), f"{what} ({count} elements)")
        return [self.value(etype, f"{what}[{i}]", depth + 1) for i in range(count)]


class GGUFReader:
    """Parse a GGUF file's header; tensor data stays memory-mapped until asked for.

    Attributes:
        path, version, alignment, data_offset (absolute start of the data section),
        metadata: ``{key: value}`` (numeric arrays as NumPy arrays, string arrays as lists),
        types: ``{key: (value_type, element_type or None)}``,
        tensors: ``{name: GGUFTensor}`` in file order.
    """

    def __init__(self, path):
        self.path = Path(path)
        size = os.path.getsize(self.path)
        if size < 24:
            raise GGUFError(f"{self.path}: {size} bytes is too small for a GGUF header (24 bytes)")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        try:
            self._parse(_Cursor(memoryview(self._map), size))  # memoryview slices are cheap
        except GGUFError as e:
            raise GGUFError(f"{self.path}: {e}") from None

    def _parse(self, c: _Cursor) -> None:
        magic = bytes(self._map[:4])
        if magic != MAGIC:
            raise GGUFError(f"bad magic {magic!r} at byte offset 0 (expected b'GGUF'): not a "
                            "GGUF file")
        c.pos = 4
        self.version = c.unpack("<I", "version")
        if self.version not in VERSIONS:
            hint = " (a big-endian file?)" if self.version > 0xFFFF else ""
            raise GGUFError(f"unsupported GGUF version {self.version}{hint} at byte offset 4; "
                            f"supported: {VERSIONS}")
        n_tensors = c.unpack("<Q", "tensor count")
        n_kv = c.unpack("<Q", "metadata count")
        # smallest record: a KV is 8+4+1 bytes, a tensor info 8+4+8+4+8
        if n_kv * 13 + n_tensors * 32 > c.size - c.pos:
            raise GGUFError(f"absurd counts at byte offset 8: {n_tensors} tensors and {n_kv} "
                            f"metadata entries cannot fit in {c.size} bytes (truncated or "
                            "corrupt file)")
        self.metadata, self.types = {}, {}
        for i in range(n_kv):
            start = c.pos
            key = c.string(f"key of metadata entry {i}")
            if key in self.metadata:
                raise GGUFError(f"duplicate metadata key {key!r} at byte offset {start}")
            vtype = c.unpack("<I", f"type of {key!r}")
            sub = None
            if vtype == T_ARRAY:
                c.need(4, f"element type of {key!r}")
                (sub,) = struct.unpack_from("<I", c.buf, c.pos)
            self.metadata[key] = c.value(vtype, repr(key))
            self.types[key] = (vtype, sub)
        self.alignment = self._alignment()
        self.tensors = {}
        infos = [self._tensor_info(c, i) for i in range(n_tensors)]
        self.data_offset = _align(c.pos, self.alignment)
        self._place(infos, c.size)

    def _alignment(self) -> int:
        if "general.alignment" not in self.metadata:
            return DEFAULT_ALIGNMENT
        a = self.metadata["general.alignment"]
        if self.types["general.alignment"][0] != T_UINT32 or a == 0 or a & (a - 1):
            raise GGUFError(f"general.alignment must be a UINT32 power of two, got {a!r}")
        return int(a)

    def _tensor_info(self, c: _Cursor, i: int):
        start = c.pos
        name = c.string(f"name of tensor {i}")
        n_dims = c.unpack("<I", f"n_dims of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"tensor {name!r} at byte offset {start}: n_dims={n_dims}, "
                            f"expected 1..{MAX_DIMS}")
        dims = [c.unpack("<Q", f"dim {d} of tensor {name!r}") for d in range(n_dims)]
        ggml_type = c.unpack("<I", f"type of tensor {name!r}")
        offset = c.unpack("<Q", f"data offset of tensor {name!r}")
        return start, name, dims, ggml_type, offset

    def _place(self, infos, size: int) -> None:
        """Check each tensor's type, shape and data range, then record it."""
        for start, name, dims, ggml_type, offset in infos:
            where = f"tensor {name!r} (info at byte offset {start})"
            if name in self.tensors:
                raise GGUFError(f"duplicate {where}")
            if min(dims) < 1:
                raise GGUFError(f"{where}: dimension of size 0 in {dims}")
            n = 1
            for d in dims:
                n *= d
            if n > size * 4:  # even 2-bit codes need n/4 bytes: this cannot be in the file
                raise GGUFError(f"{where}: dims {dims} hold {n} values, more than the file can "
                                "store")
            try:
                nbytes = tensor_nbytes(ggml_type, n)
            except GGUFError as e:
                raise GGUFError(f"{where}: {e}") from None
            if ggml_type == GGML_I2_S and n % 128:
                raise GGUFError(f"{where}: I2_S needs a multiple of 128 values, dims {dims} "
                                f"have {n}")
            if offset % self.alignment:
                raise GGUFError(f"{where}: data offset {offset} is not a multiple of the "
                                f"alignment {self.alignment}")
            begin = self.data_offset + offset
            if begin + nbytes > size:
                raise GGUFError(f"{where}: data [{begin}, {begin + nbytes}) runs past the end "
                                f"of the file ({size} bytes); truncated?")
            self.tensors[name] = GGUFTensor(name, ggml_type, tuple(reversed(dims)), begin, nbytes)
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
            if begin < end:
                raise GGUFError(f"tensors {a!r} and {b!r} overlap at byte offset {begin}")

    # --- tensor data ------------------------------------------------------------------------

    def _get(self, name: str) -> GGUFTensor:
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        return self.tensors[name]

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the memory map (no copy)."""
        t = self._get(name)
        return self._map[t.offset:t.offset + t.nbytes]

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Bytes ``start:stop`` of the tensor's data as a new uint8 array (a plain file read:
        nothing stays resident once the caller drops it)."""
        t = self._get(name)
        stop = t.nbytes if stop is None else stop
        if not 0 <= start <= stop <= t.nbytes:
            raise ValueError(f"bytes {start}:{stop} are outside tensor {name!r} ({t.nbytes} bytes)")
        out = np.empty(stop - start, np.uint8)
        with open(self.path, "rb") as f:
            f.seek(t.offset + start)
            if f.readinto(out) != out.size:
                raise GGUFError(f"{self.path}: tensor {name!r} is cut short (file changed?)")
        return out

    def float32(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """An F32/F16/BF16 tensor (or rows ``start:stop`` of its first NumPy axis) as a new
        float32 array."""
        t = self._get(name)
        widths = {GGML_F32: 4, GGML_F16: 2, GGML_BF16: 2}
        if t.ggml_type not in widths:
            raise GGUFError(f"{self.path}: tensor {name!r} is {t.type_name}, not a float type")
        shape = t.shape
        if rows is None:
            raw = self.read(name)
        else:
            a, b = rows
            row = widths[t.ggml_type] * int(np.prod(shape[1:], dtype=np.int64))
            raw, shape = self.read(name, a * row, b * row), (b - a, *shape[1:])
        if t.ggml_type == GGML_F32:
            return raw.view(np.float32).reshape(shape)
        if t.ggml_type == GGML_F16:
            return raw.view(np.float16).reshape(shape).astype(np.float32)
        # bf16 is the top half of a float32
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)

    def i2s(self, name: str) -> tuple[np.ndarray, float]:
        """An I2_S tensor as ``(q int8 [out, in] in {-1, 0, +1}, scale float)``."""
        t = self._get(name)
        if t.ggml_type != GGML_I2_S:
            raise GGUFError(f"{self.path}: tensor {name!r} is {t.type_name}, not I2_S")
        raw = self.read(name)
        try:
            q = unpack_i2s(raw, t.shape)
        except ValueError as e:
            raise GGUFError(f"{self.path}: tensor {name!r} at byte offset {t.offset}: "
                            f"{e}") from None
        scale = float(raw[t.nbytes - I2S_TRAILER:t.nbytes - I2S_TRAILER + 4].view(np.float32)[0])
        if not np.isfinite(scale):
            raise GGUFError(f"{self.path}: tensor {name!r}: scale {scale} is not finite")
        return q, scale


# --- writer ---------------------------------------------------------------------------------

@dataclass
class TensorData:
    """A tensor to write: ``shape`` in NumPy order, ``data`` the exact bytes (any dtype)."""

    ggml_type: int
    shape: tuple
    data: np.ndarray

    @classmethod
    def from_array(cls, a: np.ndarray) -> "TensorData":
        """float32 -> F32, float16 -> F16."""
        a = np.ascontiguousarray(a)
        types = {np.dtype(np.float32): GGML_F32, np.dtype(np.float16): GGML_F16}
        if a.dtype not in types:
            raise ValueError(f"cannot infer a ggml type for dtype {a.dtype}: pass TensorData")
        return cls(types[a.dtype], a.shape, a)

    @classmethod
    def i2s(cls, q: np.ndarray, scale: float) -> "TensorData":
        """Ternary ``q`` [out, in] and its scale -> an I2_S tensor (codes + scale trailer)."""
        return cls(GGML_I2_S, tuple(np.shape(q)), i2s_tensor_bytes(q, scale))


def _typed(key: str, v) -> Value:
    """Infer a GGUF type for a plain Python/NumPy value (ints become UINT32 or INT32)."""
    if isinstance(v, Value):
        return v
    if isinstance(v, (bool, np.bool_)):
        return Value(T_BOOL, bool(v))
    if isinstance(v, (int, np.integer)):
        if 0 <= v < 2**32:
            return Value(T_UINT32, int(v))
        return Value(T_INT32 if -(2**31) <= v < 0 else T_INT64 if v < 0 else T_UINT64, int(v))
    if isinstance(v, (float, np.floating)):
        return Value(T_FLOAT32, float(v))
    if isinstance(v, str):
        return Value(T_STRING, v)
    if isinstance(v, np.ndarray):
        inv = {np.dtype(t): k for k, t in _NP.items()}
        if v.ndim != 1 or v.dtype not in inv:
            raise ValueError(f"metadata {key!r}: cannot store array of {v.dtype} {v.shape}")
        return Value(T_ARRAY, v, inv[v.dtype])
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, str) for x in v):
            return Value(T_ARRAY, list(v), T_STRING)
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
            return Value(T_ARRAY, np.asarray(v, np.int32), T_INT32)
    raise ValueError(f"metadata {key!r}: cannot infer a GGUF type for {type(v).__name__}; "
                     "use Value")


def _pack_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _pack_value(vtype: int, v, subtype=None, key="") -> bytes:
    if vtype in _SCALAR:
        return struct.pack(_SCALAR[vtype], v)
    if vtype == T_STRING:
        return _pack_string(v)
    if vtype == T_ARRAY:
        head = struct.pack("<IQ", subtype, len(v))
        if subtype in _NP:
            return head + np.asarray(v, np.dtype(_NP[subtype]).newbyteorder("<")).tobytes()
        if subtype == T_STRING:
            return head + b"".join(_pack_string(s) for s in v)
        if subtype == T_ARRAY:  # each element is an array without its own type tag
            items = [_typed(key, x) for x in v]
            if any(x.type != T_ARRAY for x in items):
                raise ValueError(f"metadata {key!r}: an array of arrays holds a non-array")
            return head + b"".join(_pack_value(T_ARRAY, x.value, x.subtype, key) for x in items)
    raise ValueError(f"metadata {key!r}: cannot write value type {vtype} (element type {subtype})")


class GGUFWriter(StreamingTensorWriter):
    """Write a GGUF v3 file whose tensor data arrives one tensor at a time.

    ``tensors``: ``{name: (ggml_type, shape)}`` (NumPy order) in file order.  Offsets follow
    from the sizes (:func:`tensor_nbytes`), so the whole header is written on open; then
    :meth:`write` each tensor in that order, as one array or an iterable of arrays whose bytes
    add up to the tensor.  Use as a context manager: the data goes to a private temporary file
    in the same folder (:mod:`bitnet_edu.formats.atomic`), renamed when every tensor was
    written, removed on any error.
    """

    def __init__(self, path, metadata: dict, tensors: dict, *, alignment: int = DEFAULT_ALIGNMENT):
        meta = {k: _typed(k, v) for k, v in metadata.items()}
        if alignment != DEFAULT_ALIGNMENT:
            meta["general.alignment"] = Value(T_UINT32, alignment)
        head = [MAGIC, struct.pack("<IQQ", 3, len(tensors), len(meta))]
        for key, v in meta.items():
            head += [_pack_string(key), struct.pack("<I", v.type),
                     _pack_value(v.type, v.value, v.subtype, key)]
        sizes, offset = {}, 0
        for name, (ggml_type, shape) in tensors.items():
            n = 1
            for d in shape:
                n *= int(d)
            sizes[name] = tensor_nbytes(ggml_type, n)
            dims = [int(d) for d in reversed(tuple(shape))]
            head += [_pack_string(name),
                     struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)]
            offset = _align(offset + sizes[name], alignment)
        self.alignment = alignment
        super().__init__(path, b"".join(head), sizes)


def write_gguf(path, metadata: dict, tensors: dict, *, alignment: int = DEFAULT_ALIGNMENT,
               progress=None) -> Path:
    """Write a GGUF v3 file.

    Args:
        metadata: ``{key: value}``; values are :class:`Value` or plain Python/NumPy values whose
            type is inferred (int -> UINT32, float -> FLOAT32, list[str] -> string array, ...).
        tensors: ``{name: TensorData or float32/float16 ndarray}`` in the order to write them.
        alignment: data alignment; written as ``general.alignment`` when not 32.
        progress: optional callable ``(n_done, n_total, name)`` called after each tensor.

    The file is written to a private temporary file and renamed, so a failure leaves no partial
    file (and a symlink in the folder is never followed).
    :class:`GGUFWriter` writes tensors that are not all in memory at once.
    """
    path = Path(path)
    tensors = {k: v if isinstance(v, TensorData) else TensorData.from_array(v)
               for k, v in tensors.items()}
    for name, t in tensors.items():
        nbytes = tensor_nbytes(t.ggml_type, int(np.prod(t.shape)))
        if t.data.nbytes != nbytes:
            raise ValueError(f"tensor {name!r}: {GGML_TYPE_NAMES[t.ggml_type]} of shape {t.shape} "
                             f"needs {nbytes} bytes, got {t.data.nbytes}")
    specs = {name: (t.ggml_type, t.shape) for name, t in tensors.items()}
    with GGUFWriter(path, metadata, specs, alignment=alignment) as w:
        for k, (name, t) in enumerate(tensors.items()):
            w.write(name, t.data)
            if progress:
                progress(k + 1, len(tensors), name)
    return path
