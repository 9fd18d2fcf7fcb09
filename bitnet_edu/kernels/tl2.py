"""``tl2``: a lookup table over TRIPLES of weights, folded by symmetry (bitnet.cpp's x86 TL2).

Three ternary weights have 27 patterns.  Number them ``g = 9*(a+1) + 3*(b+1) + (c+1)``; the
negated pattern is ``26 - g`` and 13 is (0, 0, 0).  So every pattern is ``±`` one of the 14
patterns 0..13: store a 4-bit index and a separate sign bit, 5 bits per 3 weights
(≈ 1.67 bits per weight), and build a 14-entry table per triple of activations::

    g > 13  ->  sign = 1, index = 26 - g        else  sign = 0, index = g
    table[p, i] = a_i*x[3p] + b_i*x[3p+1] + c_i*x[3p+2]
    y[o]        = sum_p (-1)**sign[o, p] * table[p, index[o, p]]

Layout: indices uint8 ``[out, n3/2]`` (triple ``2j`` in the low nibble of byte ``j``) and sign
bits uint8 ``[out, n3/8]`` (bit ``i`` of byte ``s`` is triple ``8s+i``).  ``in`` is padded with
zero weights to a multiple of 24 (bitnet.cpp instead runs the K % 3 remainder through TL1 pairs;
zero padding is exact and costs at most 23 columns).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._base import Kernel, pad_cols

#: the 14 canonical triples: TRIPLES[i] = (a, b, c) with 9*(a+1) + 3*(b+1) + (c+1) == i
TRIPLES = [(i // 9 - 1, i // 3 % 3 - 1, i % 3 - 1) for i in range(14)]
ENTRIES = 16  # table row stride (14 used)
PAD = 24      # in is padded to a multiple of 24: whole bytes of indices (2) and of signs (8)


def fold(w: np.ndarray):
    """Ternary int8 ``[out, k]`` (k % 3 == 0) -> (index uint8 ``[out, k/3]`` in 0..13,
    sign uint8 0/1)."""
    g = 9 * (w[:, 0::3] + 1) + 3 * (w[:, 1::3] + 1) + (w[:, 2::3] + 1)
    sign = (g > 13).astype(np.uint8)
    return np.where(sign == 1, 26 - g, g).astype(np.uint8), sign


def build_table(x: np.ndarray) -> np.ndarray:
    """Activations int8 ``[T, k]`` (k % 3 == 0) -> int16 table ``[T, k/3, 16]`` (14 used)."""
    xs = [x[:, i::3].astype(np.int16) for i in range(3)]
    tab = np.zeros(xs[0].shape + (ENTRIES,), np.int16)
    for i, (a, b, c) in enumerate(TRIPLES):
        tab[:, :, i] = a * xs[0] + b * xs[1] + c * xs[2]
    return tab


def numpy_matmul(index: np.ndarray, signs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy version on the packed layout; ``x`` int8 ``[T, kp]`` -> int32 ``[T, out]``."""
    n3 = index.shape[1] * 2
    idx = np.empty((index.shape[0], n3), np.int64)
    idx[:, 0::2] = index & 15
    idx[:, 1::2] = index >> 4
    sign = np.unpackbits(signs, axis=1, bitorder="little")[:, :n3].astype(np.int32)
    vals = build_table(x).astype(np.int32)[:, np.arange(n3)[None, :], idx]  # [T, out, n3]
    return (vals * (1 - 2 * sign)).sum(axis=2).astype(np.int32)


@njit(parallel=True, cache=True)
def _tl2(index, signs, tab, y, scale):
    """index uint8 [out, n3/2], signs uint8 [out, n3/8], tab int16 [T, n3*16] -> y [T, out]."""
    n_out = index.shape[0]
    n3 = index.shape[1] * 2
    for o in prange(n_out):
        irow = index[o]
        srow = signs[o]
        for t in range(tab.shape[0]):
            tt = tab[t]
            acc = np.int32(0)
            for p in range(n3):
                i = (irow[p >> 1] >> ((p & 1) * 4)) & 15
                s = np.int32((srow[p >> 3] >> (p & 7)) & 1)
                v = np.int32(tt[p * 16 + i])
                acc = np.int32(acc + ((v ^ -s) + s))  # branch-free: v if s == 0 else -v
            if scale is None:
                y[t, o] = acc
            else:
                y[t, o] = np.float32(acc) * scale[t]


class TL2Kernel(Kernel):
    name = "tl2"
    summary = "triples of weights -> 14-entry table + sign bit (1.67 bits per weight)"

    @classmethod
    def expected_arrays(cls, out, k):
        """Indices uint8 ``[out, kp/6]`` and sign bits uint8 ``[out, kp/24]``, ``kp`` = ``k``
        rounded up to :data:`PAD`."""
        n = -(-k // PAD)
        return (((out, 4 * n), np.uint8), ((out, n), np.uint8))

    def _pack(self, w):
        idx, sign = fold(pad_cols(w, PAD))
        return idx[:, 0::2] | (idx[:, 1::2] << 4), np.packbits(sign, axis=1, bitorder="little")

    def _run(self, arrays, x, y, scale):
        tab = build_table(pad_cols(x, PAD)).reshape(x.shape[0], -1)
        _tl2(arrays[0], arrays[1], tab, y, scale)


KERNEL = TL2Kernel()
