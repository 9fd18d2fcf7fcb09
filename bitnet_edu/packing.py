"""Packing ternary weights into bytes: three layouts a student meets in the wild.

* ``hf``    — the Hugging Face checkpoint (``BitNetForCausalLM``, offline packed): 4 weights per
  byte along the OUTPUT axis, in four contiguous quarters; uint8 ``[out/4, in]``.
* ``i2s``   — bitnet.cpp's I2_S (GGUF type 36): row-major, blocks of 128 values in 32 bytes,
  byte ``j`` of a block holds elements ``j, 32+j, 64+j, 96+j`` at bit shifts 6, 4, 2, 0.
* ``base3`` — 5 weights per byte as a base-3 number (3**5 = 243 <= 256): 1.6 bits per weight,
  close to the log2(3) = 1.58 bits a ternary value carries.

All three store the code ``w + 1`` (0, 1, 2 for -1, 0, +1).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_ternary",
    "pack_hf",
    "unpack_hf",
    "pack_i2s",
    "unpack_i2s",
    "i2s_tensor_bytes",
    "pack_base3",
    "unpack_base3",
    "bytes_per_weight",
    "I2S_BLOCK",
]

I2S_BLOCK = 128  # values per I2_S block (32 bytes)


def check_ternary(q, name: str = "q") -> np.ndarray:
    """Return ``q`` as int8 after checking that every value is -1, 0 or +1."""
    q = np.asarray(q)
    if q.size == 0:
        raise ValueError(f"{name} is empty (shape {q.shape})")
    if not (np.issubdtype(q.dtype, np.integer) or np.issubdtype(q.dtype, np.floating)):
        raise ValueError(f"{name} must be an integer array of -1/0/+1, got dtype {q.dtype}")
    bad = (q != -1) & (q != 0) & (q != 1)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must hold only -1, 0, +1; found {q[first].item()!r} at index {first} "
            f"({int(bad.sum())} bad values). Quantize first with absmean_ternary."
        )
    return q.astype(np.int8)


def _check_matrix(q, name="q") -> np.ndarray:
    q = check_ternary(q, name)
    if q.ndim != 2:
        raise ValueError(f"{name} must be a matrix [out, in], got shape {q.shape}")
    return q


# --- Hugging Face packed layout -------------------------------------------------------------

def pack_hf(q) -> np.ndarray:
    """Pack ternary ``q`` int8 ``[out, in]`` into the HF layout, uint8 ``[out/4, in]``.

    ``byte[r, c] = sum_i (q[i*R + r, c] + 1) << (2*i)`` with ``R = out/4``.
    """
    q = _check_matrix(q)
    out, k = q.shape
    if out % 4:
        raise ValueError(f"out_features={out} must be a multiple of 4 for the HF layout "
                         f"(packed shape [out/4, in]); got q of shape {q.shape}")
    codes = (q + 1).astype(np.uint8).reshape(4, out // 4, k)  # quarter i = rows i*R .. i*R+R-1
    return (codes[0] | (codes[1] << 2) | (codes[2] << 4) | (codes[3] << 6)).astype(np.uint8)


def unpack_hf(p) -> np.ndarray:
    """Inverse of :func:`pack_hf`: uint8 ``[out/4, in]`` -> int8 ``[out, in]``."""
    p = np.asarray(p)
    if p.dtype != np.uint8 or p.ndim != 2:
        raise ValueError(f"packed HF weights must be uint8 [out/4, in], got {p.dtype} {p.shape}")
    codes = np.stack([(p >> (2 * i)) & 3 for i in range(4)])  # [4, R, in]
    if (codes == 3).any():
        raise ValueError("packed HF weights contain the unused code 3: corrupt data")
    return (codes.astype(np.int8) - 1).reshape(4 * p.shape[0], p.shape[1])


# --- bitnet.cpp I2_S ------------------------------------------------------------------------

def pack_i2s(q) -> np.ndarray:
    """Pack ternary ``q`` (any shape, size a multiple of 128) into I2_S bytes, uint8 ``[size/4]``.

    Row-major order; each block of 128 values becomes 32 bytes; byte ``j`` holds values
    ``j, 32+j, 64+j, 96+j`` at shifts 6, 4, 2, 0.  The GGUF tensor adds a 32-byte trailer
    with the scale: see :func:`i2s_tensor_bytes`.
    """
    q = check_ternary(q)
    if q.size % I2S_BLOCK:
        raise ValueError(f"I2_S needs a size that is a multiple of {I2S_BLOCK}; "
                         f"q has shape {q.shape} ({q.size} values)")
    codes = (q.reshape(-1, 4, 32) + 1).astype(np.uint8)  # [blocks, quarter, j]
    return ((codes[:, 0] << 6) | (codes[:, 1] << 4) | (codes[:, 2] << 2) | codes[:, 3]).reshape(-1)


def unpack_i2s(p, shape) -> np.ndarray:
    """Inverse of :func:`pack_i2s`: uint8 bytes (with or without the 32-byte trailer) -> int8 ``shape``."""
    p = np.asarray(p)
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    n = int(np.prod(shape))
    if p.dtype != np.uint8 or p.ndim != 1:
        raise ValueError(f"I2_S data must be a flat uint8 array, got {p.dtype} {p.shape}")
    if n % I2S_BLOCK:
        raise ValueError(f"I2_S shape {shape} has {n} values, not a multiple of {I2S_BLOCK}")
    if p.size not in (n // 4, n // 4 + 32):
        raise ValueError(f"I2_S data for shape {shape} must be {n // 4} bytes "
                         f"(or {n // 4 + 32} with the scale trailer), got {p.size}")
    b = p[: n // 4].reshape(-1, 1, 32)
    codes = (b >> np.array([6, 4, 2, 0], np.uint8).reshape(1, 4, 1)) & 3  # [blocks, 4, 32]
    if (codes == 3).any():
        raise ValueError("I2_S data contains the unused code 3: corrupt data")
    return (codes.astype(np.int8) - 1).reshape(shape)


def i2s_tensor_bytes(q, scale: float) -> np.ndarray:
    """The full GGUF I2_S tensor payload: packed codes + 32-byte trailer (float32 scale first)."""
    trailer = np.zeros(32, np.uint8)
    trailer[:4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return np.concatenate([pack_i2s(q), trailer])


# --- base-3, 5 weights per byte --------------------------------------------------------------

_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)


def pack_base3(q) -> np.ndarray:
    """Pack ternary ``q`` (any shape) 5 values per byte: ``byte = sum_i (q_i + 1) * 3**i``.

    Values are taken in row-major order; the last byte is padded with zeros (code 1), so the
    result is uint8 ``[ceil(size/5)]``.  Pass the shape to :func:`unpack_base3`.
    """
    q = check_ternary(q).reshape(-1)
    pad = (-q.size) % 5
    codes = np.concatenate([q, np.zeros(pad, np.int8)]).reshape(-1, 5) + 1
    return (codes.astype(np.uint8) * _POW3).sum(axis=1, dtype=np.uint16).astype(np.uint8)


def unpack_base3(p, shape) -> np.ndarray:
    """Inverse of :func:`pack_base3`: uint8 ``[ceil(size/5)]`` -> int8 ``shape``."""
    p = np.asarray(p)
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    n = int(np.prod(shape))
    if p.dtype != np.uint8 or p.ndim != 1:
        raise ValueError(f"base-3 data must be a flat uint8 array, got {p.dtype} {p.shape}")
    if p.size != -(-n // 5):
        raise ValueError(f"base-3 data for shape {shape} must be {-(-n // 5)} bytes, got {p.size}")
    if (p > 242).any():
        raise ValueError("base-3 byte above 242 (3**5 - 1): corrupt data")
    digits = (p[:, None] // _POW3[None, :]) % 3  # [bytes, 5]
    return (digits.astype(np.int8) - 1).reshape(-1)[:n].reshape(shape)


def bytes_per_weight() -> dict:
    """Storage cost of one weight in each format the lesson compares (bytes)."""
    return {
        "float32": 4.0,
        "bf16/fp16": 2.0,
        "int8": 1.0,
        "ternary 2-bit (hf, i2s)": 0.25,
        "ternary base-3 (5 per byte)": 0.2,
        "information content log2(3)": float(np.log2(3)) / 8,
    }
