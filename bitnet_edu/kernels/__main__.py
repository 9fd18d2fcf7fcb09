"""``python -m bitnet_edu.kernels``: what this CPU offers and which kernels the engine uses."""

from __future__ import annotations

import platform
import sys


def main() -> int:
    import llvmlite.binding as ll
    import numba

    from . import DEFAULT, available, get, selfcheck
    from .intrinsics import ISAS, isa, target_features

    host = ll.get_host_cpu_features()
    want = ("avx2", "fma", "avx512f", "avx512bw", "avx512vnni", "avxvnni", "neon", "dotprod")
    print(f"machine      {platform.machine()} ({platform.processor() or 'cpu'}), "
          f"{numba.config.NUMBA_NUM_THREADS} Numba threads, threading layer "
          f"{numba.config.THREADING_LAYER}")
    print(f"host CPU     {ll.get_host_cpu_name()}: "
          + " ".join(f"{f}{'+' if host.get(f) else '-'}" for f in want if f in host))
    feats = target_features()
    print(f"Numba target {numba.config.CPU_NAME or ll.get_host_cpu_name()}"
          + ("  (set by NUMBA_CPU_NAME / NUMBA_CPU_FEATURES)" if numba.config.CPU_NAME else ""))
    chosen = isa(feats)
    print(f"byte dot     {chosen}  (best first: {', '.join(ISAS)})")
    print(f"default      kernel {DEFAULT!r}, int8 head (2B4T) / float32 head (small models)")
    print("self-check   ", end="")
    bad = []
    for name in available():
        try:
            get(name)
        except selfcheck.KernelSelfCheckError as e:
            bad.append(f"{name}: {e}")
    for mode in ("int8", "int4"):
        try:
            selfcheck.check_head(mode)
        except selfcheck.KernelSelfCheckError as e:
            bad.append(f"{mode} head: {e}")
    print("every kernel and head exact on this CPU" if not bad else "FAILED\n  " + "\n  ".join(bad))
    for name in available():
        print(f"  {name:6s} {get(name).summary}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
