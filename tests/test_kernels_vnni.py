"""The vnni kernel: exact against the integer reference, its layout is I2_S, it really emits
vpdpbusd on zmm, its portable fallback works on a CPU without VNNI, and its machine code caches."""

import os
import subprocess
import sys
import tempfile

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_edu import kernels
from bitnet_edu.kernels import vnni
from bitnet_edu.kernels._base import pad_cols
from bitnet_edu.packing import pack_i2s

KERN = kernels.get("vnni")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rand(rng, out, k, t):
    w = rng.integers(-1, 2, (out, k)).astype(np.int8)
    x = rng.integers(-128, 128, (t, k) if t else (k,)).astype(np.int8)
    return w, x


def _check(w, x):
    y = KERN.matmul(KERN.pack(w), x)
    want = kernels.reference_matmul(w, x)
    assert y.dtype == np.int32 and y.shape == want.shape
    np.testing.assert_array_equal(y, want)


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 80), k=st.integers(1, 700), t=st.sampled_from([0, 1, 3, 5, 8, 128]),
       seed=st.integers(0, 2**31 - 1))
def test_random_shapes(out, k, t, seed):
    """k not a multiple of 64/128/256, odd out (leftover rows of the 2-row tile), T not a multiple
    of 4 (leftover tokens of the GEMM tile); t=0 is a 1-D GEMV."""
    _check(*_rand(np.random.default_rng(seed), out, k, t))


SHAPES_2B4T = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]


@pytest.mark.parametrize("out,k,t", [(o, k, t) for t in (1, 3) for o, k in SHAPES_2B4T]
                         + [(640, 2560, 128), (2560, 2560, 128)])  # two GEMMs keep the file fast
def test_2b4t_shapes(out, k, t):
    _check(*_rand(np.random.default_rng(out + k + t), out, k, t))


@pytest.mark.parametrize("wv", [1, -1, 0])
@pytest.mark.parametrize("xv", [-128, 127])
def test_extremes(wv, xv):
    """All codes 2 (w=+1) or 0 (w=-1) against activations at -128/127, K=6912: the largest sums a
    layer can make (|y| = 128 * 6912 < 2**31), in the GEMV and the GEMM tile paths."""
    k = 6912
    w = np.full((5, k), wv, np.int8)
    w[4, ::2] = 0
    x = np.full((9, k), xv, np.int8)
    for xx in (x, x[0]):
        _check(w, xx)
    assert KERN.matmul(KERN.pack(w), x)[0, 0] == wv * xv * k


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts(threads):
    w, x = _rand(np.random.default_rng(5), 301, 515, 11)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _check(w, x)
        _check(w, x[0])
    finally:
        numba.set_num_threads(before)


