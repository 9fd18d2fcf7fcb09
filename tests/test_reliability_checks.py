"""Grading integrity of every exercise check (issue 11, defect 8).

A catalogue of bad student functions runs against all 22 checks: wrong values, ``None``,
raising, raising with a broken ``__str__``, overwriting the inputs, an endless loop, ``exit()``,
results of the wrong type, dtype or shape.  Each must give one FAIL line, never PASS, never
a traceback, and never blame the student's code for an error in the check's own code.
"""

import sys
import threading

import numpy as np
import pytest

from bitnet_edu import bitlinear, checks, packing, quant
from bitnet_edu.checks import FAIL, NOT_IMPLEMENTED, PASS, _core
from bitnet_edu.deploy import ResponseCache
from bitnet_edu.energy import FORMATS
from bitnet_edu.generate import top_p_filter
from bitnet_edu.kernels import mad, reference_matmul, tl1, tmac
from bitnet_edu.model.layers import apply_rope, attention

torch = pytest.importorskip("torch")

from bitnet_edu.train.loop import lr_at, train_step, weight_decay_at  # noqa: E402
from bitnet_edu.train.ptq import post_training_quantize  # noqa: E402


@pytest.fixture
def short_timeout(monkeypatch):
    """Endless loops are stopped after 0.3 s (the default, 30 s, suits a slow laptop)."""
    monkeypatch.setattr(_core, "TIMEOUT_S", 0.3)


# --- one correct answer per check ----------------------------------------------------------------

def _matmul_rescale(xq, xs, wq, ws):
    return (xq.astype(np.int32) @ wq.T.astype(np.int32)).astype(np.float32) * xs * np.float32(ws)


def _bitlinear_forward(x, wq, ws, norm_weight=None):
    return bitlinear.BitLinearInference(wq, ws, norm_weight=norm_weight).forward(x)


class _LRU:
    def __init__(self, maxsize):
        self._c = ResponseCache(maxsize)

    def get(self, key):
        return self._c.get(key)

    def put(self, key, value):
        self._c.put(key, value)


CORRECT = {
    "check_absmean_ternary": quant.absmean_ternary,
    "check_absmax_int8": quant.absmax_int8,
    "check_pack_hf": packing.pack_hf,
    "check_sqnr": quant.sqnr_db,
    "check_ste": bitlinear.ste,
    "check_rms_norm": bitlinear.rms_norm,
    "check_int_accumulate_rescale": _matmul_rescale,
    "check_bitlinear_forward": _bitlinear_forward,
    "check_naive_gemv": reference_matmul,
    "check_tl1_table": lambda x0, x1: tl1.build_table(np.array([[x0, x1]], np.int8))[0, 0, :9],
    "check_decode_i2s_byte": mad.decode_byte,
    "check_tmac_table": lambda x4: tmac.build_table(x4.reshape(1, 4))[0, 0],
    "check_rope": apply_rope,
    "check_attention_step": lambda q, k, v, group: attention(q[None], k, v, k.shape[0] - 1)[0],
    "check_top_p": top_p_filter,
    "check_ste_weight": lambda w: w + (bitlinear.weight_quant(w) - w).detach(),
    "check_two_stage_schedule": lambda step, tc: (lr_at(step, tc), weight_decay_at(step, tc)),
    "check_training_step": train_step,
    "check_ptq": post_training_quantize,
    "check_kv_cache_bytes": lambda layers, kv, hd, ctx, bits=16: layers * kv * hd * ctx * bits / 4,
    "check_energy_per_token": lambda n, fmt, dram: (n * FORMATS[fmt].weight_bits / 8 * dram
                                                    + n * FORMATS[fmt].op_pj),
    "check_lru_cache": _LRU,
}
NAMES = sorted(CORRECT)
FUNCTION_CHECKS = [n for n in NAMES if n != "check_lru_cache"]


def run(name, fn, capfd):
    """Run one check; assert it printed exactly one line and nothing that looks like a traceback."""
    res = getattr(checks, name)(fn)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, out + err
    assert out.count("[check]") == 1 and res.line() in out
    assert "\n" not in res.message
    return res


