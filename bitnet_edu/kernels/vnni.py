"""``vnni``: the I2_S bytes multiplied by ``vpdpbusd``, the AVX-512 VNNI byte dot product.

Same arithmetic as :mod:`.mad` (codes ``c = w + 1`` in {0, 1, 2}, ``x @ w.T = x @ c.T - sum(x)``),
but the multiply-add is one AVX-512 VNNI instruction (bitnet.cpp's x86 I2_S kernel does the same
work with the AVX2 pair ``vpmaddubsw`` + ``vpmaddwd``, which :func:`~.intrinsics.dpbusd` emits on
AVX2): ``vpdpbusd acc, u8, s8`` multiplies 64 unsigned bytes by 64 signed bytes and adds each group of
4 products into one of 16 int32 lanes.  Plain Numba code never emits it (LLVM does not match
the pattern; notebook 03 counts the instructions), so :func:`_make_dot` builds
``numba.extending.intrinsic`` functions that write the inner loop in LLVM IR and call
``llvm.x86.avx512.vpdpbusd.512`` on ``<16 x i32>`` vectors (512-bit zmm registers), with the
helpers of :mod:`.intrinsics`.

Layout: the I2_S bytes of :func:`bitnet_edu.packing.pack_i2s`, each row zero-padded to a
multiple of 256 weights.  One 64-byte load takes two I2_S blocks (b0, b1) of 128 weights::

    byte:      0      1   ...   31    32     33   ...   63
            +------+------+---+------+------+------+---+------+
    bits 7-6| b0:0 | b0:1 |...| b0:31| b1:0 | b1:1 |...| b1:31|   slice s=0 (shift 6)
    bits 5-4| b0:32| b0:33|...| b0:63| b1:32| b1:33|...| b1:63|   slice s=1 (shift 4)
    bits 3-2| b0:64| ...  |...| b0:95| b1:64| ...  |...| b1:95|   slice s=2 (shift 2)
    bits 1-0| b0:96| ...  |...|b0:127| b1:96| ...  |...|b1:127|   slice s=3 (shift 0)
            +------+------+---+------+------+------+---+------+
    (b0:j = weight j of block b0 = weight 256*chunk + j;  b1:j = weight 256*chunk + 128 + j)

Decoding in registers is one shift and one AND per slice: ``(v >> (6 - 2s)) & 3`` gives 64
code bytes, the rows of the picture.  The activations are permuted ONCE per call (not per
row) into the same order, :func:`permute_x`: chunk ``c`` of ``xp`` is
``[x[b0, 0:32], x[b1, 0:32], x[b0, 32:64], x[b1, 32:64], ...]``, so slice ``s`` of a chunk
meets the 64 activation bytes ``xp[256c + 64s : 256c + 64s + 64]``.  Per 256 weights: 1 load
of codes, 4 shifts, 4 ANDs, 4 activation loads (from L1), 4 ``vpdpbusd``.

Exactness: each ``vpdpbusd`` lane adds 4 products of at most 2 * 128 in magnitude, int32 lanes
without saturation; a row sum is at most 2 * 128 * in (far below 2**31).

CPU support: the byte dot product is chosen at compile time from the target Numba compiles for
(:func:`bitnet_edu.kernels.intrinsics.isa`): ``vpdpbusd`` on zmm (AVX-512 VNNI), on ymm
(AVX-VNNI), ``vpmaddubsw`` + ``vpmaddwd`` on AVX2, four ``sdot`` on 128-bit NEON registers on
ARM64 with ``+dotprod`` (codes 0..2 are the same as signed bytes), exact widening LLVM IR
elsewhere, so the kernel gives the same integers on every CPU.  AVX2 has its own loop
(:func:`_avx2_dot`): per 32-byte half and slice one ``vpmaddubsw`` per (row, token) into int16
sums, widened by one ``vpmaddwd`` per :data:`WIDEN` chunks, as bitnet.cpp's AVX2 I2_S kernel
does.

GEMV (decode): ``prange`` over groups of rows, one row at a time, 4 accumulators (one per
slice) so 4 ``vpdpbusd`` chains overlap.  GEMM (prefill): a register tile of ``TILE`` rows x
``TOKENS`` tokens (per instruction set, :data:`TILES`): each decoded chunk feeds ``TOKENS``
tokens and each activation load feeds ``TILE`` rows (4 x 4 on zmm: 64 ``vpdpbusd`` per 4 code
loads and 16 activation loads), activations of the token group stay in L1, the group's codes
in L2.

The model's fast paths skip the generic checks: :meth:`VnniKernel.linear_fast` prepares the
activation operands in one Numba call (:func:`operands`) and calls the kernel loop directly;
:meth:`VnniKernel.linear_1` (one token, decode) is one Numba call, :func:`gemv_1`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._base import I2SKernel, pad_cols
from .intrinsics import (I32, V16x32, V64x8, array_args, dpbusd, has_vnni,  # noqa: F401
                         int64_args, isa, load64, prefetch_row, serial_twin, target_features)

__all__ = ["KERNEL", "VnniKernel", "has_vnni", "permute_x", "numpy_matmul", "operands",
           "operands_1", "gemv_1"]

BLOCK = 256   # weights per 64-byte chunk (two I2_S blocks)
#: GEMM register tile (rows x tokens) per instruction set, measured: the gate_up GEMM (2560 ->
#: 13824) on 2 threads for 8, 16 and 128 tokens, tiles alternated over 3 rounds in one session
#: (an Intel Xeon with AVX-512 VNNI and AVX-VNNI, 2026-12-02; ``--isa avx2`` for AVX2):
#: zmm 4 x 4 gave 235-281 GMAC/s against 206-225 for 2 x 4 (16 accumulators; LLVM interleaves
#: the 16 decoded slices with the vpdpbusd so they need not all be live); AVX2 (16 ymm
#: registers) 2 x 2 gave 116-125 against 97-114 for 1 x 4 (int16 sums per (row, token), see
#: _avx2_dot; 2 x 4 swung between 116 and 176, too unstable to pick).  AVX-VNNI's ymm halves
#: need twice the registers of zmm (2 x 2).  NEON (from the machine code, not timed: no ARM
#: machine here): a <16 x i32> accumulator is 4 of its 32 q registers; 1 x 4 and 2 x 2 compile
#: without spills (2 x 4: ~120 q spills per chunk; LLVM for cortex-a76 and apple-m1), and
#: 1 x 4 decodes each row once for 4 tokens (24 shift/AND per 64 sdot; 2 x 2: 48)
TILES = {"avx512vnni": (4, 4), "avxvnni": (2, 2), "avx2": (2, 2), "neondot": (1, 4),
         "portable": (2, 4)}
TILE, TOKENS = TILES[isa()]  # the target of this process's compiles (part of the cache key)
ROWS = 32           # rows per parallel work item (their codes stay in L2 while tokens stream)
SHIFTS = (6, 4, 2, 0)
WIDEN = 4  # AVX2: chunks whose int16 sums are added before one widening (exact up to 5)
AHEAD = 4  # decode GEMV: rows prefetched ahead (measured best of 0, 4, 8, 16, 32)


# --- numpy versions ------------------------------------------------------------------------------

def permute_x(x: np.ndarray) -> np.ndarray:
    """Activations int8 ``[T, kp]`` (kp a multiple of 256) -> the chunk order of the codes,
    int8 ``[T, kp]``: per chunk ``[b0 s0, b1 s0, b0 s1, b1 s1, b0 s2, b1 s2, b0 s3, b1 s3]``
    (32 values each)."""
    t, kp = x.shape
    return np.ascontiguousarray(x.reshape(t, kp // BLOCK, 2, 4, 32).transpose(0, 1, 3, 2, 4)
                                .reshape(t, kp))


def numpy_matmul(codes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy version of the kernel's own steps: ``codes`` uint8 ``[out, kp/4]``, ``x`` int8
    ``[T, kp]`` -> int32 ``[T, out]``.  Decode each 64-byte chunk to 4 slices of 64 code bytes,
    dot with the permuted activations in groups of 4 (what one ``vpdpbusd`` lane adds), subtract
    ``sum(x)``."""
    out = codes.shape[0]
    v = codes.reshape(out, -1, 1, 64)                                     # [out, chunks, 1, 64]
    c = (v >> np.array(SHIFTS, np.uint8).reshape(1, 1, 4, 1)) & 3          # [out, chunks, 4, 64]
    xp = permute_x(x).astype(np.int32).reshape(x.shape[0], -1)
    lanes = (c.reshape(1, out, -1, 4).astype(np.int32)                    # groups of 4 bytes
             * xp.reshape(x.shape[0], 1, -1, 4)).sum(axis=3)              # = vpdpbusd lanes
    return (lanes.sum(axis=2) - x.astype(np.int32).sum(axis=1)[:, None]).astype(np.int32)


