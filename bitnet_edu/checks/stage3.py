"""Checks for stage 3 (kernels): naive GEMV, the TL1 table, an I2_S byte, the T-MAC table.

Each check compares the student's function with the package's kernels on random inputs and
on the extremes (all +1 / all -1 weights, activations -128 and 127).
"""

from __future__ import annotations

import numpy as np

from ..kernels import mad, reference_matmul, tl1, tmac
from ._core import as_array, check, expect_equal, student_call

__all__ = ["check_naive_gemv", "check_tl1_table", "check_decode_i2s_byte", "check_tmac_table"]


@check
def check_naive_gemv(naive_gemv):
    """``naive_gemv(w int8 [out, in], x int8 [in]) -> int32 [out]`` equal to ``w @ x``."""
    rng = np.random.default_rng(0)
    cases = {
        "random [6, 10]": (rng.integers(-1, 2, (6, 10)), rng.integers(-128, 128, 10)),
        "all +1 weights, x = -128": (np.ones((2, 300)), np.full(300, -128)),
        "all -1 weights, x = -128 (int8 overflow if you do not widen)": (-np.ones((2, 300)),
                                                                         np.full(300, -128)),
        "one row [1, 1]": (np.array([[-1]]), np.array([7])),
    }
    for what, (w, x) in cases.items():
        w, x = w.astype(np.int8), x.astype(np.int8)
        want = reference_matmul(w, x)
        expect_equal(student_call(naive_gemv, w, x), want, f"naive_gemv on {what}")


@check
def check_tl1_table(build_tl1_table):
    """``build_tl1_table(x0, x1) -> 9 ints``: entry ``3*(a+1) + (b+1)`` is ``a*x0 + b*x1``."""
    for x0, x1 in [(5, -7), (0, 0), (-128, -128), (127, -128), (1, 2)]:
        want = tl1.build_table(np.array([[x0, x1]], np.int8))[0, 0, :9]
        what = f"TL1 table for x = ({x0}, {x1})"
        got = as_array(student_call(build_tl1_table, np.int8(x0), np.int8(x1)), what).reshape(-1)
        if got.size == 9 and got[0] == -want[0] != 0:
            raise AssertionError(f"x=({x0}, {x1}): entry 0 must be for (a, b) = (-1, -1), "
                                 f"i.e. -x0 - x1 = {want[0]}; your table looks negated")
        expect_equal(got, want, what)


@check
def check_decode_i2s_byte(decode_i2s_byte):
    """``decode_i2s_byte(b) -> 4 weights`` at offsets 0, 32, 64, 96 (shifts 6, 4, 2, 0)."""
    for b in [0b10_01_00_10, 0b01_01_01_01, 0, 0b10_10_10_10, 0b00_01_10_01]:
        what, want = f"decode_i2s_byte({b:#010b})", mad.decode_byte(b)
        got = as_array(student_call(decode_i2s_byte, np.uint8(b)), what)
        expect_equal(got.reshape(-1), want, what)


@check
def check_tmac_table(build_tmac_table):
    """``build_tmac_table(x4) -> 16 ints``: entry ``m`` sums the ``x4[i]`` whose bit ``i`` is set in ``m``."""
    rng = np.random.default_rng(1)
    for x4 in [np.array([1, 2, 4, 8]), rng.integers(-128, 128, 4), np.full(4, -128), np.zeros(4)]:
        x4 = x4.astype(np.int8)
        want = tmac.build_table(x4.reshape(1, 4))[0, 0]
        what = f"T-MAC table for x = {x4.tolist()}"
        expect_equal(as_array(student_call(build_tmac_table, x4), what).reshape(-1), want, what)
