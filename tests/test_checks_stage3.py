"""Lesson 03 checks: a correct answer passes, a stub is NOT IMPLEMENTED, and each classic
mistake gets its own message (the wrong-answer catalogue)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from bitnet_edu.checks import _core, stage3
from bitnet_edu.config import BitNetConfig

SMALL = (256, 512)  # timing shape for the tests: fast


# --- check_fast_gemv --------------------------------------------------------------------------

def pack_int8(w):
    return w.astype(np.int8)


def gemv_right(w, x):
    x32 = x.astype(np.int32)
    return ((w == 1).astype(np.int32) @ x32 - (w == -1).astype(np.int32) @ x32).astype(np.int32)


def gemv_int8_acc(w, x):
    return (w * x).sum(axis=1, dtype=np.int8)


def gemv_int16_acc(w, x):
    return (w.astype(np.int16) * x.astype(np.int16)).sum(axis=1, dtype=np.int16)


def gemv_neg_int8(w, x):
    with np.errstate(over="ignore"):
        neg = -x  # int8: -(-128) == -128
    return (np.where(w == 1, x, 0).astype(np.int32) + np.where(w == -1, neg, 0).astype(np.int32)
            ).sum(axis=1)


def pack_codes(w):
    return (w.astype(np.int32) + 1).astype(np.uint8)


def gemv_no_offset(c, x):
    return c.astype(np.int32) @ x.astype(np.int32)


def gemv_swapped(w, x):
    return -gemv_right(w, x)


def gemv_wrong_axis(w, x):
    return (w.astype(np.int32) * x.astype(np.int32)).sum(axis=0)


def gemv_float(w, x):
    return w.astype(np.float64) @ x.astype(np.float64)


def gemv_none(w, x):
    gemv_right(w, x)


def gemv_padding_bug(w, x):  # ignores the tail when `in` is not a multiple of 128
    k = w.shape[1] // 128 * 128 or w.shape[1]
    return gemv_right(w[:, :k], x[:k])


def gemv_stub(w, x):
    raise NotImplementedError()


def gemv_slow(w, x):  # exact, but one Python-level NumPy call per row
    x32 = x.astype(np.int32)
    return np.array([int(x32[r == 1].sum() - x32[r == -1].sum()) for r in w], np.int32)


@pytest.mark.parametrize("pack, gemv, needle", [
    (pack_int8, gemv_int8_acc, stage3.OVERFLOW),
    (pack_int8, gemv_int16_acc, stage3.OVERFLOW),
    (pack_int8, gemv_neg_int8, "negating an int8 -128"),
    (pack_codes, gemv_no_offset, "subtract sum(x)"),
    (pack_int8, gemv_swapped, "wrong sign"),
    (pack_int8, gemv_wrong_axis, "wrong axis"),
    (pack_int8, gemv_float, "returned floats"),
    (pack_int8, gemv_none, "forget `return`"),
    (pack_int8, gemv_padding_bug, "not a multiple of 4 or 128"),
])
def test_fast_gemv_mistakes(pack, gemv, needle):
    r = stage3.check_fast_gemv(pack, gemv, shape=SMALL, repeat=1)
    assert r.status == "FAIL" and needle in r.message, r.message


def test_fast_gemv_overflow_names_the_mistake():
    r = stage3.check_fast_gemv(pack_int8, gemv_int16_acc, shape=SMALL, repeat=1)
    assert "int8/int16 overflow in the accumulator" in r.message and "int32" in r.message


def test_fast_gemv_pass_reports_speed(capsys):
    r = stage3.check_fast_gemv(pack_int8, gemv_right, naive=gemv_slow, shape=SMALL, repeat=3)
    out = capsys.readouterr().out
    assert r.status == "PASS", r.message
    assert "kernels.get('naive')" in out and "your naive" in out and "x its speed" in out


def test_fast_gemv_slower_than_naive_says_so(capsys):
    r = stage3.check_fast_gemv(pack_int8, gemv_slow, shape=(2048, 2048), repeat=1)
    out = capsys.readouterr().out
    assert r.status == "PASS" and "SLOWER than kernels.get('naive')" in out


def test_fast_gemv_stub_and_stub_naive(capsys):
    assert stage3.check_fast_gemv(pack_int8, gemv_stub).status == "NOT IMPLEMENTED"
    r = stage3.check_fast_gemv(pack_int8, gemv_right, naive=gemv_stub, shape=SMALL, repeat=1)
    assert r.status == "PASS" and "not implemented yet" in capsys.readouterr().out


def test_fast_gemv_python_endless_loop_times_out(monkeypatch):
    def forever(w, x):
        while True:
            pass

    monkeypatch.setattr(_core, "TIMEOUT_S", 0.5)
    r = stage3.check_fast_gemv(pack_int8, forever)
    assert r.status == "FAIL" and "still running" in r.message


def test_fast_gemv_numba_endless_loop_fails_and_the_process_survives():
    code = (
        "import numpy as np\n"
        "from numba import njit\n"
        "from bitnet_edu.checks import stage3\n"
        "@njit\n"
        "def forever(w, x):\n"
        "    i = 0\n"
        "    while i < 1:\n"
        "        i = i * 1\n"
        "    return np.zeros(w.shape[0], np.int32)\n"
        "forever.compile('(int8[:, :], int8[:])')\n"  # compiled: the call itself loops for ever
        "r = stage3.check_fast_gemv(lambda w: w, forever)\n"
        "print('STATUS', r.status)\n")
    env = dict(os.environ, BITNET_EDU_CHECK_TIMEOUT="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "STATUS FAIL" in r.stdout and "endless loop" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_fast_gemv_numba_crash_is_reported_not_fatal():
    code = (
        "import numpy as np\n"
        "from numba import njit\n"
        "from bitnet_edu.checks import stage3\n"
        "@njit\n"
        "def wild(w, x):\n"
        "    out = np.zeros(w.shape[0], np.int32)\n"
        "    for i in range(10**9):\n"
        "        out[i * 4096] = 1\n"  # far outside the array: no bounds check in Numba
        "    return out\n"
        "r = stage3.check_fast_gemv(lambda w: w, wild)\n"
        "print('STATUS', r.status)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "STATUS FAIL" in r.stdout and "crashed" in r.stdout


# --- check_roofline_tok_s ---------------------------------------------------------------------

def roofline(bw, cfg, bits, **kw):
    return stage3._roofline_want(bw, cfg, bits, **kw)


def test_roofline_correct_and_stub():
    assert stage3.check_roofline_tok_s(roofline).status == "PASS"

    def by_hand(bw, cfg, bits):  # also the embedding row: within tolerance
        return bw * 1e9 / (cfg.linear_params * bits / 8 + (cfg.head_params + cfg.hidden_size) * 2)

    assert stage3.check_roofline_tok_s(by_hand).status == "PASS"

    def stub(bw, cfg, bits):
        raise NotImplementedError()

    assert stage3.check_roofline_tok_s(stub).status == "NOT IMPLEMENTED"


@pytest.mark.parametrize("kw, needle", [
    (dict(bits_as_bytes=True), "bits as bytes"),
    (dict(head=False), "forgot the output head"),
    (dict(head_ternary=True), "not ternary"),
    (dict(head_twice=True), "twice"),
    (dict(gib=True), "GiB"),
    (dict(bits_as_bytes=True, head=False), "*and* forgot"),
])
def test_roofline_mistakes(kw, needle):
    r = stage3.check_roofline_tok_s(lambda bw, cfg, bits: roofline(bw, cfg, bits, **kw))
    assert r.status == "FAIL" and needle in r.message, r.message


def test_roofline_inverted_and_junk():
    r = stage3.check_roofline_tok_s(lambda bw, cfg, bits: 1 / roofline(bw, cfg, bits))
    assert r.status == "FAIL" and "seconds per token" in r.message
    r = stage3.check_roofline_tok_s(lambda bw, cfg, bits: None)
    assert r.status == "FAIL" and "return" in r.message
    r = stage3.check_roofline_tok_s(lambda bw, cfg, bits: "fast")
    assert r.status == "FAIL" and "number" in r.message
    r = stage3.check_roofline_tok_s(lambda bw, cfg, bits: 3 * roofline(bw, cfg, bits))
    assert r.status == "FAIL" and "Hint" in r.message
    assert BitNetConfig.preset("2b4t").head_params > 0
