"""The machinery behind every exercise check: PASS, NOT IMPLEMENTED or a helpful FAIL.

A check is a function that calls the student's code and raises ``AssertionError`` with a
message a student can act on when something is wrong.  The :func:`check` decorator turns that
into one printed line and never lets a traceback reach the notebook — except in grading mode
(``BITNET_EDU_GRADING=1``), where anything but PASS raises so an autograder can score the cell.

Grading integrity: a check computes its expected answer *before* it runs the student's code,
and calls that code through :func:`student_call`, which

* passes **copies** of the inputs (NumPy arrays, containers, dataclasses, torch tensors that need
  no gradient), so a function that overwrites its input cannot change the expected answer;
* stops code that runs longer than :data:`TIMEOUT_S` seconds (an endless loop) with a clear FAIL;
* reports an exception as "your code raised ...", even one whose ``__str__`` itself raises.

How the timeout works: in the main thread of a Unix process (a Jupyter kernel on Linux or
macOS) a ``SIGALRM`` timer raises inside the student's code; elsewhere (Windows, a worker
thread, or when another alarm is already armed) the code runs in a helper thread, the check
stops waiting at the deadline and asks that thread to stop.  Both interrupt *Python* code only:
a loop inside a Numba-compiled (``@njit``) function holds the interpreter until it returns, so
such a check cannot be interrupted by this timeout, nor by Kernel → Interrupt; restart the kernel.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import functools
import os
import signal
import sys
import threading
from dataclasses import dataclass

import numpy as np

PASS, NOT_IMPLEMENTED, FAIL = "PASS", "NOT IMPLEMENTED", "FAIL"
_ICON = {PASS: "✅", NOT_IMPLEMENTED: "⏳", FAIL: "❌"}

#: seconds one call of the student's code may run (``BITNET_EDU_CHECK_TIMEOUT`` overrides)
TIMEOUT_S = float(os.environ.get("BITNET_EDU_CHECK_TIMEOUT", "30"))


def grading_mode() -> bool:
    """True when a FAIL must raise so that an autograder scores the cell zero.

    ``BITNET_EDU_GRADING=1`` turns it on and ``=0`` off; unset, it is on under nbgrader
    (``nbgrader autograde`` and ``validate`` set ``NBGRADER_EXECUTION`` in the kernel's
    environment), so an instructor cannot forget it.  Read at each check, not at import.
    """
    flag = os.environ.get("BITNET_EDU_GRADING")
    if flag is not None:
        return flag == "1"
    return os.environ.get("NBGRADER_EXECUTION") in ("autograde", "validate")


@dataclass
class CheckResult:
    name: str
    status: str
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def line(self) -> str:
        tail = f" — {self.message}" if self.message else ""
        return f"[check] {self.name}: {self.status}{tail}"

    def __repr__(self) -> str:
        return self.line()

    def _ipython_display_(self):  # already printed by the check; show nothing twice
        pass


class StudentError(Exception):
    """The student's code raised, ran out of time, or exited; ``message`` says which."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _Timeout(BaseException):
    """Raised inside the student's code at the deadline (a BaseException: `except Exception`
    in the student's code does not swallow it)."""


def describe_exception(e: BaseException) -> str:
    """``"TypeName: message"`` for any exception, even one whose ``__str__`` raises."""
    try:
        name = type(e).__name__
    except BaseException:  # noqa: BLE001 - a hostile metaclass; still no traceback
        name = "an exception"
    try:
        text = str(e)
    except BaseException:  # noqa: BLE001
        text = "<its message could not be printed: __str__ raised>"
    return f"{name}: {text}" if text else name