def test_layout_is_i2s_and_numpy_version():
    """The packed bytes are exactly pack_i2s of the zero-padded matrix; numpy_matmul (the
    kernel's steps in NumPy: decode, permuted activations, vpdpbusd lanes) is exact."""
    w, x = _rand(np.random.default_rng(1), 37, 301, 3)
    p = KERN.pack(w)
    assert p.arrays[0].shape == (37, 512 // 4)
    np.testing.assert_array_equal(p.arrays[0].reshape(-1), pack_i2s(pad_cols(w, 512)))
    got = vnni.numpy_matmul(p.arrays[0], pad_cols(x, 512))
    np.testing.assert_array_equal(got, kernels.reference_matmul(w, x))


def test_permute_x_order():
    """Slice s of chunk 0 = [block 0 values 32s..32s+31, block 1 values 32s..32s+31]."""
    x = (np.arange(256) % 128 - 64).astype(np.int8).reshape(1, -1)
    xp = vnni.permute_x(x)[0]
    for s in range(4):
        np.testing.assert_array_equal(xp[64 * s: 64 * s + 32], x[0, 32 * s: 32 * s + 32])
        np.testing.assert_array_equal(xp[64 * s + 32: 64 * s + 64], x[0, 128 + 32 * s:][:32])


def test_has_vnni_parses_features():
    assert vnni.has_vnni("+avx2,+avx512f,+avx512vnni,+avxvnni")
    assert not vnni.has_vnni("+avx2,+avx512f,-avx512vnni,+avxvnni")
    assert not vnni.has_vnni("")


@pytest.mark.skipif(not vnni.has_vnni(), reason="this CPU has no AVX-512 VNNI")
def test_asm_has_vpdpbusd_on_zmm():
    from bitnet_edu.kernels.asm import asm_summary
    s = asm_summary("vnni")["_vnni"]
    assert s["vpdpbusd"] >= 4 and s["zmm"] > 0 and s["vpmaddwd"] == 0


def _subprocess(code, **env):
    if "NUMBA_CACHE_DIR" in env:  # the package's own cache variable wins over Numba's: set both
        env.setdefault("BITNET_EDU_CACHE_DIR", env["NUMBA_CACHE_DIR"])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    r = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


_EXACT = """
import numpy as np
from bitnet_edu import kernels
from bitnet_edu.kernels import vnni
rng = np.random.default_rng(0)
w = rng.integers(-1, 2, (70, 1000)).astype(np.int8)
x = rng.integers(-128, 128, (9, 1000)).astype(np.int8)
k = kernels.get("vnni")
assert np.array_equal(k.matmul(k.pack(w), x), kernels.reference_matmul(w, x))
assert np.array_equal(k.matmul(k.pack(w), x[0]), kernels.reference_matmul(w, x[0]))
print(vnni.has_vnni(), sum(vnni._vnni.stats.cache_hits.values()))
"""


def test_portable_fallback_without_vnni():
    """Numba told the CPU lacks VNNI (as on an older CPU): exact results, no vpdpbusd emitted."""
    import llvmlite.binding as ll
    feats = ll.get_host_cpu_features()
    for f in ("avx512vnni", "avxvnni"):
        feats[f] = False
    code = _EXACT + ("from bitnet_edu.kernels.asm import asm_summary\n"
                     "print(asm_summary('vnni')['_vnni']['vpdpbusd'])\n")
    with tempfile.TemporaryDirectory() as d:
        out = _subprocess(code, NUMBA_CACHE_DIR=d, NUMBA_CPU_FEATURES=feats.flatten()).split()
    assert out[0] == "False" and out[2] == "0"


def test_cache_works_with_the_intrinsic():
    """cache=True: a second process loads the compiled kernel from disk (cache hit, no compile)."""
    with tempfile.TemporaryDirectory() as d:
        first = _subprocess(_EXACT, NUMBA_CACHE_DIR=d).split()
        second = _subprocess(_EXACT, NUMBA_CACHE_DIR=d).split()
    assert first[1] == "0" and int(second[1]) >= 1


_TWIN = """
import numpy as np
from bitnet_edu.kernels import vnni
f = vnni.operands_1 if {serial} else vnni.operands
xp, xsum = f(np.arange(600, dtype=np.int64).astype(np.int8).reshape(2, 300))
assert np.array_equal(xp, vnni.permute_x(np.pad(np.arange(600).astype(np.int8).reshape(2, 300),
                                                ((0, 0), (0, 212)))))
print(sum(f.stats.cache_hits.values()))
"""


def test_serial_twin_has_its_own_cache_entry():
    """The one-token operands (compiled without threads) and the parallel ones are cached apart:
    after the serial twin is compiled and saved, the parallel function still compiles itself
    instead of loading the twin's machine code (Numba's cache key ignores ``parallel``)."""
    with tempfile.TemporaryDirectory() as d:
        runs = [_subprocess(_TWIN.format(serial=s), NUMBA_CACHE_DIR=d).split()[-1]
                for s in (True, False, False)]
    assert runs == ["0", "0", "1"]


HASWELL = ("+64bit,+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,+sse4.1,+ssse3,+sse3,+sse2,"
           "+sse,+cx16,+movbe,+lzcnt")
_ISA = _EXACT + """
from bitnet_edu.kernels.asm import asm_summary
from bitnet_edu.kernels.intrinsics import isa
s = asm_summary('vnni')['_vnni']
print(isa(), s['vpdpbusd'], s['vpmaddubsw'], s['vpmaddwd'], s['zmm'], s['ymm'])
"""


@pytest.mark.parametrize("cpu,features,want", [
    ("haswell", HASWELL, "avx2"),
    ("alderlake", HASWELL + ",+avxvnni", "avxvnni"),
    ("generic", "+64bit,+sse2,+sse", "portable"),
])
def test_each_isa_is_exact_and_emits_its_instruction(cpu, features, want):
    """Numba compiling for a laptop's CPU (the target switch; the code runs on this one): exact
    results, and the instruction each instruction set is chosen for is in the machine code.

    The code runs here, so the host must have every feature asked for: an AVX2-only CI machine
    (an AMD EPYC without AVX-512 had no AVX-VNNI) would stop on an illegal instruction (SIGILL)."""
    import llvmlite.binding as ll
    host = ll.get_host_cpu_features()
    missing = [f[1:] for f in features.split(",") if f.startswith("+") and not host.get(f[1:], True)]
    if missing:
        pytest.skip(f"this CPU cannot run {', '.join(missing)} (check with: "
                    "python -c 'import llvmlite.binding as l; print(l.get_host_cpu_features())')")
    with tempfile.TemporaryDirectory() as d:
        out = _subprocess(_ISA, NUMBA_CACHE_DIR=d, NUMBA_CPU_NAME=cpu,
                          NUMBA_CPU_FEATURES=features).split()
    got, dpbusd, maddubs, maddwd, zmm, ymm = out[-6], *map(int, out[-5:])
    assert got == want
    assert zmm == 0, "512-bit registers on a CPU without AVX-512"
    if want == "avx2":
        assert maddubs >= 2 and maddwd >= 1 and dpbusd == 0
    elif want == "avxvnni":
        assert dpbusd >= 2 and ymm > 0
    else:
        assert dpbusd == 0 and maddubs == 0 and ymm == 0