# --- the intrinsic -------------------------------------------------------------------------------

_V32x8, _V16x16, _V8x32 = (ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 16),
                           ir.VectorType(I32, 8))


def _llvm(builder, name, ret, operands):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ret, [o.type for o in operands]), name)
    return builder.call(fn, operands)


def _avx2_chunk(builder, crow, xrow, chunk, part):
    """One 64-byte chunk of codes per row on AVX2, a ``len(crow) x len(xrow)`` tile: per 32-byte
    half and slice, ``vpmaddubsw`` (codes x activations -> int16 pairs) added into the int16 sums
    ``part[r][j]`` (pointers to ``<16 x i16>``)."""
    i64 = ir.IntType(64)
    three = ir.Constant(_V32x8, [3] * 32)
    sums = [[builder.load(p) for p in row] for row in part]
    for h in range(2):
        v = [builder.load(builder.bitcast(builder.gep(c, [builder.add(builder.mul(
            chunk, i64(64)), i64(32 * h))]), _V32x8.as_pointer()), align=1) for c in crow]
        for s, shift in enumerate(SHIFTS):
            cs = [builder.and_(builder.lshr(w, ir.Constant(_V32x8, [shift] * 32)), three)
                  for w in v]
            for j, xr in enumerate(xrow):
                off = builder.add(builder.mul(chunk, i64(BLOCK)), i64(64 * s + 32 * h))
                xv = builder.load(builder.bitcast(builder.gep(xr, [off]), _V32x8.as_pointer()),
                                  align=1)
                for r, c in enumerate(cs):
                    m = _llvm(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16x16, [c, xv])
                    sums[r][j] = builder.add(sums[r][j], m)
    for row, srow in zip(part, sums):
        for p, v in zip(row, srow):
            builder.store(v, p)


