"""``mad`` (bitnet.cpp's I2_S idea): multiply-add on 2-bit codes, then remove the +1 offset.

Weights are stored as codes ``c = w + 1`` in {0, 1, 2}, 2 bits each, in the I2_S layout of
:func:`bitnet_edu.packing.pack_i2s`: blocks of 128 values in 32 bytes, byte ``j`` holding
values ``j, j+32, j+64, j+96`` (shifts 6, 4, 2, 0).  Because ``w = c - 1``::

    sum_k w[k] * x[k] = sum_k c[k] * x[k]  -  sum_k x[k]

so the kernel multiplies unsigned codes by activations (what ``maddubs`` does in C) and
subtracts the activation sum once per row.  Why this layout vectorizes: the 4 values of a byte
sit 32 apart, so one 32-byte load feeds four contiguous 32-wide activation slices, and a
128-value block sum fits in int16 (|sum| <= 2*128*128 = 32768 → [-32768, 32512]).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..packing import I2S_BLOCK, pack_i2s
from ._base import Kernel, pad_cols

SHIFTS = (6, 4, 2, 0)  # bit shift of the value at offsets 0, 32, 64, 96 inside a block


def decode_byte(b: int) -> list[int]:
    """The 4 ternary weights held by one I2_S byte (offsets 0, 32, 64, 96 of its block)."""
    return [((int(b) >> s) & 3) - 1 for s in SHIFTS]


def numpy_matmul(codes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy version: decode codes, ``codes @ x`` minus ``sum(x)``.

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

    Per 128-value block an int16 multiply-add over the 32 bytes, widened to int32 once.
    """
    n_out = codes.shape[0]
    nb = codes.shape[1] // 32
    for o in prange(n_out):
        row = codes[o]
        for t in range(x16.shape[0]):
            xt = x16[t]
            acc = np.int32(0)
            for b in range(nb):
                cb = row[b * 32:(b + 1) * 32]  # views, so the inner loop index starts at 0
                xb = xt[b * 128:(b + 1) * 128]
                s = np.int16(0)
                for j in range(32):
                    c = cb[j]
                    s += np.int16(
                        np.int16((c >> 6) & 3) * xb[j] + np.int16((c >> 4) & 3) * xb[j + 32]
                        + np.int16((c >> 2) & 3) * xb[j + 64] + np.int16(c & 3) * xb[j + 96])
                acc += np.int32(s)
            acc -= xsum[t]
            if scale is None:
                y[t, o] = acc
            else:
                y[t, o] = np.float32(acc) * scale[t]


def prepare_x(x: np.ndarray, multiple: int = I2S_BLOCK):
    """Widen activations to int16 once per call and pad to whole blocks; also their row sums."""
    x16 = pad_cols(x, multiple).astype(np.int16)
    return x16, x.astype(np.int32).sum(axis=1).astype(np.int32)


class MadKernel(Kernel):
    name = "mad"
    summary = "I2_S: 2-bit codes (w+1) x int8 multiply-add, minus sum(x) (2 bits per weight)"

    def _pack(self, w):
        wp = pad_cols(w, I2S_BLOCK)  # zero weights in the padding: exact
        return (pack_i2s(wp).reshape(w.shape[0], -1),)

    def _run(self, arrays, x, y, scale):
        x16, xsum = prepare_x(x)
        _mad(arrays[0], x16, xsum, y, scale)


KERNEL = MadKernel()
