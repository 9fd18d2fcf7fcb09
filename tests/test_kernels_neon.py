"""The ARM64 ``sdot`` path (instruction set ``"neondot"``): what it emits, on any host, and that
every kernel and quantized head is exact with it, on aarch64 with the dot-product extension.

The second half runs only where Numba compiles for aarch64 with ``+dotprod``: on such a machine,
or under qemu user mode (``scripts/arm64_env.sh``) told to compile for one, e.g.::

    NUMBA_CPU_NAME=cortex-a76 NUMBA_CPU_FEATURES=+neon,+fp-armv8,+dotprod \\
        BITNET_EDU_CACHE_DIR=.arm64/numba-cache-neon \\
        .arm64/python -m pytest -q -p no:cacheprovider tests/test_kernels_neon.py

(qemu-aarch64 7.2 executes ``sdot``, but LLVM finds no host features under it; see
docs/arm64-neon.md.)
"""

import platform

import numpy as np
import pytest
from llvmlite import ir

from bitnet_edu import kernels
from bitnet_edu.kernels import head, vnni
from bitnet_edu.kernels.intrinsics import ISAS, SDOT, V16x32, V64x8, dpbusd, dpbusd_sum, isa

ON_NEON = platform.machine() == "aarch64" and isa() == "neondot"
neon = pytest.mark.skipif(not ON_NEON, reason="needs Numba compiling for aarch64 with +dotprod")

# LLVM's host features of a Cortex-A76 (abridged) and of a Cortex-A72 (ARMv8.0: no dot product)
A76 = "+neon,+fp-armv8,+crc,+lse,+rdm,+rcpc,+dotprod,+fullfp16,+ssbs"
A72 = "+neon,+fp-armv8,+crc,-dotprod"


# --- any host: the choice and the IR --------------------------------------------------------------

def test_isa_maps_aarch64_features():
    assert "neondot" in ISAS and ISAS[-1] == "portable"
    assert isa(A76) == "neondot"
    assert isa(A72) == "portable"
    assert isa("+neon,+fp-armv8") == "portable"
    assert isa("+64bit,+sse2,+avx2") == "avx2"  # x86 unchanged


def test_every_isa_has_a_gemm_tile():
    assert set(vnni.TILES) == set(ISAS)


def _dpbusd_ir(target, u8_max, pairs=1):
    """The textual IR of ``f(acc <16 x i32>, u8 <64 x i8>, s8 <64 x i8>) = dpbusd(...)``
    (``pairs`` > 1: :func:`dpbusd_sum` of the same pair that many times)."""
    mod = ir.Module("probe")
    fn = ir.Function(mod, ir.FunctionType(V16x32, [V16x32, V64x8, V64x8]), "f")
    b = ir.IRBuilder(fn.append_basic_block())
    acc, u8, s8 = fn.args
    if pairs == 1:
        b.ret(dpbusd(b, acc, u8, s8, target, u8_max))
    else:
        b.ret(dpbusd_sum(b, acc, [(u8, s8)] * pairs, target, u8_max))
    return str(mod)


@pytest.mark.parametrize("u8_max,calls", [(3, 4), (15, 4), (127, 4), (255, 8)])
def test_dpbusd_emits_sdot(u8_max, calls):
    """One sdot per 16-byte quarter; above 127 a second set for the top bits
    (u8 = int8 + 256 * top)."""
    text = _dpbusd_ir("neondot", u8_max)
    assert text.count(SDOT) == calls + 1 and text.count("declare") == 1  # calls + declaration
    assert "llvm.x86" not in text
    assert _dpbusd_ir("neondot", 15, pairs=2).count(SDOT) == 2 * 4 + 1  # + the declaration


def _aarch64_machine():
    import llvmlite.binding as llvm
    try:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        target = llvm.Target.from_triple("aarch64-unknown-linux-gnu")
    except RuntimeError as e:  # an llvmlite built without the AArch64 backend
        pytest.skip(f"llvmlite has no AArch64 target: {e}")
    return llvm, target.create_target_machine(cpu="cortex-a76", features="+neon,+dotprod",
                                              opt=2)


@pytest.mark.parametrize("u8_max,want", [(3, 4), (255, 8)])
def test_ir_compiles_to_sdot_for_aarch64(u8_max, want):
    """Cross-compiled by llvmlite's own AArch64 backend: exactly the sdot instructions asked for
    (``sdot v.4s, v.16b, v.16b``), no widening multiplies."""
    llvm, tm = _aarch64_machine()
    m = llvm.parse_assembly(_dpbusd_ir("neondot", u8_max))
    m.triple, m.data_layout = tm.triple, str(tm.target_data)
    asm = tm.emit_assembly(m)
    lines = [ln.split() for ln in asm.splitlines()]
    ops = [ln[0] for ln in lines if ln and not ln[0].startswith((".", "//"))]
    assert ops.count("sdot") == want
    assert not any(op.startswith(("smull", "smlal", "umull", "mul")) for op in ops)


