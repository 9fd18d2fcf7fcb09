"""The plain NumPy integer reference every kernel must match exactly."""

from __future__ import annotations

import numpy as np


def reference_matmul(w, x) -> np.ndarray:
    """``x @ w.T`` in int32: ``w`` ternary int8 ``[out, in]``, ``x`` int8 ``[in]`` or ``[T, in]``.

    Computed in int64 then cast (|sum| <= 128 * in, far below 2**31 for any real layer).
    """
    w = np.asarray(w)
    x = np.asarray(x)
    return (x.astype(np.int64) @ w.T.astype(np.int64)).astype(np.int32)
