"""The machinery behind every exercise check: PASS, NOT IMPLEMENTED or a helpful FAIL.

A check is a function that calls the student's code and raises ``AssertionError`` with a
message a student can act on when something is wrong.  The :func:`check` decorator turns that
into one printed line and never lets a traceback reach the notebook — except in grading mode
(``BITNET_EDU_GRADING=1``), where anything but PASS raises so an autograder can score the cell.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

PASS, NOT_IMPLEMENTED, FAIL = "PASS", "NOT IMPLEMENTED", "FAIL"
_ICON = {PASS: "✅", NOT_IMPLEMENTED: "⏳", FAIL: "❌"}


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


def check(fn):
    """Decorate a check ``fn(student_fn, ...)`` so it prints and returns a :class:`CheckResult`."""
    name = fn.__name__.removeprefix("check_")

    @functools.wraps(fn)
    def run(*args, **kwargs) -> CheckResult:
        try:
            fn(*args, **kwargs)
            res = CheckResult(name, PASS)
        except NotImplementedError:
            res = CheckResult(name, NOT_IMPLEMENTED, "replace `raise NotImplementedError()` with your code")
        except AssertionError as e:
            res = CheckResult(name, FAIL, str(e) or "wrong result")
        except Exception as e:  # the student's code crashed: name the error, no traceback
            res = CheckResult(name, FAIL, f"your code raised {type(e).__name__}: {e}")
        print(f"{_ICON[res.status]} {res.line()}")
        if os.environ.get("BITNET_EDU_GRADING") == "1" and not res.passed:
            # autograder mode (nbgrader "autograder tests" cells): a cell that errors scores zero
            raise AssertionError(res.line())
        return res

    return run


def expect_close(got, want, what: str, rtol=1e-5, atol=1e-6):
    """Assert two arrays match in shape and value, with a message that says where they differ."""
    got_a = np.asarray(got)
    want = np.asarray(want)
    if got is None:
        raise AssertionError(f"{what}: your function returned None — did you forget `return`?")
    if got_a.shape != want.shape:
        raise AssertionError(f"{what}: expected shape {want.shape}, got {got_a.shape}")
    if not np.allclose(got_a.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol):
        diff = np.abs(got_a.astype(np.float64) - want.astype(np.float64))
        idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
        raise AssertionError(f"{what}: values differ, e.g. at index {tuple(int(i) for i in idx)} "
                             f"expected {want[idx]!r}, got {got_a[idx]!r}")


def expect_equal(got, want, what: str):
    """Exact equality (integer results), shape and dtype-agnostic values."""
    expect_close(got, want, what, rtol=0, atol=0)


def expect_dtype(got, dtype, what: str):
    got = np.asarray(got)
    if got.dtype != np.dtype(dtype):
        raise AssertionError(f"{what}: expected dtype {np.dtype(dtype)}, got {got.dtype}")
