"""Stage 1: absmean ternary weights and per-token absmax int8 activations.

BitNet b1.58 stores each weight matrix as values in {-1, 0, +1} times ONE float scale
(the mean absolute value of the matrix), and quantizes each token's activations to int8
with its own scale (127 / max|x|).  Everything here is plain NumPy so a student can read it
in one sitting; the error helpers are what the notebook plots.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "absmean_ternary",
    "absmax_int8",
    "dequantize",
    "absmean_ternary_grouped",
    "fake_quant_ternary",
    "mse",
    "sqnr_db",
    "zero_fraction",
    "histogram",
    "error_report",
]


def _as_float(x, name: str) -> np.ndarray:
    """Check an input array: non-empty, finite; integers and float16 become float32."""
    x = np.asarray(x)
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); nothing to quantize")
    if x.dtype != np.float64:
        x = x.astype(np.float32)
    if np.isnan(x).any():
        raise ValueError(f"{name} contains NaN ({int(np.isnan(x).sum())} values)")
    if np.isinf(x).any():
        raise ValueError(f"{name} contains Inf ({int(np.isinf(x).sum())} values)")
    return x


def absmean_ternary(w, eps: float = 1e-5):
    """Quantize a weight tensor to {-1, 0, +1} with one absmean scale.

    Args:
        w: float array of any shape (usually a weight matrix ``[out, in]``).
        eps: floor for the scale, so an all-zero tensor does not divide by zero.

    Returns:
        ``(q, scale)``: ``q`` int8 with the shape of ``w`` and values in {-1, 0, 1};
        ``scale`` a Python float, ``max(mean|w|, eps)``.  ``w ≈ q * scale``.
    """
    w = _as_float(w, "w")
    scale = max(float(np.mean(np.abs(w), dtype=np.float64)), eps)
    q = np.clip(np.rint(w / scale), -1, 1).astype(np.int8)
    return q, scale


def absmax_int8(x, eps: float = 1e-5):
    """Quantize activations to int8, one scale per row (token) over the last axis.

    Args:
        x: float array ``[..., features]``; each row is one token.
        eps: floor for ``max|x|`` so an all-zero token does not divide by zero.

    Returns:
        ``(q, scale)``: ``q`` int8 of the shape of ``x``; ``scale`` float32 of shape
        ``x.shape[:-1] + (1,)`` equal to ``max(max|x|, eps) / 127``.  ``x ≈ q * scale``.
    """
    x = _as_float(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least one axis (the features), got a scalar")
    amax = np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), eps)
    q = np.clip(np.rint(x * (127.0 / amax)), -128, 127).astype(np.int8)
    return q, (amax / 127.0).astype(np.float32)


def dequantize(q, scale) -> np.ndarray:
    """``q * scale`` as float32 (works for both the ternary and the int8 case)."""
    return (np.asarray(q, dtype=np.float32) * np.asarray(scale, dtype=np.float32)).astype(np.float32)


def absmean_ternary_grouped(w, granularity="tensor", group_size: int = 128, eps: float = 1e-5):
    """Absmean ternary with a scale per tensor, per output row, or per group of columns.

    BitNet uses ``"tensor"`` (one scale).  The finer variants are here so the notebook can show
    what more scales buy in error and cost in memory.

    Args:
        w: float array ``[out, in]``.
        granularity: ``"tensor"``, ``"row"`` or ``"group"``.
        group_size: columns per scale for ``"group"``; must divide ``in``.

    Returns:
        ``(q, scale)``: ``q`` int8 ``[out, in]``; ``scale`` float32 broadcastable to ``w``:
        shape ``[1, 1]``, ``[out, 1]`` or ``[out, in // group_size, 1]`` (then ``q`` is
        viewed as ``[out, in // group_size, group_size]`` to dequantize; use
        :func:`fake_quant_ternary` for the dequantized matrix).
    """
    w = _as_float(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be a matrix [out, in], got shape {w.shape}")
    if granularity == "tensor":
        q, s = absmean_ternary(w, eps)
        return q, np.full((1, 1), s, dtype=np.float32)
    if granularity == "row":
        s = np.maximum(np.mean(np.abs(w), axis=1, keepdims=True), eps)
    elif granularity == "group":
        out, k = w.shape
        if group_size <= 0 or k % group_size:
            raise ValueError(f"group_size={group_size} must divide in_features={k}")
        w = w.reshape(out, k // group_size, group_size)
        s = np.maximum(np.mean(np.abs(w), axis=2, keepdims=True), eps)
    else:
        raise ValueError(f"granularity must be 'tensor', 'row' or 'group', got {granularity!r}")
    q = np.clip(np.rint(w / s), -1, 1).astype(np.int8)
    return q.reshape(w.shape[0], -1), s.astype(np.float32)


def fake_quant_ternary(w, granularity="tensor", group_size: int = 128, eps: float = 1e-5) -> np.ndarray:
    """Quantize then dequantize: the float32 matrix the network effectively uses, shape of ``w``."""
    w = _as_float(w, "w")
    q, s = absmean_ternary_grouped(w, granularity, group_size, eps)
    if granularity == "group":
        out = w.shape[0]
        return (q.reshape(out, -1, group_size) * s).reshape(w.shape).astype(np.float32)
    return (q * s).astype(np.float32)


def mse(a, b) -> float:
    """Mean squared error between two arrays of the same shape."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean((a - b) ** 2))


def sqnr_db(original, approx) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum x² / sum (x - x̂)²)``.

    Higher is better; every 6 dB is about one bit.  Returns ``inf`` for an exact copy.
    """
    x, y = np.asarray(original, np.float64), np.asarray(approx, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    noise = float(np.sum((x - y) ** 2))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(float(np.sum(x**2)) / noise))


def zero_fraction(q) -> float:
    """Fraction of entries equal to zero (ternary weights are typically about a third zeros)."""
    q = np.asarray(q)
    if q.size == 0:
        raise ValueError("empty array")
    return float(np.mean(q == 0))


def histogram(x, bins: int = 61, range=None):
    """Histogram data for plotting: ``(centers float64[bins], counts int64[bins])``."""
    x = _as_float(x, "x").ravel()
    counts, edges = np.histogram(x, bins=bins, range=range)
    return (edges[:-1] + edges[1:]) / 2, counts


def error_report(w, eps: float = 1e-5) -> dict:
    """Everything the lesson reports for one weight tensor after absmean ternary.

    Returns a dict: ``scale``, ``mse``, ``sqnr_db``, ``zero_fraction``, fractions of -1 and +1,
    ``bits_per_weight`` (log2(3) ≈ 1.58 information content) and the relative Frobenius error.
    """
    w = _as_float(w, "w")
    q, s = absmean_ternary(w, eps)
    wh = q.astype(np.float32) * s
    return {
        "scale": s,
        "mse": mse(w, wh),
        "sqnr_db": sqnr_db(w, wh),
        "zero_fraction": zero_fraction(q),
        "minus_one_fraction": float(np.mean(q == -1)),
        "plus_one_fraction": float(np.mean(q == 1)),
        "bits_per_weight": float(np.log2(3)),
        "relative_error": float(np.linalg.norm(w - wh) / max(np.linalg.norm(w), 1e-30)),
    }