def _avx2_dot(builder, crow, xrow, nchunks, acc):
    """The AVX2 loop of :func:`_make_dot`: int16 sums per (row, token) over ``WIDEN`` chunks,
    then ONE ``vpmaddwd`` each into the int32 sums ``acc`` (pointers to ``<8 x i32>``): the
    widening and the int32 sums leave the inner loop, so a 1 x 8 tile's 8 int16 sums, a row's
    codes and one activation load fit in AVX2's 16 ymm registers.  Exact: an int16 lane adds
    8 * WIDEN pairs, each at most 2 * 3 * 128 (codes <= 3): 24576 < 32767."""
    i64 = ir.IntType(64)
    zero16, ones = ir.Constant(_V16x16, None), ir.Constant(_V16x16, [1] * 16)
    part = [[cgutils.alloca_once_value(builder, zero16) for _ in xrow] for _ in crow]
    ngroups = builder.udiv(builder.add(nchunks, i64(WIDEN - 1)), i64(WIDEN))
    with cgutils.for_range(builder, ngroups) as g:
        for row in part:
            for p in row:
                builder.store(zero16, p)
        lo = builder.mul(g.index, i64(WIDEN))
        hi = builder.select(builder.icmp_unsigned("<", builder.add(lo, i64(WIDEN)), nchunks),
                            builder.add(lo, i64(WIDEN)), nchunks)
        with cgutils.for_range_slice(builder, lo, hi, i64(1)) as (chunk, _):
            _avx2_chunk(builder, crow, xrow, chunk, part)
        for prow, arow in zip(part, acc):
            for p, a in zip(prow, arow):
                w = _llvm(builder, "llvm.x86.avx2.pmadd.wd", _V8x32, [builder.load(p), ones])
                builder.store(builder.add(builder.load(a), w), a)


def _vnni_dot(builder, crow, xrow, nchunks, acc, target):
    """The loop of :func:`_make_dot` on every other target: one :func:`dpbusd` per (row, token,
    slice) into ``acc[r][j][s % len(acc[r][j])]`` (pointers to ``<16 x i32>``)."""
    i64 = ir.IntType(64)
    with cgutils.for_range(builder, nchunks) as loop:
        cs = []
        for c in crow:
            v = load64(builder, c, builder.mul(loop.index, i64(64)))
            cs.append([builder.and_(builder.lshr(v, ir.Constant(V64x8, [s] * 64)),
                                    ir.Constant(V64x8, [3] * 64)) for s in SHIFTS])
        for j, xr in enumerate(xrow):
            xv = [load64(builder, xr, builder.add(builder.mul(loop.index, i64(BLOCK)),
                                                  i64(64 * s))) for s in range(len(SHIFTS))]
            for r in range(len(crow)):
                for s in range(len(SHIFTS)):
                    a = acc[r][j][s % len(acc[r][j])]
                    builder.store(dpbusd(builder, builder.load(a), cs[r][s], xv[s], target, 3),
                                  a)


