"""``mad`` (bitnet.cpp's I2_S idea): multiply-add on 2-bit codes, then remove the +1 offset.

Weights are stored as codes ``c = w + 1`` in {0, 1, 2}, 2 bits each, in the I2_S layout of
:func:`bitnet_edu.packing.pack_i2s`: blocks of 128 values in 32 bytes, byte ``j`` holding
values ``j, j+32, j+64, j+96`` (shifts 6, 4, 2, 0).  Because ``w = c - 1``::

    sum_k w[k] * x[k] = sum_k c[k] * x[k]  -  sum_k x[k]

so the kernel multiplies unsigned codes by activations (what ``maddubs`` does in C) and
subtracts the activation sum once per row.  Why this layout vectorizes: the 4 values of a byte
sit 32 apart, so one 32-byte load feeds four contiguous 32-wide activation slices.

Two paths, chosen by the number of tokens T:

* GEMV (decode, T < ``GEMM_MIN_T``): memory-bound, so read the 2-bit codes once and do the
  multiply-add in Numba (int16 products summed in int32: LLVM emits ``vpmaddwd``).
* GEMM (prefill, T >= ``GEMM_MIN_T``): compute-bound, so decode a tile of rows to float32 codes
  once and let the BLAS ``sgemm`` reuse it for all T tokens.  Exact: every partial sum is an
  integer below 2**24 in magnitude (checked), which float32 represents exactly.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..packing import I2S_BLOCK
from ._base import I2SKernel, pad_cols

SHIFTS = (6, 4, 2, 0)  # bit shift of the value at offsets 0, 32, 64, 96 inside a block
GEMM_MIN_T = 16         # from this many tokens on, decode + sgemm beats T GEMV passes
TILE_ROWS = 256         # rows decoded to float32 per sgemm call (2.6 MB at in=2560: stays in L2/L3)


def decode_byte(b: int) -> list[int]:
    """The 4 ternary weights held by one I2_S byte (offsets 0, 32, 64, 96 of its block)."""
    return [((int(b) >> s) & 3) - 1 for s in SHIFTS]


def numpy_matmul(codes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy version: decode codes, ``x @ codes.T`` minus ``sum(x)``.

    ``codes`` uint8 ``[out, kp/4]`` (I2_S rows, kp a multiple of 128), ``x`` int8 ``[T, kp]``
    -> int32 ``[T, out]``.
    """
    out = codes.shape[0]
    b = codes.reshape(out, -1, 1, 32)
    c = (b >> np.array(SHIFTS, np.uint8).reshape(1, 1, 4, 1)) & 3  # [out, blocks, 4, 32]
    c = c.reshape(out, -1).astype(np.int32)
    x32 = x.astype(np.int32)
    return (x32 @ c.T - x32.sum(axis=1, keepdims=True)).astype(np.int32)


@njit(parallel=True, cache=True)
def _mad(codes, x16, xsum, y, scale):
    """codes uint8 [out, nb*32], x16 int16 [T, nb*128], xsum int32 [T] -> y [T, out].

    Explicit int32 casts keep Numba from widening to int64, so LLVM sees a 16x16->32 bit
    multiply-add (``vpmaddwd``); views make every inner loop start at 0 (no wrap-around checks).
    """
    n_out = codes.shape[0]
    nb = codes.shape[1] // 32
    for o in prange(n_out):
        row = codes[o]
        for t in range(x16.shape[0]):
            xt = x16[t]
            acc = np.int32(0)
            for b in range(nb):
                cb = row[b * 32:(b + 1) * 32]
                xb = xt[b * 128:(b + 1) * 128]
                for j in range(32):
                    c = cb[j]
                    acc = np.int32(acc + np.int32((c >> 6) & 3) * np.int32(xb[j])
                                   + np.int32((c >> 4) & 3) * np.int32(xb[j + 32])
                                   + np.int32((c >> 2) & 3) * np.int32(xb[j + 64])
                                   + np.int32(c & 3) * np.int32(xb[j + 96]))
            acc -= xsum[t]
            if scale is None:
                y[t, o] = acc
            else:
                y[t, o] = np.float32(acc) * scale[t]


@njit(cache=True)
def decode_codes_f32(codes, out):
    """codes uint8 [rows, nb*32] (I2_S) -> out float32 [rows, nb*128] holding c = w + 1.

    Serial on purpose: the sgemm that follows runs on OpenBLAS's threads, and Numba's OpenMP
    workers spinning next to them on a 2-core machine made the GEMM 10x slower.
    """
    nb = codes.shape[1] // 32
    for r in range(codes.shape[0]):
        row = codes[r]
        dst = out[r]
        for b in range(nb):
            cb = row[b * 32:(b + 1) * 32]
            ob = dst[b * 128:(b + 1) * 128]
            for j in range(32):
                c = cb[j]
                ob[j] = np.float32((c >> 6) & 3)
                ob[j + 32] = np.float32((c >> 4) & 3)
                ob[j + 64] = np.float32((c >> 2) & 3)
                ob[j + 96] = np.float32(c & 3)


def gemm_sgemm(codes, x, y, scale, tile_rows: int = TILE_ROWS):
    """Prefill path: float32 tiles of codes times float32 activations through BLAS sgemm."""
    kp = codes.shape[1] * 4
    xf = pad_cols(x, I2S_BLOCK).astype(np.float32)
    xsum = xf.sum(axis=1, keepdims=True)
    tile = np.empty((tile_rows, kp), np.float32)
    for o0 in range(0, codes.shape[0], tile_rows):
        o1 = min(o0 + tile_rows, codes.shape[0])
        t = tile[: o1 - o0]
        decode_codes_f32(codes[o0:o1], t)
        part = xf @ t.T - xsum  # exact integers in float32
        if scale is None:
            y[:, o0:o1] = part
        else:
            y[:, o0:o1] = part * scale[:, None]


def prepare_x(x: np.ndarray, multiple: int = I2S_BLOCK):
    """Widen activations to int16 once per call and pad to whole blocks; also their row sums."""
    x16 = pad_cols(x, multiple).astype(np.int16)
    return x16, x.astype(np.int32).sum(axis=1).astype(np.int32)


class MadKernel(I2SKernel):
    name = "mad"
    summary = "I2_S: 2-bit codes (w+1) x int8 multiply-add, minus sum(x) (2 bits per weight)"
    fast_gemm = True
    block = I2S_BLOCK  # rows padded to whole I2_S blocks

    def _run(self, arrays, x, y, scale):
        kp = arrays[0].shape[1] * 4
        if x.shape[0] >= GEMM_MIN_T and 256 * kp < 2**24:  # float32 partial sums stay exact
            gemm_sgemm(arrays[0], x, y, scale)
        else:
            x16, xsum = prepare_x(x)
            _mad(arrays[0], x16, xsum, y, scale)


KERNEL = MadKernel()
