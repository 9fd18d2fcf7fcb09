"""Stage 3: ternary matmul kernels in Numba, one module per idea, one interface for all.

    >>> from bitnet_edu import kernels
    >>> kernels.available()                 # ['naive', 'mad', ...]
    >>> k = kernels.get("mad")
    >>> p = k.pack(w)                        # w int8 [out, in] of -1/0/+1 -> Packed (p.nbytes)
    >>> y = k.matmul(p, x)                   # x int8 [in] -> int32 [out]; [T, in] -> [T, out]
    >>> y == kernels.reference_matmul(w, x)  # exactly x.astype(int32) @ w.T
    >>> k.linear(p, x, x_scale, w_scale)     # fused: float32 (x @ w.T) * x_scale[t] * w_scale
    >>> k.unpack(p)                          # w again, int8 [out, in]
    >>> k.random_packed(rng, out, cols)      # random ternary weights, straight in the layout

``linear`` is the entry point for the model engine: the int32 accumulate and the float rescale
happen in the same Numba call (``x_scale`` as returned by ``quant.absmax_int8``:
``x ≈ xq*x_scale``).  The engine's hot loop calls ``k.linear_fast`` (many tokens) and
``k.linear_1`` (one token, decode): the same float32 bits without the input checks, and for
``vnni`` with the operands prepared in Numba (see :class:`Kernel`).
:data:`DEFAULT` names the fastest kernel measured on the project's machine
(``python -m bitnet_edu.bench kernels``).  Every kernel module also has ``numpy_matmul``, a plain
NumPy version of its own arithmetic on its own layout, for teaching and tests.
"""

from __future__ import annotations

import importlib

from .. import cpu_threads, numba_cache

numba_cache.configure()  # before any cached kernel is defined: one cache per source version
cpu_threads.configure_openmp()  # before OpenMP loads: short spin at barriers (see cpu_threads)

from ._base import Kernel, Packed  # noqa: E402,F401
from .reference import reference_matmul  # noqa: E402,F401
from . import selfcheck  # noqa: E402

# name -> module; order = the order of the lesson
_MODULES = {
    "naive": "naive",
    "mad": "mad",
    "tl1": "tl1",
    "tl2": "tl2",
    "tmac": "tmac",
    "vnni": "vnni",
}

#: fastest kernel on the project's 2-core AVX-512 machine (see the benchmark)
DEFAULT = "vnni"

_CACHE: dict[str, Kernel] = {}


def available() -> list[str]:
    """Names of all kernels, in the order of the lesson."""
    return list(_MODULES)


def get(name: str) -> Kernel:
    """The kernel object called ``name`` (``.name``, ``.pack``, ``.unpack``, ``.matmul``,
    ``.linear``, ``.linear_fast``, ``.linear_1``, ``.random_packed``)."""
    if name not in _MODULES:
        raise ValueError(f"unknown kernel {name!r}; available: {', '.join(available())}")
    if name not in _CACHE:
        kernel = importlib.import_module(f".{_MODULES[name]}", __name__).KERNEL
        selfcheck.check_kernel(kernel)  # refuses a kernel that is wrong on this CPU (once)
        _CACHE[name] = kernel
    return _CACHE[name]
