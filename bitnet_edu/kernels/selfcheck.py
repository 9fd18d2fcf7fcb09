"""Refuse a kernel that computes wrong numbers on this CPU, before it generates garbage.

Each kernel's machine code depends on the CPU it was compiled for (:func:`.intrinsics.isa`):
the AVX2, AVX-VNNI and portable paths never run on the machine a developer tests on unless
asked to.  So the first time a process uses a kernel (:func:`bitnet_edu.kernels.get`) or a
quantized head, a few small products are compared with plain NumPy: the ternary kernels must
agree exactly (integers), the int8/int4 heads to float32 rounding of their own NumPy
reference.  A disagreement raises :class:`KernelSelfCheckError` naming the kernel, the
instruction set and what to do.  Costs a few milliseconds once per process (after the compile
the first call needs anyway); ``BITNET_EDU_SELF_CHECK=0`` turns it off.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["KernelSelfCheckError", "check_kernel", "check_head", "enabled"]

_DONE: set = set()


class KernelSelfCheckError(RuntimeError):
    """A compiled kernel disagrees with its NumPy reference on this CPU."""


def enabled() -> bool:
    return os.environ.get("BITNET_EDU_SELF_CHECK", "1") != "0"


def _fail(what: str, detail: str):
    from .intrinsics import isa, target_features
    raise KernelSelfCheckError(
        f"{what} gives wrong results on this CPU (instruction set {isa()!r}; {detail}). "
        f"Use another kernel (bitnet_edu.load_model(kernel='mad')) and please report it with the "
        f"output of `python -m bitnet_edu.kernels` (Numba target features: "
        f"{target_features()[:120]}...)")


def check_kernel(kernel) -> None:
    """Exactness of ``kernel`` (a :class:`~.Kernel`) on a few odd shapes, once per process."""
    if kernel.name in _DONE or not enabled():
        return
    from .reference import reference_matmul

    rng = np.random.default_rng(1234)
    w = rng.integers(-1, 2, (37, 300), dtype=np.int8)
    x = rng.integers(-128, 128, (5, 300), dtype=np.int8)
    x[0, :8] = -128  # the extremes of int8
    p = kernel.pack(w)
    want = reference_matmul(w, x)
    for t in (1, 5):
        got = kernel.matmul(p, x[:t])
        if not np.array_equal(got, want[:t]):
            bad = int(np.argmax(np.any(got != want[:t], axis=0)))
            _fail(f"kernel {kernel.name!r}", f"{t}-token product, output row {bad}: "
                  f"{got[:, bad].tolist()} instead of {want[:t, bad].tolist()}")
    s = np.full(1, 0.5, np.float32)
    one = kernel.linear_1(p, np.ascontiguousarray(x[:1]), s, 2.0)
    if not np.array_equal(one, want[:1].astype(np.float32)):
        _fail(f"kernel {kernel.name!r}", "the one-token decode path")
    _DONE.add(kernel.name)


def check_head(mode: str) -> None:
    """The ``int8``/``int4`` head kernels against their NumPy references, once per process."""
    key = f"head:{mode}"
    if key in _DONE or mode == "float32" or not enabled():
        return
    from . import head

    rng = np.random.default_rng(4321)
    table = rng.standard_normal((70, 512)).astype(np.float32)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    if mode == "int8":
        q = np.clip(np.rint(table * 40), -127, 127).astype(np.int8)
        scale = np.full(70, 0.025, np.float32)
        got, want = head.head_logits(x, q, scale), head.numpy_head_logits(x, q, scale)
    else:
        packed, scale = head.quantize_rows_int4(table)
        got = head.head_logits_int4(x, packed, scale)
        want = head.numpy_head_logits_int4(x, packed, scale)
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))
    if not err < 1e-4:
        _fail(f"the {mode} head", f"logits off by {err:.2g} relative to NumPy")
    _DONE.add(key)