def test_top_bit_split_is_exact():
    """The identity dpbusd uses above 127, on all 256 x 256 byte pairs: u * s =
    int8(u) * s + 256 * (u >> 7) * s."""
    u = np.arange(256, dtype=np.int64)[:, None]
    s = np.arange(-128, 128, dtype=np.int64)[None, :]
    signed = u.astype(np.uint8).view(np.int8).astype(np.int64)
    np.testing.assert_array_equal(signed * s + 256 * (u >> 7) * s, u * s)


# --- aarch64 with +dotprod: exactness of the compiled code ----------------------------------------

def _probe(u8_max):
    """A Numba function ``f(u8 uint8 [64], s8 int8 [64]) -> int32``: the sum of the 16 lanes of
    :func:`dpbusd` for this process's target (``u8_max`` as the callers pass it)."""
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from bitnet_edu.kernels.intrinsics import I32, array_args, load64, target_features

    @intrinsic
    def lanes(typingctx, u, s):
        def codegen(context, builder, signature, args):
            ua, sa = array_args(context, builder, signature, args, 0, 1)
            zero = ir.IntType(64)(0)
            acc = dpbusd(builder, ir.Constant(V16x32, [1] * 16), load64(builder, ua.data, zero),
                         load64(builder, sa.data, zero), isa(target_features(context)), u8_max)
            red = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                I32, [V16x32]), "llvm.vector.reduce.add.v16i32")
            return builder.call(red, [acc])
        return types.int32(u, s), codegen

    return njit(lambda u, s: lanes(u, s) - 16)  # minus the 16 ones acc started with


@neon
@pytest.mark.parametrize("u8_max", [3, 15, 127, 255])
def test_dpbusd_lane_sum_exact(u8_max):
    f = _probe(u8_max)
    rng = np.random.default_rng(u8_max)
    cases = [(np.full(64, u8_max, np.uint8), np.full(64, s, np.int8)) for s in (-128, 127)]
    cases += [(rng.integers(0, u8_max + 1, 64).astype(np.uint8),
               rng.integers(-128, 128, 64).astype(np.int8)) for _ in range(20)]
    for u, s in cases:
        assert f(u, s) == int(u.astype(np.int64) @ s.astype(np.int64))


def _rand(rng, out, k, t):
    w = rng.integers(-1, 2, (out, k)).astype(np.int8)
    x = rng.integers(-128, 128, (t, k) if t else (k,)).astype(np.int8)
    return w, x


@neon
@pytest.mark.parametrize("name", kernels.available())
def test_every_kernel_exact(name):
    """Odd shapes (leftover rows / tokens of the GEMM tile, k not a multiple of 256), GEMV and GEMM,
    then the extremes: w = +-1 (and 0 stripes) against x = -128 / 127 at K = 6912."""
    kern = kernels.get(name)  # runs the self-check as well
    rng = np.random.default_rng(7)
    for out, k, t in [(37, 300, 0), (37, 300, 1), (37, 300, 5), (70, 1000, 9)]:
        w, x = _rand(rng, out, k, t)
        np.testing.assert_array_equal(kern.matmul(kern.pack(w), x), kernels.reference_matmul(w, x))
    k = 6912
    w = np.ones((5, k), np.int8)
    w[1], w[3, ::2], w[4] = -1, 0, 0
    w[4, ::3] = -1
    x = np.where(np.arange(9)[:, None] % 2 == 0, -128, 127).astype(np.int8).repeat(k, axis=1)
    p = kern.pack(w)
    for xx in (x, x[0], x[1]):
        np.testing.assert_array_equal(kern.matmul(p, xx), kernels.reference_matmul(w, xx))
    assert kern.matmul(p, x[0])[0] == -128 * k


@neon
def test_vnni_fast_paths():
    kern = kernels.get("vnni")
    w, x = _rand(np.random.default_rng(8), 67, 515, 6)
    p = kern.pack(w)
    s = np.linspace(0.5, 1.0, 6).astype(np.float32)
    want = (kernels.reference_matmul(w, x).astype(np.float64) * s[:, None] * 0.25)
    np.testing.assert_allclose(kern.linear_fast(p, x, s, 0.25), want, rtol=1e-6)
    np.testing.assert_allclose(kern.linear_1(p, x[:1].copy(), s[:1], 0.25), want[:1], rtol=1e-6)