def _copy(value):
    """A copy the student's code may overwrite freely; objects it must act on pass as they are
    (models, optimizers, functions, tensors that carry a gradient)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        items = [_copy(v) for v in value]
        return type(value)(items) if type(value) in (list, tuple) else copy.deepcopy(value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return copy.deepcopy(value)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor) and not value.requires_grad:
        return value.clone()
    return value


def _timeout_message(seconds: float) -> str:
    return (f"your code was still running after {seconds:g} s and was stopped — an endless "
            f"loop? (a `while` whose condition never changes, or a loop counter never updated)")


def _run_with_alarm(fn, args, kwargs, seconds):
    def on_alarm(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old)


def _run_in_thread(fn, args, kwargs, seconds):
    box = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="bitnet-edu-check", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        # ask the thread to stop at its next Python bytecode (best effort: code inside a C or
        # Numba call runs on until it returns, in the background)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident),
                                                   ctypes.py_object(_Timeout))
        raise _Timeout()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _can_use_alarm() -> bool:
    return (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0)  # no one else's alarm is armed


def student_call(fn, *args, copy_args: bool = True, **kwargs):
    """Run the student's ``fn(*args, **kwargs)`` on copies of the arguments, with a timeout.

    Returns what ``fn`` returns.  ``NotImplementedError`` passes through (the check reports NOT
    IMPLEMENTED); anything else the code raises, a timeout, ``exit()`` or Ctrl-C becomes a
    :class:`StudentError` whose message names it.
    """
    if copy_args:
        args, kwargs = tuple(_copy(a) for a in args), {k: _copy(v) for k, v in kwargs.items()}
    seconds = float(TIMEOUT_S)
    try:
        if seconds <= 0:
            return fn(*args, **kwargs)
        if _can_use_alarm():
            return _run_with_alarm(fn, args, kwargs, seconds)
        return _run_in_thread(fn, args, kwargs, seconds)
    except NotImplementedError:
        raise
    except _Timeout:
        raise StudentError(_timeout_message(seconds)) from None
    except KeyboardInterrupt:
        raise StudentError("interrupted while your code was running") from None
    except SystemExit:
        raise StudentError("your code called exit() / sys.exit(); return a value instead") from None
    except BaseException as e:  # noqa: BLE001 - the student's crash, reported without a traceback
        raise StudentError(f"your code raised {describe_exception(e)}") from None


def check(fn):
    """Decorate a check ``fn(student_fn, ...)`` so it prints and returns a :class:`CheckResult`."""
    name = fn.__name__.removeprefix("check_")

    @functools.wraps(fn)
    def run(*args, **kwargs) -> CheckResult:
        try:
            fn(*args, **kwargs)
            res = CheckResult(name, PASS)
        except NotImplementedError:
            res = CheckResult(name, NOT_IMPLEMENTED,
                              "replace `raise NotImplementedError()` with your code")
        except StudentError as e:
            res = CheckResult(name, FAIL, e.message)
        except AssertionError as e:
            res = CheckResult(name, FAIL, _message(e) or "wrong result")
        except KeyboardInterrupt:
            res = CheckResult(name, FAIL, "interrupted")
        except BaseException as e:  # noqa: BLE001 - never a traceback in a student's notebook
            # raised by the check's own code, mostly on a result of an unexpected type
            res = CheckResult(name, FAIL, f"{describe_exception(e)} — while checking your result; "
                                          f"does your function return what its docstring says?")
        print(f"{_ICON[res.status]} {res.line()}")
        if grading_mode() and not res.passed:
            # autograder mode (nbgrader "autograder tests" cells): a cell that errors scores zero
            raise AssertionError(res.line())
        return res

    return run


def _message(e: BaseException) -> str:
    try:
        return str(e)
    except BaseException:  # noqa: BLE001
        return describe_exception(e)


def as_array(got, what: str, *, numeric: bool = True) -> np.ndarray:
    """The student's result as a NumPy array, or a FAIL that says what came back instead."""
    if got is None:
        raise AssertionError(f"{what}: your function returned None — did you forget `return`?")
    try:
        arr = np.asarray(got)
    except Exception:  # noqa: BLE001 - e.g. a torch tensor that still needs its gradient
        hint = " (call .detach() first)" if hasattr(got, "detach") else ""
        raise AssertionError(f"{what}: expected a NumPy array, got {type(got).__name__}{hint}"
                             ) from None
    if numeric and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        kind = (f"an array of dtype {arr.dtype}" if isinstance(got, np.ndarray)
                else type(got).__name__)
        raise AssertionError(f"{what}: expected an array of numbers, got {kind}")
    return arr


def expect_close(got, want, what: str, rtol=1e-5, atol=1e-6):
    """Assert two arrays match in shape and value, with a message that says where they differ."""
    got_a = as_array(got, what)
    want = np.asarray(want)
    if got_a.shape != want.shape:
        raise AssertionError(f"{what}: expected shape {want.shape}, got {got_a.shape}")
    g64, w64 = got_a.astype(np.float64), want.astype(np.float64)
    if not np.allclose(g64, w64, rtol=rtol, atol=atol, equal_nan=True):
        with np.errstate(invalid="ignore"):
            diff = np.abs(g64 - w64)
        diff = np.where(np.isnan(diff), np.inf, diff)  # a NaN where a number belongs is the worst
        idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
        raise AssertionError(f"{what}: values differ, e.g. at index {tuple(int(i) for i in idx)} "
                             f"expected {want[idx]!r}, got {got_a[idx]!r}")


def expect_equal(got, want, what: str):
    """Exact equality (integer results), shape and dtype-agnostic values."""
    expect_close(got, want, what, rtol=0, atol=0)


def expect_dtype(got, dtype, what: str):
    got = as_array(got, what, numeric=False)
    if got.dtype != np.dtype(dtype):
        raise AssertionError(f"{what}: expected dtype {np.dtype(dtype)}, got {got.dtype}")
