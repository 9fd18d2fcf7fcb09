"""The output head as an int8 x int8 product: ``vpdpbusd`` over the int8 embedding table.

The tied head reads all 128256 x 2560 table entries for every generated token: 328 MB as int8,
more than half of what a decode step reads.  Multiplying int8 rows by a float hidden state
costs a conversion per entry; quantizing the hidden state to int8 as well turns the row dot
into the same byte dot product the ternary kernels use (:mod:`.vnni`), so the head runs at
memory speed.

Activations: blocks of ``QK = 256`` values, one absmax scale each (llama.cpp quantizes the
activations of its int8/k-quant heads the same way, ``Q8_K``), so one outlier in the hidden
state only coarsens its own block.

``vpdpbusd`` multiplies *unsigned* by signed bytes.  The table's int8 entries ``w`` become the
unsigned ``w ^ 0x80 = w + 128`` in the register (one XOR), the activations stay signed::

    sum_i (w_i + 128) * x_i = sum_i w_i * x_i + 128 * sum_i x_i

and the correction ``128 * sum_b(s_b * sum_{i in b} x_i)`` is one number per token, computed
once.  AVX2 has no ``vpdpbusd``: there the signed table is multiplied as
``|w| x (x * sign(w))`` (``vpabsb``, ``vpsignb``, ``vpmaddubsw``, ``vpmaddwd``; exact, no
correction), half the instructions of splitting ``w + 128`` into two unsigned halves.  ARM64's
``sdot`` (``"neondot"``) multiplies signed by signed bytes: the table as it is, no correction.

Per row and block: 4 x (one 64-byte table load, one XOR, one activation load from L1, one
``vpdpbusd``), then the 16 int32 lanes are converted to float and multiplied by the block
scale into 16 float lanes; one horizontal sum per row at the end.

    >>> xq, xs, corr = quantize_blocks(x)         # x float32 [T, n]
    >>> logits = head_logits(x, table, row_scale)  # float32 [T, V], ≈ x @ (table * row_scale).T
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .intrinsics import (I32, V16x32, V16xf, V64x8, accumulate_scaled, array_args, dpbusd,
                         dpbusd_sum, int64_args, isa, load64, prefetch_row, reduce_sum, sdot,
                         target_features)
from .intrinsics import prefetch  # noqa: F401  (its old home; kept importable)

__all__ = ["QK", "G4", "quantize_blocks", "numpy_head_logits", "head_logits", "quantize_rows_int4",
           "dequantize_rows_int4", "numpy_head_logits_int4", "head_logits_int4"]

QK = 256       # activation block: 4 x 64 bytes
AHEAD = 4      # rows prefetched ahead: rows are streamed once from DRAM
G4 = 128       # int4 table: weights per group (one scale each), 64 bytes of nibbles
ROWS = 64      # table rows per parallel work item


# --- numpy reference ------------------------------------------------------------------------------

def quantize_blocks(x: np.ndarray):
    """Blockwise absmax int8: float32 ``[T, n]`` (n a multiple of QK) ->
    ``(xq int8 [T, n], scale float32 [T, n/QK], corr float32 [T])`` with
    ``x ≈ xq * scale`` per block and ``corr = 128 * sum_b scale_b * sum(xq in b)``."""
    t, n = x.shape
    if n % QK:
        raise ValueError(f"hidden size {n} must be a multiple of {QK} (pad the table and x)")
    xb = x.reshape(t, n // QK, QK)
    amax = np.maximum(np.abs(xb).max(axis=2), np.float32(1e-12)).astype(np.float32)
    xq = np.clip(np.rint(xb * (np.float32(127.0) / amax)[..., None]), -127, 127).astype(np.int8)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    sums = scale * xq.astype(np.int32).sum(axis=2)
    corr = np.float32(128.0) * sums.sum(axis=1, dtype=np.float32)
    return xq.reshape(t, n), scale, corr.astype(np.float32)


def numpy_head_logits(x: np.ndarray, table: np.ndarray, row_scale: np.ndarray) -> np.ndarray:
    """NumPy version of the kernel's arithmetic: ``x`` float32 ``[T, n]``, ``table`` int8
    ``[V, n]``, ``row_scale`` float32 ``[V]`` -> float32 ``[T, V]``."""
    xq, scale, corr = quantize_blocks(x)
    t, n = xq.shape
    u = table.astype(np.int32) + 128                                   # what the XOR makes
    blocks = np.einsum("vbi,tbi->tvb", u.reshape(-1, n // QK, QK),
                       xq.astype(np.int32).reshape(t, n // QK, QK))   # int32 block dots
    dots = (blocks.astype(np.float32) * scale[:, None, :]).sum(axis=2) - corr[:, None]
    return (dots * row_scale[None, :]).astype(np.float32)


# --- the intrinsic --------------------------------------------------------------------------------

#: AVX2 multiplies the int8 table as |w| x (x * sign(w)) (:func:`_signed_block`) and ARM64's
#: sdot signed x signed, so no +128 correction; elsewhere the flipped table ``w ^ 0x80`` and
#: ``corr``.  Chosen from the target Numba compiles for (the same at import and in every codegen
#: of the process).
SIGNED = isa() in ("avx2", "neondot")
_V32x8, _V16x16, _V8x32 = (ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 16),
                           ir.VectorType(I32, 8))


def _llvm(builder, name, ret, operands):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ret, [o.type for o in operands]), name)
    return builder.call(fn, operands)


def _signed_block(builder, trow, xrow, base):
    """AVX2: int32 lanes ``<16 x i32>`` summing to ``sum_i w_i * x_i`` over the 256 signed bytes
    at ``base``: per 32 bytes ``vpabsb`` + ``vpsignb`` + ``vpmaddubsw`` (|w| unsigned, x with w's
    sign) + ``vpmaddwd``, half the work of splitting ``w ^ 0x80`` into two unsigned halves.
    Exact: a ``vpmaddubsw`` pair is at most 2 * 128 * 127 = 32512 (x in [-127, 127])."""
    i64 = ir.IntType(64)
    ones = ir.Constant(_V16x16, [1] * 16)
    halves = [None, None]
    for k in range(QK // 32):
        off = builder.add(base, i64(32 * k))
        w, x = (builder.load(builder.bitcast(builder.gep(row, [off]), _V32x8.as_pointer()),
                             align=1) for row in (trow, xrow))
        aw = _llvm(builder, "llvm.abs.v32i8", _V32x8, [w, ir.Constant(ir.IntType(1), 0)])
        sx = _llvm(builder, "llvm.x86.avx2.psign.b", _V32x8, [x, w])
        m = _llvm(builder, "llvm.x86.avx2.pmadd.wd", _V8x32,
                  [_llvm(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16x16, [aw, sx]), ones])
        h = halves[k % 2]
        halves[k % 2] = m if h is None else builder.add(h, m)
    return builder.shuffle_vector(halves[0], halves[1],
                                  ir.Constant(ir.VectorType(I32, 16), list(range(16))))


def _table_chunks(builder, target, trow, base):
    """IR: a block's ``QK`` table bytes at ``trow + base`` as four ``<64 x i8>`` operands,
    flipped to ``w ^ 0x80`` unless :data:`SIGNED` (loaded and flipped once for a token tile)."""
    i64 = ir.IntType(64)
    chunks = [load64(builder, trow, builder.add(base, i64(64 * s))) for s in range(QK // 64)]
    if target == "neondot":
        return chunks
    flip = ir.Constant(V64x8, [0x80] * 64)
    return [builder.xor(w, flip) for w in chunks]


def _block_dot_chained(builder, target, chunks, xrow, base):
    """IR: one token's block dot against the table ``chunks`` of :func:`_table_chunks`, as one
    chain of 4 dot instructions into a single accumulator.  The same int32 lanes as
    :func:`_block_dot` (integer adds in any order give the same bits) with 3 vector adds
    fewer; a tile's tokens are independent chains, so the chain latency is hidden."""
    i64 = ir.IntType(64)
    acc = ir.Constant(V16x32, None)
    for s, w in enumerate(chunks):
        x = load64(builder, xrow, builder.add(base, i64(64 * s)))
        acc = sdot(builder, acc, w, x) if target == "neondot" else dpbusd(
            builder, acc, w, x, target, 255)
    return acc