def _make_dot(rows: int, tokens: int):
    """An intrinsic ``dot(codes, o, xp, t0, acc)`` for a ``rows x tokens`` tile:
    ``acc[r * tokens + j] = sum_k c[o + r, k] * x[t0 + j, k]`` (int32), codes uint8 ``[out, kp/4]``,
    xp the permuted int8 ``[T, kp]``.

    Per 64-byte chunk: ``rows`` loads of codes, ``(v >> shift) & 3`` per slice, one ``vpdpbusd``
    per (row, token, slice); each activation load feeds ``rows`` of them.  At least 4 accumulators
    so that 4 ``vpdpbusd`` chains run at once (a 1x1 tile keeps one per slice).  AVX2 has its own
    loop (:func:`_avx2_dot`: 256-bit halves, int16 sums widened once per :data:`WIDEN` chunks).
    """
    split = max(1, 4 // (rows * tokens))  # accumulators per (row, token)

    def codegen(context, builder, signature, args):
        target = isa(target_features(context))
        i64 = ir.IntType(64)
        ca, xa, oa = array_args(context, builder, signature, args, 0, 2, 4)
        o, t0 = int64_args(context, builder, signature, args, 1, 3)
        nbytes = cgutils.unpack_tuple(builder, ca.shape, 2)[1]
        kp = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        crow = [builder.gep(ca.data, [builder.mul(builder.add(o, i64(r)), nbytes)])
                for r in range(rows)]
        xrow = [builder.gep(xa.data, [builder.mul(builder.add(t0, i64(j)), kp)])
                for j in range(tokens)]
        avx2 = target == "avx2"
        vec = _V8x32 if avx2 else V16x32
        nacc = 1 if avx2 else split
        zero = ir.Constant(vec, None)
        acc = [[[cgutils.alloca_once_value(builder, zero) for _ in range(nacc)]
                for _ in range(tokens)] for _ in range(rows)]
        if avx2:
            _avx2_dot(builder, crow, xrow, builder.udiv(nbytes, i64(64)),
                      [[a[0] for a in row] for row in acc])
        else:
            _vnni_dot(builder, crow, xrow, builder.udiv(nbytes, i64(64)), acc, target)
        reduce = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(I32, [vec]),
            f"llvm.vector.reduce.add.v{vec.count}i32")
        for r in range(rows):
            for j in range(tokens):
                tot = builder.load(acc[r][j][0])
                for a in acc[r][j][1:]:
                    tot = builder.add(tot, builder.load(a))
                builder.store(builder.call(reduce, [tot]),
                              builder.gep(oa.data, [i64(r * tokens + j)]))
        return context.get_dummy_value()

    def dot(typingctx, codes, o, xp, t0, acc):
        return types.void(codes, o, xp, t0, acc), codegen

    dot.__name__ = f"_dot_{rows}x{tokens}"
    return intrinsic(dot)


_dot_1x1 = _make_dot(1, 1)                # decode (GEMV) and the leftovers of a GEMM
_dot_tile = _make_dot(TILE, TOKENS)       # GEMM: TILE rows x TOKENS tokens share loads


@njit(cache=True)
def _store(y, scale, xsum, o, t, s):
    if scale is None:
        y[t, o] = s - xsum[t]
    else:
        y[t, o] = np.float32(s - xsum[t]) * scale[t]


