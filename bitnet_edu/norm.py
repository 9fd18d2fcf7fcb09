"""RMSNorm in NumPy: the one float32 reference the engine, the lessons and the checks share.

Torch-free (the torch module is :class:`bitnet_edu.bitlinear.RMSNorm`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["rms_norm"]


def rms_norm(x, weight=None, eps: float = 1e-5) -> np.ndarray:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last axis, float32 (as transformers does).

    ``x`` float ``[..., n]``; ``weight`` ``[n]`` or None (no scaling).  Returns float32
    ``[..., n]``.
    """
    x = np.asarray(x, np.float32)
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))
    return y if weight is None else y * np.asarray(weight, np.float32)
