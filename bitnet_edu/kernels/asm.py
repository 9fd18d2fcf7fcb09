"""What did LLVM make of a kernel?  Count the SIMD instructions in its machine code.

Numba's ``inspect_asm`` returns nothing for functions loaded from the on-disk cache, so this
recompiles a private, uncached copy of each Numba function of the kernel's module.
"""

from __future__ import annotations

import collections
import importlib
import re

import numpy as np
from numba import njit
from numba.core.registry import CPUDispatcher

from . import get

#: instructions worth looking for: multiply-adds (vpmaddwd: 16x16->32 bit; vpmaddubsw: the
#: unsigned x signed byte multiply-add bitnet.cpp's x86 I2_S kernel uses with vpmaddwd; vpdpbusd:
#: both in one AVX-512 VNNI / AVX-VNNI instruction, which our vnni kernel uses), shuffles (vpshufb: the
#: lookup-table instruction of C kernels), gathers, and 512-bit (zmm) vs 256-bit (ymm) registers.
WATCH = ("vpmaddwd", "vpmaddubsw", "vpdpbusd", "vpdpwssd", "vpshufb", "vpgatherdd", "vpmullw",
         "vpmulld", "vgf2p8affineqb", "vfmadd231ps")


def asm_summary(name: str) -> dict:
    """``{function: {"zmm": n, "ymm": n, "vpmaddwd": n, ...}}`` for the Numba functions of
    kernel ``name``."""
    kern = get(name)
    rng = np.random.default_rng(0)
    w = rng.integers(-1, 2, (8, 512)).astype(np.int8)
    x = rng.integers(-128, 128, (3, 512)).astype(np.int8)
    kern.matmul(kern.pack(w), x)  # make sure every signature exists
    mod = importlib.import_module(kern.__module__)
    out = {}
    for attr, f in vars(mod).items():
        if not isinstance(f, CPUDispatcher) or not f.signatures:
            continue
        opts = {k: v for k, v in f.targetoptions.items() if k in ("parallel", "fastmath")}
        fresh = njit(**opts)(f.py_func)
        counts = collections.Counter()
        for sig in f.signatures:
            fresh.compile(sig)
            asm = fresh.inspect_asm(sig)
            # "{vex} vpdpbusd": the AVX-VNNI encoding of the same instruction
            ops = collections.Counter(re.findall(r"^\s+(?:\{vex\}\s+)?(v\w+)\s", asm, flags=re.M))
            counts.update({op: ops[op] for op in WATCH})
            counts["zmm"] += asm.count("%zmm")
            counts["ymm"] += asm.count("%ymm")
        out[attr] = dict(counts)
    return out