# --- the catalogue -------------------------------------------------------------------------------

class BrokenStr(Exception):
    def __str__(self):
        raise RuntimeError("no message for you")


def raising(*args, **kwargs):
    raise ValueError("bad input")


def raising_broken_str(*args, **kwargs):
    raise BrokenStr()


def endless(*args, **kwargs):
    while True:
        pass


def endless_swallowing(*args, **kwargs):
    """A loop that catches Exception around its body: the timeout must still stop it."""
    while True:
        try:
            sum(range(100))
        except Exception:
            pass


def exits(*args, **kwargs):
    sys.exit(3)


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt()


def _class_of(method):
    """An LRUCache whose get and put both behave like ``method`` (for the class-based check)."""
    return type("Bad", (), {"__init__": lambda self, n: None, "get": lambda self, k: method(k),
                            "put": lambda self, k, v: method(k, v)})


BEHAVIOURS = {"raising": (raising, "ValueError: bad input"),
              "raising with a broken __str__": (raising_broken_str, "BrokenStr"),
              "an endless loop": (endless, "still running after 0.3 s"),
              "an endless loop catching Exception": (endless_swallowing, "still running"),
              "exit()": (exits, "exit()"),
              "Ctrl-C": (interrupted, "interrupted while your code was running")}


@pytest.mark.parametrize("name", NAMES)
def test_correct_answer_passes(name, capfd):
    assert run(name, CORRECT[name], capfd).status == PASS


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
@pytest.mark.parametrize("name", NAMES)
def test_crashes_and_hangs_are_one_clean_fail(name, behaviour, capfd, short_timeout):
    fn, words = BEHAVIOURS[behaviour]
    res = run(name, _class_of(fn) if name == "check_lru_cache" else fn, capfd)
    assert res.status == FAIL
    assert words in res.message and "your code" in res.message, res.message


@pytest.mark.parametrize("name", FUNCTION_CHECKS)
def test_missing_return_says_none(name, capfd):
    res = run(name, lambda *a, **k: None, capfd)
    assert res.status == FAIL and "returned None" in res.message, res.message


WEIRD_RESULTS = {"a string": lambda *a: "hello", "a dict": lambda *a: {"a": 1},
                 "an object": lambda *a: object(), "a ragged list": lambda *a: [[1, 2], [3]],
                 "a wrong shape": lambda *a: np.zeros((1, 2, 3), np.float32),
                 "strings for numbers": lambda *a: np.array(["1", "2"]),
                 "a tensor needing its gradient": lambda *a: torch.ones(3, requires_grad=True)}


@pytest.mark.parametrize("result", sorted(WEIRD_RESULTS))
@pytest.mark.parametrize("name", FUNCTION_CHECKS)
def test_a_result_of_the_wrong_type_or_shape_fails_without_blaming_a_crash(name, result, capfd):
    """check_rms_norm used to report its own TypeError (np.isnan on an object array) as the
    student's crash; no check may say "your code raised" when the student's code did not."""
    res = run(name, WEIRD_RESULTS[result], capfd)
    assert res.status == FAIL
    assert "your code raised" not in res.message, res.message


def test_wrong_dtype_fails(capfd):
    res = run("check_absmean_ternary", lambda w, eps=1e-5: (quant.absmean_ternary(w)[0].astype(
        np.float32), quant.absmean_ternary(w)[1]), capfd)
    assert res.status == FAIL and "dtype int8" in res.message
    res = run("check_pack_hf", lambda q: packing.pack_hf(q).astype(np.int64), capfd)
    assert res.status == FAIL and "dtype uint8" in res.message


def test_lru_values_with_broken_methods_fail_cleanly(capfd):
    class Evil:
        def __eq__(self, other):
            raise RuntimeError("eq")

        def __repr__(self):
            raise RuntimeError("repr")

    bad = type("Bad", (), {"__init__": lambda self, n: None, "get": lambda self, k: Evil(),
                           "put": lambda self, k, v: None})
    assert run("check_lru_cache", bad, capfd).status == FAIL


