"""bitnet_edu: a Jupyter-first course on BitNet b1.58, one stage per module.

Stage 1 ``quant`` / ``packing`` · stage 2 ``bitlinear`` · stage 3 ``kernels`` ·
stage 4 ``model`` / ``generate`` · stage 5 ``train`` · stage 6 ``widgets``.

Heavy modules (numba kernels, torch) load on first use, so ``import bitnet_edu`` is instant.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__version__ = "0.1.0"

#: Directory of the small BitNet model trained with this package and shipped inside it.
DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model"

_LAZY = {
    "load_model": "bitnet_edu.model",
    "random_model": "bitnet_edu.model",
    "absmean_ternary": "bitnet_edu.quant",
    "absmax_int8": "bitnet_edu.quant",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bitnet_edu' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
