"""``tmac``: T-MAC's bit-serial lookup tables — 16 entries over groups of 4 activations.

Write each weight as an unsigned 2-bit code ``c = w + 1 = c0 + 2*c1`` and look at the two
BIT PLANES separately.  Over a group of 4 weights, plane ``b`` is a 4-bit mask ``m_b``, and the
sum of the activations it selects is one entry of a 16-entry table built once per token::

    table[g, m] = sum_{i: bit i of m} x[4g + i]            (all 16 subsets of 4 activations)
    y[o] = sum_g (table[g, m0[o, g]] + 2 * table[g, m1[o, g]])  -  sum_k x[k]

The same table serves any bit width (T-MAC runs 1- to 4-bit weights this way: one lookup per
plane, shifted); ternary needs 2 planes.  Layout: uint8 ``[out, kp/4]``, byte ``g`` =
``m0 | m1 << 4`` (kp = in padded to a multiple of 4), 2 bits per weight.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._base import Kernel, pad_cols

GROUP = 4  # activations per table: 2**4 = 16 entries


def plane_masks(w: np.ndarray):
    """Ternary int8 ``[out, k]`` (k % 4 == 0) -> (m0, m1) uint8 ``[out, k/4]``: 4-bit plane
    masks."""
    c = (w + 1).astype(np.uint8).reshape(w.shape[0], -1, GROUP)
    bit = (1 << np.arange(GROUP)).astype(np.uint8)
    m0 = ((c & 1) * bit).sum(axis=2).astype(np.uint8)
    return m0, ((c >> 1) * bit).sum(axis=2).astype(np.uint8)


def build_table(x: np.ndarray) -> np.ndarray:
    """Activations int8 ``[T, k]`` (k % 4 == 0) -> int16 ``[T, k/4, 16]``: subset sums of each
    group."""
    xg = x.astype(np.int16).reshape(x.shape[0], -1, GROUP)
    subsets = (np.arange(16)[:, None] >> np.arange(GROUP)) & 1  # [16, 4]
    return (xg @ subsets.T.astype(np.int16)).astype(np.int16)


def numpy_matmul(packed: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy version: ``packed`` uint8 ``[out, kp/4]``, ``x`` int8 ``[T, kp]`` -> int32
    ``[T, out]``."""
    tab = build_table(x).astype(np.int32)  # [T, G, 16]
    g = np.arange(packed.shape[1])[None, :]
    lo = tab[:, g, packed & 15].sum(axis=2)
    hi = tab[:, g, packed >> 4].sum(axis=2)
    return (lo + 2 * hi - x.astype(np.int32).sum(axis=1, keepdims=True)).astype(np.int32)


@njit(parallel=True, cache=True)
def _tmac(packed, tab, xsum, y, scale):
    """packed uint8 [out, G], tab int16 [T, G*16], xsum int32 [T] -> y [T, out]."""
    n_out, n_groups = packed.shape
    for o in prange(n_out):
        row = packed[o]
        for t in range(tab.shape[0]):
            tt = tab[t]
            acc = np.int32(0)
            for g in range(n_groups):
                b = row[g]
                acc = np.int32(acc + tt[g * 16 + (b & 15)] + 2 * np.int32(tt[g * 16 + (b >> 4)]))
            acc -= xsum[t]
            if scale is None:
                y[t, o] = acc
            else:
                y[t, o] = np.float32(acc) * scale[t]


class TMACKernel(Kernel):
    name = "tmac"
    summary = ("T-MAC: 2 bit planes x 16-entry subset-sum tables over 4 activations "
               "(2 bits per weight)")

    @classmethod
    def expected_arrays(cls, out, k):
        """One byte of plane masks per group: uint8 ``[out, kp/4]``, ``kp`` = ``k`` rounded up
        to :data:`GROUP`."""
        return (((out, -(-k // GROUP)), np.uint8),)

    def _pack(self, w):
        m0, m1 = plane_masks(pad_cols(w, GROUP))
        return (m0 | (m1 << 4),)

    def _run(self, arrays, x, y, scale):
        xp = pad_cols(x, GROUP)
        tab = build_table(xp).reshape(x.shape[0], -1)
        _tmac(arrays[0], tab, x.astype(np.int32).sum(axis=1).astype(np.int32), y, scale)


KERNEL = TMACKernel()