# --- overwriting the inputs ----------------------------------------------------------------------

def _zero_inputs(args):
    for a in args:
        if isinstance(a, np.ndarray) and a.flags.writeable:
            a[...] = 0
        elif isinstance(a, torch.Tensor):
            with torch.no_grad():
                a.zero_()


def zero_then_answer(correct):
    """Zero every input in place, then answer correctly FOR THE ZEROED INPUTS: passed before
    the fix wherever a check computed its expected answer after the student's call."""
    def fn(*args):
        _zero_inputs(args)
        return correct(*args)
    return fn


@pytest.mark.parametrize("name", ["check_naive_gemv", "check_rope", "check_top_p",
                                  "check_training_step", "check_rms_norm", "check_absmax_int8",
                                  "check_int_accumulate_rescale", "check_bitlinear_forward",
                                  "check_attention_step", "check_tmac_table", "check_sqnr",
                                  "check_absmean_ternary", "check_pack_hf"])
def test_a_function_that_zeroes_its_inputs_cannot_pass(name, capfd):
    res = run(name, zero_then_answer(CORRECT[name]), capfd)
    assert res.status == FAIL, res.message


def test_top_p_that_rewrites_the_probabilities_cannot_pass(capfd):
    """Set p to a one-hot vector and return it: equal to top_p_filter(p) computed afterwards."""
    def cheat(p, top):
        p[:] = 0
        p[0] = 1
        return p
    assert run("check_top_p", cheat, capfd).status == FAIL


def test_a_correct_function_that_overwrites_its_input_still_passes(capfd):
    """Copies make in-place work harmless: the answer is what is graded."""
    def rope_in_place(x, cos, sin):
        y = apply_rope(x, cos, sin)
        x[...] = y
        return x
    assert run("check_rope", rope_in_place, capfd).status == PASS


def test_ptq_that_edits_the_float_model_in_place_fails(capfd):
    def in_place(fp):
        with torch.no_grad():
            for p in fp.parameters():
                p.zero_()
        return post_training_quantize(fp)
    res = run("check_ptq", in_place, capfd)
    assert res.status == FAIL and "changed" in res.message


# --- the timeout ---------------------------------------------------------------------------------

def test_the_timeout_also_works_outside_the_main_thread(capfd, short_timeout):
    """Windows has no SIGALRM and a check may run in a worker thread: a helper thread with a
    deadline stops the loop there, and the loop's thread ends."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("res", checks.check_naive_gemv(endless)))
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert box["res"].status == FAIL and "still running" in box["res"].message
    for _ in range(100):  # the stopped helper thread exits at its next bytecode
        if not any(th.name == "bitnet-edu-check" for th in threading.enumerate()):
            break
        threading.Event().wait(0.02)
    assert not any(th.name == "bitnet-edu-check" for th in threading.enumerate())
    capfd.readouterr()


def test_the_alarm_is_disarmed_and_the_old_handler_restored(short_timeout):
    import signal

    if not hasattr(signal, "setitimer"):
        pytest.skip("no SIGALRM on this platform")
    before = signal.getsignal(signal.SIGALRM)
    checks.check_naive_gemv(CORRECT["check_naive_gemv"])
    checks.check_naive_gemv(endless)
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_not_implemented_and_grading_mode_still_work(monkeypatch, capfd, short_timeout):
    def stub(*a, **k):
        raise NotImplementedError()
    assert run("check_rope", stub, capfd).status == NOT_IMPLEMENTED
    monkeypatch.setenv("BITNET_EDU_GRADING", "1")
    with pytest.raises(AssertionError, match="still running"):
        checks.check_rope(endless)


def test_describe_exception_survives_anything():
    class NoName(type):
        @property
        def __name__(cls):
            raise RuntimeError("no name")

    class Odd(Exception, metaclass=NoName):
        def __str__(self):
            raise RuntimeError("no str")

    text = _core.describe_exception(Odd())
    assert "could not be printed" in text
