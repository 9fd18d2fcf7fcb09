"""``naive``: the teaching baseline — weights kept as int8 -1/0/+1, add where +1, subtract where -1.

No multiplication at all: that is the whole point of ternary weights.  One byte per weight,
so it reads 4x more memory than a 2-bit layout.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._base import Kernel


def numpy_matmul(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy version of the same idea: sum of x where w == +1 minus sum where w == -1.

    ``w`` int8 ``[out, k]``, ``x`` int8 ``[T, k]`` -> int32 ``[T, out]``.
    """
    x32 = x.astype(np.int32)
    return (x32 @ (w == 1).T.astype(np.int32) - x32 @ (w == -1).T.astype(np.int32)).astype(np.int32)


@njit(parallel=True, cache=True)
def _naive(w, x, y, scale):
    """w int8 [out, k], x int8 [T, k] -> y [T, out] (int32 sums, or float32 sums * scale[t])."""
    n_out, k = w.shape
    for o in prange(n_out):
        row = w[o]
        for t in range(x.shape[0]):
            xt = x[t]
            acc = np.int32(0)
            for i in range(k):
                # select instead of multiply: +x, -x or nothing
                if row[i] == 1:
                    acc += np.int32(xt[i])
                elif row[i] == -1:
                    acc -= np.int32(xt[i])
            if scale is None:
                y[t, o] = acc
            else:
                y[t, o] = np.float32(acc) * scale[t]


class NaiveKernel(Kernel):
    name = "naive"
    summary = "int8 weights, add where +1 / subtract where -1 (8 bits per weight)"

    @classmethod
    def expected_arrays(cls, out, k):
        """The matrix itself: int8 ``[out, k]``."""
        return (((out, k), np.int8),)

    def _pack(self, w):
        return (w.astype(np.int8),)

    def _run(self, arrays, x, y, scale):
        _naive(arrays[0], x, y, scale)

    def unpack(self, packed):
        """The layout is the matrix itself: a copy, int8 ``[out, in]``."""
        return self._check_packed(packed).arrays[0].copy()


KERNEL = NaiveKernel()
