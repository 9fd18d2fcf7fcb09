"""LLVM building blocks shared by the byte-dot-product kernels (:mod:`.vnni`, :mod:`.head`).

Plain Numba code never emits ``vpdpbusd``, so those kernels write their inner loops as LLVM IR
inside ``numba.extending.intrinsic`` functions.  The pieces they share live here:

* vector types: ``V64x8`` (64 bytes, one zmm register), ``V16x32`` (16 int32 lanes),
  ``V16xf`` (16 float32 lanes);
* :func:`dpbusd`: ``acc += u8 . s8`` in groups of 4 bytes, the instruction where the target
  CPU has AVX-512 VNNI (:func:`has_vnni`), its nearest equivalent on AVX-VNNI, AVX2 and ARM64
  with the dot-product extension (:func:`sdot`), portable LLVM IR with the same sum elsewhere;
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
           "ISAS", "isa", "dpbusd", "dpbusd_sum", "sdot", "array_args", "int64_args", "load64",
           "accumulate_scaled", "reduce_sum", "prefetch", "prefetch_row", "serial_twin"]

I8, I32, F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
V64x8, V16x32, V16xf = ir.VectorType(I8, 64), ir.VectorType(I32, 16), ir.VectorType(F32, 16)
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"


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


#: the byte-dot-product instruction sets, best first per architecture (see :func:`isa`)
ISAS = ("avx512vnni", "avxvnni", "avx2", "neondot", "portable")


def isa(features: str | None = None) -> str:
    """Which instructions :func:`dpbusd` emits for a target (``features``: an LLVM feature
    string, default :func:`target_features`):

    * ``"avx512vnni"``: ``vpdpbusd`` on 512-bit zmm registers (Intel Ice Lake server and later,
      AMD Zen 4 and later);
    * ``"avxvnni"``: the VEX ``vpdpbusd`` on 256-bit ymm (Intel Alder Lake and later laptops);
    * ``"avx2"``: ``vpmaddubsw`` (u8 x s8 pairs -> int16) + ``vpmaddwd`` (-> int32) on ymm, as
      bitnet.cpp's x86 I2_S kernel does (every x86 laptop since 2013);
    * ``"neondot"``: ARM64 ``sdot`` (signed x signed bytes, 4 per int32 lane) on 128-bit NEON
      registers, where the target has the dot-product extension ``+dotprod`` (Apple M1 and
      later, Cortex-A76 / Neoverse N1 and later, AWS Graviton2 and later);
    * ``"portable"``: exact widening integer arithmetic in plain LLVM IR (ARM64 without
      ``+dotprod``, old x86).
    """
    f = set((target_features() if features is None else features).split(","))
    if "+avx512vnni" in f and "+avx512bw" in f:
        return "avx512vnni"
    if "+avxvnni" in f and "+avx2" in f:
        return "avxvnni"
    if "+avx2" in f:
        return "avx2"
    if "+dotprod" in f:  # an AArch64 feature name only (x86 has none of that name)
        return "neondot"
    return "portable"


def _halves(builder, v, n):
    """The two halves of an ``n``-element vector ``v``."""
    idx = ir.IntType(32)
    return [builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(idx, n // 2),
                                                     list(range(h, h + n // 2))))
            for h in (0, n // 2)]


def _concat(builder, a, b, n):
    """One ``2n``-element vector from two ``n``-element ones."""
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, 2 * n), list(range(2 * n))))


def _quarters(builder, v, n):
    """The four quarters of an ``n``-element vector ``v`` (one 128-bit NEON register each for
    ``<64 x i8>`` and ``<16 x i32>``)."""
    idx = ir.IntType(32)
    return [builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(idx, n // 4),
                                                     list(range(q, q + n // 4))))
            for q in range(0, n, n // 4)]


def _call(builder, name, ret, operands):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ret, [o.type for o in operands]), name)
    return builder.call(fn, operands)


_V32x8, _V16x16, _V8x32 = ir.VectorType(I8, 32), ir.VectorType(ir.IntType(16), 16), ir.VectorType(I32, 8)


def _maddubs(builder, u8, s8):
    """``vpmaddubsw`` on the two ymm halves of 64 bytes: <16 x i16> each, ``u8[2i]*s8[2i] +
    u8[2i+1]*s8[2i+1]`` saturated to int16 (exact while ``2 * max(u8) * 128 <= 32767``)."""
    return [_call(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16x16, [a, b])
            for a, b in zip(_halves(builder, u8, 64), _halves(builder, s8, 64))]


def _madd(builder, w16, factor: int):
    """``vpmaddwd`` by a constant: <16 x i16> -> <8 x i32> of ``factor * (w[2i] + w[2i+1])``."""
    return _call(builder, "llvm.x86.avx2.pmadd.wd", _V8x32,
                 [w16, ir.Constant(_V16x16, [factor] * 16)])


_V4x32 = ir.VectorType(I32, 4)


def sdot(builder, acc, a, b):
    """IR for ARM64 ``sdot`` on 64 bytes: ``acc <16 x i32> +=`` products of the SIGNED bytes
    ``a`` and ``b`` (``<64 x i8>`` each), lane ``i`` adding bytes ``4i..4i+3``: four
    ``llvm.aarch64.neon.sdot.v4i32.v16i8``, one per 16-byte quarter into the matching
    ``<4 x i32>`` quarter of ``acc``.  Exact: a lane adds 4 products of at most 128 * 128.
    Needs a target with ``+dotprod`` (:func:`isa` ``"neondot"``)."""
    out = [_call(builder, SDOT, _V4x32, [q, x, y]) for q, x, y in
           zip(_quarters(builder, acc, 16), _quarters(builder, a, 64), _quarters(builder, b, 64))]
    lo, hi = _concat(builder, out[0], out[1], 4), _concat(builder, out[2], out[3], 4)
    return _concat(builder, lo, hi, 8)


def dpbusd(builder, acc, u8, s8, target, u8_max: int = 255):
    """IR for ``acc <16 x i32> +=`` the products ``u8 x s8`` of 64 unsigned and 64 signed bytes
    (``<64 x i8>`` each), summed in int32: exactly what ``vpdpbusd`` adds.

    ``target``: an :data:`ISAS` name (or a bool, True = ``"avx512vnni"``).  Which products land
    in which of the 16 lanes depends on the instruction set; every caller only ever uses the
    sum over all lanes (or scales all lanes alike), and that sum is exact on every target.
    ``u8_max``: the largest unsigned operand the caller can pass (ternary codes 2, nibbles 15,
    a flipped int8 table 255): small operands let AVX2 use one ``vpmaddubsw`` per 32 bytes and
    ARM64 one signed ``sdot`` per 16 bytes (:func:`sdot`; u8 <= 127 is the same signed byte).
    """
    if target is True or target == "avx512vnni":
        return _call(builder, VPDPBUSD, V16x32, [acc, builder.bitcast(u8, V16x32),
                                                 builder.bitcast(s8, V16x32)])
    if target == "avxvnni":  # the same instruction, VEX-encoded, on two ymm halves
        out = [_call(builder, "llvm.x86.avx512.vpdpbusd.256", _V8x32,
                     [a, builder.bitcast(u, _V8x32), builder.bitcast(x, _V8x32)])
               for a, u, x in zip(_halves(builder, acc, 16), _halves(builder, u8, 64),
                                  _halves(builder, s8, 64))]
        return _concat(builder, *out, 8)
    if target == "neondot":
        if u8_max <= 127:  # codes, nibbles: the same value read as a signed byte
            return sdot(builder, acc, u8, s8)
        # u8 = (u8 read as int8) + 256 * top bit: two exact sdots (the int8 read needs no AND,
        # unlike a low-7-bits split); 256 * (top . s8) is at most 2**17 per lane
        top = builder.lshr(u8, ir.Constant(V64x8, [7] * 64))
        hi = sdot(builder, ir.Constant(V16x32, None), top, s8)
        hi = builder.shl(hi, ir.Constant(V16x32, [8] * 16))
        return builder.add(sdot(builder, acc, u8, s8), hi)
    if target == "avx2":
        if 2 * u8_max * 128 <= 32767:
            parts = [_madd(builder, w, 1) for w in _maddubs(builder, u8, s8)]
        else:  # u8 = low 7 bits + 128 * top bit: two exact vpmaddubsw instead of a saturating one
            low = builder.and_(u8, ir.Constant(V64x8, [0x7F] * 64))
            top = builder.lshr(u8, ir.Constant(V64x8, [7] * 64))
            lo = [_madd(builder, w, 1) for w in _maddubs(builder, low, s8)]
            hi = [_madd(builder, w, 128) for w in _maddubs(builder, top, s8)]
            parts = [builder.add(a, b) for a, b in zip(lo, hi)]
        return builder.add(acc, _concat(builder, *parts, 8))
    # Portable: every product widened to int32 before any add (255 * -128 * 2 overflows int16),
    # then the 64 products folded into 16 lanes.
    v64x32 = ir.VectorType(I32, 64)
    p = builder.mul(builder.zext(u8, v64x32), builder.sext(s8, v64x32))
    a, b = _halves(builder, p, 64)
    a = builder.add(a, b)
    a, b = _halves(builder, a, 32)
    return builder.add(acc, builder.add(a, b))


def dpbusd_sum(builder, acc, pairs, target, u8_max: int):
    """``acc += sum(u8 . s8 for u8, s8 in pairs)``, like :func:`dpbusd` applied to each pair.

    On AVX2 with small operands (``len(pairs) * 2 * u8_max * 128 <= 32767``) the int16 results
    of ``vpmaddubsw`` are added before a single ``vpmaddwd`` widens them (what bitnet.cpp's
    I2_S kernel does: half the widening work); elsewhere one :func:`dpbusd` per pair.
    """
    if target == "avx2" and len(pairs) * 2 * u8_max * 128 <= 32767:
        sums = None
        for u8, s8 in pairs:
            w = _maddubs(builder, u8, s8)
            sums = w if sums is None else [builder.add(a, b) for a, b in zip(sums, w)]
        return builder.add(acc, _concat(builder, *[_madd(builder, w, 1) for w in sums], 8))
    for u8, s8 in pairs:
        acc = dpbusd(builder, acc, u8, s8, target, u8_max)
    return acc


def array_args(context, builder, signature, args, *which):
    """Inside a codegen: the array structs (``.data``, ``.shape``) of arguments ``which``."""
    return [context.make_array(signature.args[i])(context, builder, args[i]) for i in which]


def int64_args(context, builder, signature, args, *which):
    """Inside a codegen: integer arguments ``which`` cast to i64."""
    return [context.cast(builder, args[i], signature.args[i], types.int64) for i in which]


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