@njit(parallel=True, cache=True)
def _vnni(codes, xp, xsum, y, scale):
    """codes uint8 [out, kp/4], xp permuted int8 [T, kp], xsum int32 [T] -> y [T, out].

    prange over groups of ROWS rows; inside, the tokens in groups of TOKENS, each group walking
    the group's rows in TILE x TOKENS tiles (codes of the group stay in L2, activations in L1).
    """
    n_out, n_tok = codes.shape[0], xp.shape[0]
    for g in prange((n_out + ROWS - 1) // ROWS):
        acc = np.empty(TILE * TOKENS, np.int32)
        o0, o1 = g * ROWS, min(g * ROWS + ROWS, n_out)
        t_full = n_tok - n_tok % TOKENS
        for t0 in range(0, t_full, TOKENS):
            o = o0
            while o + TILE <= o1:
                _dot_tile(codes, o, xp, t0, acc)
                for r in range(TILE):
                    for j in range(TOKENS):
                        _store(y, scale, xsum, o + r, t0 + j, acc[r * TOKENS + j])
                o += TILE
            for oo in range(o, o1):  # leftover rows
                for t in range(t0, t0 + TOKENS):
                    _dot_1x1(codes, oo, xp, t, acc)
                    _store(y, scale, xsum, oo, t, acc[0])
        for oo in range(o0, o1):  # leftover tokens (all of them for a GEMV)
            for t in range(t_full, n_tok):
                _dot_1x1(codes, oo, xp, t, acc)
                _store(y, scale, xsum, oo, t, acc[0])


# --- the model's fast paths ----------------------------------------------------------------------

@njit(cache=True, parallel=True)
def operands(xq):
    """The kernel's activation operands in one call: int8 ``[T, k]`` -> ``(xp int8 [T, kp],
    xsum int32 [T])``, ``xp`` zero-padded to ``kp`` (a multiple of 256) and permuted like
    :func:`permute_x`: within each 256-chunk, run ``(s, b)`` of 32 values comes from
    ``x[128b + 32s : 128b + 32s + 32]``.  Same result as :meth:`VnniKernel._run`'s NumPy
    preparation, without its ~10 us of small NumPy calls (4 matmuls x 30 layers per token)."""
    t, k = xq.shape
    kp = (k + 255) // 256 * 256
    xp = np.zeros((t, kp), np.int8)
    xsum = np.zeros(t, np.int32)
    for r in prange(t):
        x = np.zeros(kp, np.int8)  # the row, zero-padded
        s = np.int32(0)
        for j in range(k):
            x[j] = xq[r, j]
            s += np.int32(xq[r, j])
        xsum[r] = s
        for c in range(kp // 256):
            for run in range(8):  # run = 2 s + b
                src = 256 * c + 128 * (run % 2) + 32 * (run // 2)
                dst = 256 * c + 32 * run
                for i in range(32):
                    xp[r, dst + i] = x[src + i]
    return xp, xsum


# One token is a few us of operand work: decode takes the same function without threads.
operands_1 = serial_twin(operands)


@njit(cache=True, parallel=True)
def gemv_1(codes, xq, x_scale, w_scale):
    """One token through a ``vnni``-packed BitLinear in one call: ``codes`` uint8 ``[out, kp/4]``,
    ``xq`` int8 ``[1, k]``, ``x_scale`` float32 ``[1]``, ``w_scale`` a float -> float32
    ``[1, out]``, the same bits as :meth:`VnniKernel.linear`.

    The operands are prepared serially (:func:`operands_1`), then the rows run the kernel's row
    dot with a software prefetch of the row ``AHEAD`` rows on: a row is only 640 bytes at the
    2B4T shape, and the hardware prefetcher alone left this GEMV at ~12 GB/s on 2 threads, the
    explicit prefetch reaches ~19 GB/s.
    """
    xp, xsum = operands_1(xq)
    n = codes.shape[0]
    y = np.empty((1, n), np.float32)
    scale = x_scale[0] * np.float32(w_scale)
    for g in prange((n + 31) // 32):
        acc = np.empty(8, np.int32)
        for o in range(g * 32, min(g * 32 + 32, n)):
            prefetch_row(codes, o + AHEAD)
            _dot_1x1(codes, o, xp, 0, acc)
            y[0, o] = np.float32(acc[0] - xsum[0]) * scale
    return y


class VnniKernel(I2SKernel):
    """I2_S rows padded to :data:`BLOCK` = 256 weights; :meth:`linear_fast` and
    :meth:`linear_1` are the model's unchecked fast paths."""

    name = "vnni"
    summary = ("I2_S bytes decoded in registers, u8 x s8 byte dot products (vpdpbusd on VNNI CPUs, "
               "vpmaddubsw+vpmaddwd on AVX2, sdot on ARM64), minus sum(x)")
    fast_gemm = True  # tokens share the decode, 4 at a time
    block = BLOCK     # one 64-byte load = two I2_S blocks

    def _run(self, arrays, x, y, scale):
        xp = permute_x(pad_cols(x, BLOCK))
        xsum = x.astype(np.int32).sum(axis=1).astype(np.int32)
        _vnni(arrays[0], xp, xsum, y, scale)

    def linear_fast(self, packed, xq, x_scale, w_scale):
        """:meth:`linear` without checks, operands from :func:`operands`: ``xq`` int8
        ``[T, in]`` C-contiguous, ``x_scale`` float32 ``[T]`` -> float32 ``[T, out]``."""
        xp, xsum = operands(xq)
        y = np.empty((len(xq), packed.out), np.float32)
        _vnni(packed.arrays[0], xp, xsum, y, x_scale * np.float32(w_scale))
        return y

    def linear_1(self, packed, xq, x_scale, w_scale):
        """One token in one Numba call (:func:`gemv_1`): ``xq`` int8 ``[1, in]``, ``x_scale``
        float32 ``[1]`` -> float32 ``[1, out]``."""
        return gemv_1(packed.arrays[0], xq, x_scale, w_scale)


KERNEL = VnniKernel()