def _block_dot(builder, target, trow, xrow, base):
    """IR: 16 int32 lanes summing to one block's byte dot (``QK`` table bytes at ``trow + base``
    with the activations at ``xrow + base``), the flipped ``w ^ 0x80`` unless :data:`SIGNED`."""
    i64 = ir.IntType(64)
    if target == "avx2":
        return _signed_block(builder, trow, xrow, base)
    if target == "neondot":  # 4 independent chains of 4 sdot, no flip
        accs = [sdot(builder, ir.Constant(V16x32, None),
                     *(load64(builder, row, builder.add(base, i64(64 * s)))
                       for row in (trow, xrow))) for s in range(QK // 64)]
    else:
        flip = ir.Constant(V64x8, [0x80] * 64)
        accs = []
        for s in range(QK // 64):  # 4 independent vpdpbusd chains
            off = builder.add(base, i64(64 * s))
            w = builder.xor(load64(builder, trow, off), flip)
            accs.append(dpbusd(builder, ir.Constant(V16x32, None), w,
                               load64(builder, xrow, off), target, 255))
    return builder.add(builder.add(accs[0], accs[1]), builder.add(accs[2], accs[3]))


def _row_dots_codegen(tokens: int, chain: bool = True):
    """Codegen of a row's dot with ``tokens`` consecutive tokens ``t .. t+tokens-1``: the block
    loop emits each token's block dot in one loop body, so LLVM loads (and flips) each table
    chunk once for all of them.  Each token's float work is the same, in the same order, as for
    one token alone, so a token's logit has the same bits whatever its batch."""
    def codegen(context, builder, signature, args):
        target = isa(target_features(context))
        i64 = ir.IntType(64)
        ta, xa, sa = array_args(context, builder, signature, args, 0, 2, 3)
        r64, t64 = int64_args(context, builder, signature, args, 1, 4)
        n = cgutils.unpack_tuple(builder, ta.shape, 2)[1]
        nb = cgutils.unpack_tuple(builder, sa.shape, 2)[1]
        trow = builder.gep(ta.data, [builder.mul(r64, n)])
        rows = [builder.add(t64, i64(j)) for j in range(tokens)]
        xrows = [builder.gep(xa.data, [builder.mul(t, n)]) for t in rows]
        srows = [builder.gep(sa.data, [builder.mul(t, nb)]) for t in rows]
        faccs = [cgutils.alloca_once_value(builder, ir.Constant(V16xf, None)) for _ in rows]
        chained = chain and tokens > 1 and target != "avx2"
        with cgutils.for_range(builder, nb) as loop:
            base = builder.mul(loop.index, i64(QK))
            chunks = _table_chunks(builder, target, trow, base) if chained else None
            for xrow, srow, facc in zip(xrows, srows, faccs):
                tot = (_block_dot_chained(builder, target, chunks, xrow, base) if chained
                       else _block_dot(builder, target, trow, xrow, base))
                accumulate_scaled(builder, facc, tot, builder.load(builder.gep(srow, [loop.index])))
        if tokens == 1:
            return reduce_sum(builder, faccs[0])
        res = array_args(context, builder, signature, args, 5)[0]
        for j, facc in enumerate(faccs):
            builder.store(reduce_sum(builder, facc), builder.gep(res.data, [i64(j)]))
        return context.get_dummy_value()
    return codegen


@intrinsic
def _row_dot(typingctx, table, r, xq, scale, t):
    """float32 ``sum_b scale[t, b] * sum_{i in b} (table[r, i] + 128) * xq[t, i]`` (without the
    ``+ 128`` where :data:`SIGNED`)."""
    return types.float32(table, r, xq, scale, t), _row_dots_codegen(1)


TOKENS = 8  # tokens per table-row pass in a batch (a decode step of several sequences, prefill)
TAIL = 4    # the smaller tile for what is left of a batch (then one token at a time)


@intrinsic
def _row_dot_tile(typingctx, table, r, xq, scale, t, res):
    """``res[j] = _row_dot(table, r, xq, scale, t + j)`` for ``j < TOKENS``, same bits."""
    return types.void(table, r, xq, scale, t, res), _row_dots_codegen(TOKENS)


@intrinsic
def _row_dot_tail(typingctx, table, r, xq, scale, t, res):
    """``res[j] = _row_dot(table, r, xq, scale, t + j)`` for ``j < TAIL``, same bits."""
    return types.void(table, r, xq, scale, t, res), _row_dots_codegen(TAIL)


@njit(cache=True)
def _quantize_blocks(x):
    """Numba twin of :func:`quantize_blocks` (same rounding: round half to even)."""
    t, n = x.shape
    nb = n // QK
    xq = np.empty((t, n), np.int8)
    scale = np.empty((t, nb), np.float32)
    corr = np.zeros(t, np.float32)
    for j in range(t):
        for b in range(nb):
            blk = x[j, b * QK:(b + 1) * QK]
            amax = np.float32(1e-12)
            for i in range(QK):
                amax = max(amax, abs(blk[i]))
            inv = np.float32(127.0) / amax
            s = np.int32(0)
            for i in range(QK):
                q = np.int32(min(max(np.rint(blk[i] * inv), -127.0), 127.0))
                xq[j, b * QK + i] = q
                s += q
            scale[j, b] = amax / np.float32(127.0)
            corr[j] += np.float32(128.0) * (scale[j, b] * np.float32(s))
    return xq, scale, corr


@njit(cache=True, parallel=True)
def _head(table, row_scale, xq, scale, corr, out):
    """``out[j, r] = (row dot of token j with table row r - corr[j]) * row_scale[r]``.

    prange over groups of ROWS rows (160 KB at the 2B4T width: they stay in L2); inside, the
    tokens in tiles of TOKENS (then TAIL, then one by one), each tile walking the group's rows.
    The first pass brings the rows from DRAM, so the table is streamed once per call whatever
    the number of tokens, and a tile's activations (8 x 2560 bytes) stay in L1.
    """
    v, t = table.shape[0], xq.shape[0]
    for g in prange((v + ROWS - 1) // ROWS):
        res = np.empty(TOKENS, np.float32)
        r0, r1 = g * ROWS, min(g * ROWS + ROWS, v)
        j0 = 0
        while j0 < t:
            if t - j0 >= TAIL:
                width = TOKENS if t - j0 >= TOKENS else TAIL
                for r in range(r0, r1):
                    if j0 == 0:
                        prefetch_row(table, r + AHEAD)
                    if width == TOKENS:
                        _row_dot_tile(table, r, xq, scale, j0, res)
                    else:
                        _row_dot_tail(table, r, xq, scale, j0, res)
                    for j in range(width):
                        out[j0 + j, r] = (res[j] - corr[j0 + j]) * row_scale[r]
            else:  # one token (a single-sequence decode step: its own loop, as before)
                width = 1
                for r in range(r0, r1):
                    if j0 == 0:
                        prefetch_row(table, r + AHEAD)
                    out[j0, r] = (_row_dot(table, r, xq, scale, j0) - corr[j0]) * row_scale[r]
            j0 += width


def head_logits(x: np.ndarray, table: np.ndarray, row_scale: np.ndarray) -> np.ndarray:
    """Logits ``≈ x @ (table * row_scale[:, None]).T`` with ``x`` quantized to int8 in blocks.

    ``x`` float32 ``[T, n]``, ``table`` int8 ``[V, n]`` (C-contiguous, entries in [-127, 127]),
    ``row_scale`` float32 ``[V]`` -> float32 ``[T, V]``.  ``n`` must be a multiple of
    :data:`QK` (``Head`` pads smaller tables with zero columns).
    """
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or table.ndim != 2 or x.shape[1] != table.shape[1]:
        raise ValueError(f"x [T, n] and table [V, n] must agree: got {x.shape} and {table.shape}")
    if table.dtype != np.int8 or not table.flags.c_contiguous:
        raise ValueError(f"table must be C-contiguous int8, got {table.dtype}")
    if table.shape[1] % QK:
        raise ValueError(f"hidden size {table.shape[1]} must be a multiple of {QK}")
    xq, scale, corr = _quantize_blocks(x)
    if SIGNED:  # the row dots are already sum(w * x)
        corr = np.zeros_like(corr)
    out = np.empty((x.shape[0], table.shape[0]), np.float32)
    _head(table, np.ascontiguousarray(row_scale, np.float32), xq, scale, corr, out)
    return out


# --- 4-bit table ----------------------------------------------------------------------------------
# Half the bytes of the int8 table (and of what every decode step reads).  Per row, groups of
# G4 = 128 entries share one absmax scale ``d`` and hold ``q = rint(w / d)`` in [-7, 7], stored
# as the nibble ``u = q + 8``.  Byte ``j`` of a group's 64 bytes holds entry ``j`` in its low
# nibble and entry ``64 + j`` in its high nibble, so one 64-byte load gives, after an AND and
# a shift, the two 64-byte operands of two ``vpdpbusd`` (unsigned nibbles x signed activations).
# The ``+8`` comes back as ``-8 * sum(x in group)``, one integer per token and group, which
# starts the group's accumulator.

def quantize_rows_int4(w: np.ndarray, chunk: int = 8192):
    """float32 ``[V, n]`` (n a multiple of G4) -> ``(nibbles uint8 [V, n/2],
    scale float32 [V, n/G4])``."""
    v, n = w.shape
    if n % G4:
        raise ValueError(f"hidden size {n} must be a multiple of {G4} for the int4 head")
    packed = np.empty((v, n // 2), np.uint8)
    scale = np.empty((v, n // G4), np.float32)
    for r in range(0, v, chunk):  # in row chunks: a float copy of the whole table is 1.3 GB
        g = np.asarray(w[r:r + chunk], np.float32).reshape(-1, n // G4, G4)
        d = np.maximum(np.abs(g).max(axis=2), np.float32(1e-12)) / np.float32(7.0)
        u = (np.clip(np.rint(g / d[..., None]), -7, 7) + 8).astype(np.uint8)
        packed[r:r + chunk] = (u[..., :64] | (u[..., 64:] << 4)).reshape(len(g), n // 2)
        scale[r:r + chunk] = d
    return packed, scale


def dequantize_rows_int4(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rows of the int4 table back to float32 ``[rows, n]``."""
    b = packed.reshape(len(packed), -1, 64)
    u = np.concatenate([b & 15, b >> 4], axis=2).astype(np.float32) - np.float32(8.0)
    return (u * scale[..., None]).reshape(len(packed), -1)


def numpy_head_logits_int4(x: np.ndarray, packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """NumPy version of the int4 kernel's arithmetic -> float32 ``[T, V]``."""
    n = x.shape[1]
    xq, xs, _ = quantize_blocks(np.pad(x, ((0, 0), (0, -n % QK))))
    t, xq = len(x), xq[:, :n]
    b = packed.reshape(len(packed), n // G4, 64).astype(np.int32)
    u = np.concatenate([b & 15, b >> 4], axis=2)                                # [V, G, 128]
    xg = xq.astype(np.int32).reshape(t, n // G4, G4)
    dots = np.einsum("vgi,tgi->tvg", u, xg) - 8 * xg.sum(axis=2)[:, None, :]    # int32 [T, V, G]
    ds = scale[None, :, :] * np.repeat(xs, QK // G4, axis=1)[:, None, :n // G4]
    return (dots.astype(np.float32) * ds).sum(axis=2).astype(np.float32)


def _row_dots4_codegen(tokens: int):
    """Codegen of an int4 row's dot with ``tokens`` consecutive tokens ``t .. t+tokens-1``: each
    group's 64 bytes of nibbles are loaded and split (AND, shift) once for all of them, then
    each token does exactly the integer and float work it does alone (same bits)."""
    def codegen(context, builder, signature, args):
        target = isa(target_features(context))
        i64 = ir.IntType(64)
        pa, xa, sa, ma, da = array_args(context, builder, signature, args, 0, 2, 3, 4, 5)
        r64, t64 = int64_args(context, builder, signature, args, 1, 6)
        half = cgutils.unpack_tuple(builder, pa.shape, 2)[1]
        ng = cgutils.unpack_tuple(builder, da.shape, 2)[1]
        nb = cgutils.unpack_tuple(builder, sa.shape, 2)[1]
        prow = builder.gep(pa.data, [builder.mul(r64, half)])
        xn = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        drow = builder.gep(da.data, [builder.mul(r64, ng)])
        rows = [builder.add(t64, i64(j)) for j in range(tokens)]
        xrows = [builder.gep(xa.data, [builder.mul(t, xn)]) for t in rows]
        srows = [builder.gep(sa.data, [builder.mul(t, nb)]) for t in rows]
        mrows = [builder.gep(ma.data, [builder.mul(t, ng)]) for t in rows]
        faccs = [cgutils.alloca_once_value(builder, ir.Constant(V16xf, None)) for _ in rows]
        low, four = ir.Constant(V64x8, [15] * 64), ir.Constant(V64x8, [4] * 64)
        with cgutils.for_range(builder, ng) as loop:
            v = load64(builder, prow, builder.mul(loop.index, i64(64)))
            lo, hi = builder.and_(v, low), builder.lshr(v, four)
            xoff = builder.mul(loop.index, i64(G4))
            dg = builder.load(builder.gep(drow, [loop.index]))
            for xrow, srow, mrow, facc in zip(xrows, srows, mrows, faccs):
                corr = builder.load(builder.gep(mrow, [loop.index]))      # -8 * sum(x in g)
                acc = builder.insert_element(ir.Constant(V16x32, None), corr, ir.Constant(I32, 0))
                acc = dpbusd_sum(builder, acc, [
                    (lo, load64(builder, xrow, xoff)),
                    (hi, load64(builder, xrow, builder.add(xoff, i64(64))))], target, 15)
                d = builder.fmul(dg, builder.load(
                    builder.gep(srow, [builder.udiv(loop.index, i64(QK // G4))])))
                accumulate_scaled(builder, facc, acc, d)
        if tokens == 1:
            return reduce_sum(builder, faccs[0])
        res = array_args(context, builder, signature, args, 7)[0]
        for j, facc in enumerate(faccs):
            builder.store(reduce_sum(builder, facc), builder.gep(res.data, [i64(j)]))
        return context.get_dummy_value()
    return codegen


@intrinsic
def _row_dot4(typingctx, packed, r, xq, xs, xsum, scale, t):
    """float32 ``sum_g scale[r, g] * xs[t, g // 2] * sum_{i in g} (u_i - 8) * xq[t, i]``."""
    return types.float32(packed, r, xq, xs, xsum, scale, t), _row_dots4_codegen(1)


@intrinsic
def _row_dot4_tile(typingctx, packed, r, xq, xs, xsum, scale, t, res):
    """``res[j] = _row_dot4(packed, r, xq, xs, xsum, scale, t + j)`` for ``j < TOKENS``."""
    return (types.void(packed, r, xq, xs, xsum, scale, t, res), _row_dots4_codegen(TOKENS))


@intrinsic
def _row_dot4_tail(typingctx, packed, r, xq, xs, xsum, scale, t, res):
    """``res[j] = _row_dot4(packed, r, xq, xs, xsum, scale, t + j)`` for ``j < TAIL``."""
    return (types.void(packed, r, xq, xs, xsum, scale, t, res), _row_dots4_codegen(TAIL))


@njit(cache=True, parallel=True)
def _head4(packed, scale, xq, xs, xsum, out):
    """``out[j, r]``: token ``j``'s dot with int4 row ``r``; rows in groups of ROWS, tokens in
    tiles of TOKENS (then TAIL, then one by one) walking a group's rows, like :func:`_head`."""
    v, t = packed.shape[0], xq.shape[0]
    for g in prange((v + ROWS - 1) // ROWS):
        res = np.empty(TOKENS, np.float32)
        r0, r1 = g * ROWS, min(g * ROWS + ROWS, v)
        j0 = 0
        while j0 < t:
            if t - j0 >= TAIL:
                width = TOKENS if t - j0 >= TOKENS else TAIL
                for r in range(r0, r1):
                    if j0 == 0:
                        prefetch_row(packed, r + AHEAD)
                    if width == TOKENS:
                        _row_dot4_tile(packed, r, xq, xs, xsum, scale, j0, res)
                    else:
                        _row_dot4_tail(packed, r, xq, xs, xsum, scale, j0, res)
                    for j in range(width):
                        out[j0 + j, r] = res[j]
            else:
                width = 1
                for r in range(r0, r1):
                    if j0 == 0:
                        prefetch_row(packed, r + AHEAD)
                    out[j0, r] = _row_dot4(packed, r, xq, xs, xsum, scale, j0)
            j0 += width


def head_logits_int4(x: np.ndarray, packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Logits from the 4-bit table of :func:`quantize_rows_int4`: ``x`` float32 ``[T, n]`` ->
    float32 ``[T, V]`` (``n`` a multiple of :data:`G4`)."""
    x = np.ascontiguousarray(x, np.float32)
    n = x.shape[-1]
    if x.ndim != 2 or packed.ndim != 2 or n != 2 * packed.shape[1] or n % G4:
        raise ValueError(f"x [T, n] and packed [V, n/2] must agree, n a multiple of {G4}: "
                         f"got {x.shape} and {packed.shape}")
    if packed.dtype != np.uint8 or scale.shape != (packed.shape[0], n // G4):
        raise ValueError(f"packed must be uint8 [V, n/2] and scale [V, n/{G4}]: got "
                         f"{packed.dtype} {packed.shape}, {scale.shape}")
    xq, xs, _ = _quantize_blocks(np.pad(x, ((0, 0), (0, -n % QK))) if n % QK else x)
    xsum = (-8 * xq[:, :n].astype(np.int32).reshape(len(x), -1, G4).sum(axis=2)).astype(np.int32)
    out = np.empty((x.shape[0], packed.shape[0]), np.float32)
    _head4(packed, np.ascontiguousarray(scale, np.float32), xq, xs, xsum, out)
    return out
