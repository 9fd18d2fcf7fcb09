"""``tl1``: a lookup table over PAIRS of weights (bitnet.cpp's TL1, from its ARM kernels).

A pair of ternary weights ``(a, b)`` has 3 * 3 = 9 possible values, so for each pair of
activations ``(x0, x1)`` all 9 partial sums ``a*x0 + b*x1`` can be computed ONCE per token and
shared by every output row.  Each row then stores one 4-bit index per pair (2 bits per weight)
and its dot product becomes a sum of table reads — no multiplication at all::

    index(a, b)  = 3*(a+1) + (b+1)                  in 0..8
    table[p, i]  = a_i * x[2p] + b_i * x[2p+1]      9 entries (padded to 16)
    y[o]         = sum_p table[p, index(w[o, 2p], w[o, 2p+1])]

Layout: uint8 ``[out, kp/4]``, byte ``j`` holds pair ``2j`` in its low nibble and pair ``2j+1``
in its high nibble (kp = in padded to a multiple of 4 with zero weights).
In C the 16-entry table fits one vector register and ``pshufb``/``tbl`` does 16-32 lookups per
instruction; Numba can only emit one scalar load per lookup, which is why TL1 loses here.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._base import Kernel, pad_cols

#: the 9 weight pairs in index order: PAIRS[3*(a+1) + (b+1)] == (a, b)
PAIRS = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
ENTRIES = 16  # table row stride: 9 used entries, padded to 16 like a 4-bit index allows


def pair_index(w: np.ndarray) -> np.ndarray:
    """Ternary int8 ``[out, k]`` (k even) -> pair indices uint8 ``[out, k/2]`` in 0..8."""
    return (3 * (w[:, 0::2] + 1) + (w[:, 1::2] + 1)).astype(np.uint8)


def build_table(x: np.ndarray) -> np.ndarray:
    """Activations int8 ``[T, k]`` (k even) -> int16 table ``[T, k/2, 16]``: entry ``i`` of pair
    ``p`` is ``a*x[2p] + b*x[2p+1]`` for ``(a, b) = PAIRS[i]`` (entries 9..15 are unused zeros)."""
    x0 = x[:, 0::2].astype(np.int16)
    x1 = x[:, 1::2].astype(np.int16)
    tab = np.zeros(x0.shape + (ENTRIES,), np.int16)
    for i, (a, b) in enumerate(PAIRS):
        tab[:, :, i] = a * x0 + b * x1
    return tab


def numpy_matmul(packed: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy version: ``packed`` uint8 ``[out, kp/4]``, ``x`` int8 ``[T, kp]`` -> int32
    ``[T, out]``."""
    idx = np.empty((packed.shape[0], packed.shape[1] * 2), np.int64)
    idx[:, 0::2] = packed & 15
    idx[:, 1::2] = packed >> 4
    tab = build_table(x).astype(np.int32)  # [T, P, 16]
    p = np.arange(idx.shape[1])
    return tab[:, p[None, :], idx].sum(axis=2).astype(np.int32)  # [T, out]


@njit(parallel=True, cache=True)
def _tl1(packed, tab, y, scale):
    """packed uint8 [out, nbytes], tab int16 [T, 2*nbytes*16] (flattened table) -> y [T, out]."""
    n_out, nbytes = packed.shape
    for o in prange(n_out):
        row = packed[o]
        for t in range(tab.shape[0]):
            tt = tab[t]
            acc = np.int32(0)
            for j in range(nbytes):
                b = row[j]
                acc = np.int32(acc + tt[j * 32 + (b & 15)] + tt[j * 32 + 16 + (b >> 4)])
            if scale is None:
                y[t, o] = acc
            else:
                y[t, o] = np.float32(acc) * scale[t]


class TL1Kernel(Kernel):
    name = "tl1"
    summary = "pairs of weights -> 9-entry table of partial sums, 4-bit index (2 bits per weight)"

    @classmethod
    def expected_arrays(cls, out, k):
        """Two pair indices per byte: uint8 ``[out, kp/4]``, ``kp`` = ``k`` rounded up to 4."""
        return (((out, -(-k // 4)), np.uint8),)

    def _pack(self, w):
        idx = pair_index(pad_cols(w, 4))
        return (idx[:, 0::2] | (idx[:, 1::2] << 4),)

    def _run(self, arrays, x, y, scale):
        tab = build_table(pad_cols(x, 4)).reshape(x.shape[0], -1)
        _tl1(arrays[0], tab, y, scale)


KERNEL = TL1Kernel()