def _sdots(f, *args):
    """How many ``sdot`` instructions LLVM emitted for ``f`` (a fresh, uncached njit function:
    inspect_asm has nothing for cached ones) called on ``args``."""
    f(*args)
    asm = f.inspect_asm(f.signatures[0])
    return sum(1 for ln in asm.splitlines() if ln.split()[:1] == ["sdot"])


@neon
def test_machine_code_has_sdot():
    from numba import njit
    assert head.SIGNED  # the int8 head multiplies the table as it is: no flip, no correction
    codes = kernels.get("vnni").pack(np.ones((vnni.TILE, 256), np.int8)).arrays[0]
    xp = np.zeros((vnni.TOKENS, 256), np.int8)
    acc = np.zeros(vnni.TILE * vnni.TOKENS, np.int32)
    tile = njit(lambda c, x, a: vnni._dot_tile(c, 0, x, 0, a))
    assert _sdots(tile, codes, xp, acc) >= 16 * vnni.TILE * vnni.TOKENS  # 4 slices x 4 quarters
    row = njit(lambda t, x, s: head._row_dot(t, 0, x, s, 0))
    table, xq = np.zeros((1, head.QK), np.int8), np.zeros((1, head.QK), np.int8)
    assert _sdots(row, table, xq, np.ones((1, 1), np.float32)) >= 16


def _extreme_int8(rng, rows, n):
    """int8 ``[rows, n]``: all -128, all 127, alternating -128/127, then random over -128..127."""
    a = rng.integers(-128, 128, (rows, n)).astype(np.int8)
    a[0], a[1] = -128, 127
    a[2] = np.where(np.arange(n) % 2 == 0, -128, 127)
    return a


@neon
def test_int8_head_exact_at_the_extremes():
    """The row dots on int8 activations -128..127 (past what quantize_blocks makes) and table
    entries -128 and 127, scales 1: every logit is an integer below 2**24, so float32 is exact."""
    from bitnet_edu.kernels import selfcheck
    selfcheck.check_head("int8")
    rng = np.random.default_rng(9)
    n = 2 * head.QK
    table, xq = _extreme_int8(rng, 7, n), _extreme_int8(rng, 5, n)
    scale = np.ones((5, n // head.QK), np.float32)
    corr = (np.zeros(5, np.float32) if head.SIGNED else
            np.float32(128) * xq.astype(np.float32).sum(axis=1))
    out = np.empty((5, 7), np.float32)
    head._head(table, np.ones(7, np.float32), xq, scale, corr, out)
    np.testing.assert_array_equal(out, xq.astype(np.int64) @ table.astype(np.int64).T)
    # through the public entry point (x quantized to -127..127) against its NumPy twin
    x = rng.standard_normal((3, n)).astype(np.float32)
    x[0, ::2] *= 1e3
    rs = rng.uniform(1e-3, 1e-2, 7).astype(np.float32)
    ref = head.numpy_head_logits(x, table, rs)
    np.testing.assert_allclose(head.head_logits(x, table, rs), ref, rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())


@neon
def test_int4_head_exact_at_the_extremes():
    """Nibbles 0 and 15 (levels -8 and 7) against int8 activations -128..127, scales 1."""
    from bitnet_edu.kernels import selfcheck
    selfcheck.check_head("int4")
    rng = np.random.default_rng(10)
    n, v, t = 2 * head.QK, 6, 5
    u = rng.integers(0, 16, (v, n)).astype(np.uint8)
    u[0], u[1], u[2] = 0, 15, np.where(np.arange(n) % 2 == 0, 0, 15)
    g = u.reshape(v, n // head.G4, 2, 64)
    packed = np.ascontiguousarray((g[:, :, 0] | (g[:, :, 1] << 4)).reshape(v, n // 2))
    xq = _extreme_int8(rng, t, n)
    xsum = (-8 * xq.astype(np.int32).reshape(t, -1, head.G4).sum(axis=2)).astype(np.int32)
    out = np.empty((t, v), np.float32)
    head._head4(packed, np.ones((v, n // head.G4), np.float32), xq,
                np.ones((t, n // head.QK), np.float32), xsum, out)
    want = xq.astype(np.int64) @ (u.astype(np.int64) - 8).T
    np.testing.assert_array_equal(out, want)
    x = rng.standard_normal((3, n)).astype(np.float32)
    p, s = head.quantize_rows_int4(rng.standard_normal((v, n)).astype(np.float32))
    ref = head.numpy_head_logits_int4(x, p, s)
    np.testing.assert_allclose(head.head_logits_int4(x, p, s), ref, rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())
