"""Benchmarks: ``python -m bitnet_edu.bench {kernels,decode,...}``.

Every figure is printed as a ratio against a baseline measured in the same run, because a
shared laptop (or CI box) is noisy; absolute times are printed too but are only context.
"""

import argparse as _argparse


def positive_ints(text: str) -> list[int]:
    """An argparse ``type``: ``"1,4,8"`` -> ``[1, 4, 8]``, each a whole number >= 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise _argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if min(values) < 1:
        raise _argparse.ArgumentTypeError(f"every value must be >= 1, got {text!r}")
    return values
