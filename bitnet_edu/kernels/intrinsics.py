"""LLVM building blocks shared by the byte-dot-product kernels (:mod:`.vnni`, :mod:`.head`).

Plain Numba code never emits ``vpdpbusd``, so those kernels write their inner loops as LLVM IR
inside ``numba.extending.intrinsic`` functions.  The pieces they share live here:

* vector types: ``V64x8`` (64 bytes, one zmm register), ``V16x32`` (16 int32 lanes),
  ``V16xf`` (16 float32 lanes);
* :func:`dpbusd`: ``acc += u8 . s8`` in groups of 4 bytes, the instruction where the target
  CPU has AVX-512 VNNI (:func:`has_vnni`), portable LLVM IR with the same sum elsewhere;
* :func:`load64`, :func:`accumulate_scaled`, :func:`reduce_sum`: IR helpers for a codegen;
* :func:`prefetch` (a Numba intrinsic) and :func:`prefetch_row` (a Numba function) for the
  row streams of decode, which the hardware prefetcher alone leaves below DRAM bandwidth;
* :func:`serial_twin`: a parallel Numba function compiled again without threads, for the
  single-token calls of decode.

The VNNI choice is made at compile time from Numba's own target features
(:func:`target_features`), which are part of Numba's cache key, so a machine code cached for
one CPU is never loaded on another.
"""

from __future__ import annotations

import types as pytypes

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.registry import cpu_target
from numba.extending import intrinsic

__all__ = ["I8", "I32", "F32", "V64x8", "V16x32", "V16xf", "target_features", "has_vnni",
           "dpbusd", "load64", "accumulate_scaled", "reduce_sum", "prefetch", "prefetch_row",
           "serial_twin"]

I8, I32, F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
V64x8, V16x32, V16xf = ir.VectorType(I8, 64), ir.VectorType(I32, 16), ir.VectorType(F32, 16)
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def target_features(context=None) -> str:
    """The LLVM feature string Numba compiles for (``"+avx2,+avx512vnni,..."``): of a codegen's
    ``context`` inside an intrinsic, else of Numba's CPU target (the host unless
    ``NUMBA_CPU_FEATURES`` is set)."""
    if context is None:
        context = cpu_target.target_context
    return context.codegen().magic_tuple()[2]


def has_vnni(features: str | None = None) -> bool:
    """True if Numba compiles for a CPU with AVX-512 VNNI (``features``: an LLVM feature string,
    default: :func:`target_features`)."""
    if features is None:
        features = target_features()
    return "+avx512vnni" in features.split(",")


def dpbusd(builder, acc, u8, s8, vnni: bool):
    """IR for ``acc <16 x i32> +=`` the sums of 4 consecutive ``u8 x s8`` byte products
    (``u8``, ``s8``: ``<64 x i8>``, unsigned and signed): ``vpdpbusd`` if ``vnni``."""
    if vnni:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            V16x32, [V16x32] * 3), VPDPBUSD)
        return builder.call(fn, [acc, builder.bitcast(u8, V16x32), builder.bitcast(s8, V16x32)])
    # Portable: view the bytes as 32 int16 words; the low and high byte of each word are two
    # operands (codes zero-extended, activations sign-extended by shifts), their two products
    # summed in int16 (|sum| <= 2 * 2 * 128), widened to int32 and folded into 16 lanes.  The
    # lanes group other products than vpdpbusd's: harmless, only the sum of all lanes is used.
    i16 = ir.IntType(16)
    v32x16 = ir.VectorType(i16, 32)

    def splat(v):
        return ir.Constant(v32x16, [v] * 32)

    cw, xw = builder.bitcast(u8, v32x16), builder.bitcast(s8, v32x16)
    x_lo = builder.ashr(builder.shl(xw, splat(8)), splat(8))
    lo = builder.mul(builder.and_(cw, splat(0xFF)), x_lo)
    hi = builder.mul(builder.lshr(cw, splat(8)), builder.ashr(xw, splat(8)))
    p = builder.sext(builder.add(lo, hi), ir.VectorType(I32, 32))
    halves = [builder.shuffle_vector(p, p, ir.Constant(ir.VectorType(I32, 16),
                                                       list(range(h, h + 16)))) for h in (0, 16)]
    return builder.add(acc, builder.add(*halves))


def load64(builder, base, offset):
    """IR: the 64 bytes at ``base + offset`` (an ``i8*`` and an ``i64``) as ``<64 x i8>``,
    unaligned."""
    ptr = builder.bitcast(builder.gep(base, [offset]), V64x8.as_pointer())
    return builder.load(ptr, align=1)


def accumulate_scaled(builder, facc, acc_i32, scale):
    """IR: ``facc += float(acc_i32) * scale``: ``facc`` a pointer to ``<16 x float>``,
    ``acc_i32`` 16 int32 lanes, ``scale`` one float broadcast to all lanes."""
    splat = builder.insert_element(ir.Constant(V16xf, None), scale, ir.Constant(I32, 0))
    splat = builder.shuffle_vector(splat, splat, ir.Constant(V16x32, [0] * 16))
    builder.store(builder.fadd(builder.load(facc),
                               builder.fmul(builder.sitofp(acc_i32, V16xf), splat)), facc)


def reduce_sum(builder, facc):
    """IR: the float sum of the 16 lanes ``facc`` points to; reassoc: a tree sum, not 16
    sequential adds."""
    red = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(F32, [F32, V16xf]), "llvm.vector.reduce.fadd.v16f32")
    return builder.call(red, [ir.Constant(F32, 0.0), builder.load(facc)], fastmath=("reassoc",))


@intrinsic
def prefetch(typingctx, arr, offset):
    """Hint the CPU to bring the cache line at byte ``offset`` of C-contiguous ``arr`` into L1."""
    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        off = context.cast(builder, args[1], signature.args[1], types.int64)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        ptr = builder.bitcast(builder.gep(a.data, [off]), i8p)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(arr, offset), codegen


@njit(cache=True, inline="always")
def prefetch_row(a, r):
    """Prefetch row ``r`` of the C-contiguous matrix ``a``, one hint per 64-byte line (nothing
    if the row does not exist)."""
    if r < a.shape[0]:
        for b in range(0, a.shape[1] * a.itemsize, 64):
            prefetch(a, r * a.shape[1] * a.itemsize + b)


def serial_twin(fn, **flags):
    """``fn`` (an ``@njit(parallel=True)`` function) compiled again without threads (``prange``
    runs as ``range``), cached under its own name ``<name>_serial``.

    For one-token calls of a few microseconds a parallel region (waking a thread, a barrier)
    costs more than it saves, and under load from other processes can cost milliseconds.
    Why a renamed copy: Numba keys its on-disk cache on the function's file, name and bytecode,
    not on ``parallel``, so ``njit(cache=True)(fn.py_func)`` shares ``fn``'s cache entry and runs
    whichever of the two was compiled first.  ``flags``: further ``njit`` options (``fastmath``).
    """
    py = fn.py_func
    twin = pytypes.FunctionType(py.__code__, py.__globals__, py.__name__ + "_serial",
                                py.__defaults__, py.__closure__)
    twin.__qualname__ = py.__qualname__ + "_serial"
    twin.__doc__, twin.__module__ = py.__doc__, py.__module__
    return njit(cache=True, **flags)(twin)
