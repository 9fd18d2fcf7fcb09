"""Checks for Lesson 02 (BitLinear: STE, RMSNorm sub-norm, the integer forward).

Each check compares the student's function with the package (``bitnet_edu.bitlinear``) on
several inputs, including all-zero tokens, large values that overflow int8/int16 sums, and
inputs with extra batch axes.
"""

from __future__ import annotations

import numpy as np

from .. import bitlinear
from ..quant import absmax_int8, absmean_ternary
from ._core import as_array, check, expect_close, student_call

__all__ = ["check_ste", "check_rms_norm", "check_int_accumulate_rescale", "check_bitlinear_forward"]


@check
def check_ste(ste):
    """``ste(x, xq)`` (torch): forward value ``xq``, gradient with respect to ``x`` the identity."""
    import torch

    torch.manual_seed(0)
    for name, make_xq in (("xq = round(x), no grad", lambda x: x.detach().round()),
                          ("xq = activation_quant(x), with grad", lambda x: bitlinear.activation_quant(x)),
                          ("xq = weight_quant(x), with grad", lambda x: bitlinear.weight_quant(x))):
        x = (torch.randn(3, 8) * 2).requires_grad_(True)
        xq = make_xq(x)
        want = xq.detach().numpy().copy()
        out = student_call(ste, x, xq)
        if out is None:
            raise AssertionError(f"{name}: your function returned None — did you forget `return`?")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
            raise AssertionError(f"{name}: return a tensor shaped like x {tuple(x.shape)}")
        expect_close(out.detach().numpy(), want, f"{name}: forward value (must equal xq)")
        if not out.requires_grad:
            raise AssertionError(f"{name}: the output does not depend on x, so no gradient reaches the "
                                 f"weights. The value must be xq, but x itself must stay in the graph")
        g = torch.randn_like(x)
        (grad,) = torch.autograd.grad(out, x, g)
        if torch.allclose(grad, torch.zeros_like(grad)):
            raise AssertionError(f"{name}: the gradient is zero — that is round()'s true gradient, which "
                                 f"the STE replaces by the identity: which part of your expression must "
                                 f"autograd not see?")
        if torch.allclose(grad, 2 * g):
            raise AssertionError(f"{name}: the gradient is twice the upstream one — x enters your "
                                 f"expression twice where autograd can see it")
        expect_close(grad.numpy(), g.numpy(), f"{name}: gradient (the STE passes the upstream gradient "
                     f"through unchanged: d out / d x = 1)")


@check
def check_rms_norm(rms_norm):
    """``rms_norm(x, weight=None, eps=1e-5)`` (NumPy): ``x / sqrt(mean(x²) + eps) * weight`` per row."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (3, 8)).astype(np.float32)
    x[1] += 3.0  # a row with a large mean: tells RMSNorm from LayerNorm
    zero = x.copy()
    zero[2] = 0
    weight = rng.uniform(0.5, 2, 8).astype(np.float32)
    cases = [("random [3, 8]", x, None), ("with weight", x, weight), ("an all-zero row", zero, None),
             ("large values ×1000", x * 1000, weight), ("one token [8]", x[0], None),
             ("batch [2, 3, 8]", np.stack([x, -x]), weight)]
    for name, xi, wi in cases:
        want = bitlinear.rms_norm(xi, wi)
        got = as_array(student_call(rms_norm, xi, wi), name)
        if np.isnan(got).any():
            raise AssertionError(f"{name}: NaN in the output — add eps INSIDE the square root so an "
                                 f"all-zero row does not divide by zero")
        if got.shape == want.shape and not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            centered = xi - xi.mean(-1, keepdims=True)
            layer = centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5)
            if wi is not None:
                layer = layer * wi
            if np.allclose(got, layer, rtol=1e-4, atol=1e-5):
                raise AssertionError(f"{name}: you subtracted the mean (that is LayerNorm); RMSNorm only "
                                     f"divides by the root mean square")
            if wi is not None and np.allclose(got, bitlinear.rms_norm(xi), rtol=1e-4, atol=1e-5):
                raise AssertionError(f"{name}: multiply by `weight` when it is given")
        expect_close(got, want, f"{name}: normalized values (mean over the LAST axis)", rtol=1e-4, atol=1e-5)


def _int_case(rng, tokens, k, out, big=False):
    if big:  # every product is +127·1: sums far beyond int8 and int16
        xq = np.full((tokens, k), 127, np.int8)
        wq = np.ones((out, k), np.int8)
    else:
        xq = rng.integers(-128, 128, (tokens, k)).astype(np.int8)
        wq = rng.integers(-1, 2, (out, k)).astype(np.int8)
    xs = rng.uniform(1e-3, 1e-1, (tokens, 1)).astype(np.float32)
    return xq, xs, wq, float(rng.uniform(0.01, 0.1))


@check
def check_int_accumulate_rescale(int_matmul_rescale):
    """``int_matmul_rescale(x_q, x_scale, w_q, w_scale) -> y float32 [tokens, out]``:
    int32 sums of int8 × ternary, then ``y = acc * x_scale * w_scale``."""
    rng = np.random.default_rng(1)
    cases = {"random [2, 16] × [4, 16]": _int_case(rng, 2, 16, 4),
             "one token [1, 7] × [3, 7]": _int_case(rng, 1, 7, 3),
             "large sums [2, 300] × [4, 300]": _int_case(rng, 2, 300, 4, big=True)}
    for name, (xq, xs, wq, ws) in cases.items():
        acc = xq.astype(np.int32) @ wq.T.astype(np.int32)
        want = acc.astype(np.float32) * xs * np.float32(ws)
        got = as_array(student_call(int_matmul_rescale, xq, xs, wq, ws), name)
        if got.shape == want.shape and not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            for bits in (np.int8, np.int16):  # the classic bug: NumPy keeps the int8 dtype and wraps
                wrapped = (xq @ wq.T).astype(bits).astype(np.float32) * xs * np.float32(ws)
                if np.allclose(got, wrapped, rtol=1e-5, atol=1e-6):
                    raise AssertionError(f"{name}: the sums overflowed {np.dtype(bits)} (max {np.iinfo(bits).max}, "
                                         f"true sum {int(acc.max())}); cast x_q and w_q with .astype(np.int32) "
                                         f"BEFORE the matmul")
            if np.allclose(got, acc, rtol=1e-5):
                raise AssertionError(f"{name}: you returned the integer sums; multiply by x_scale * w_scale")
            if np.allclose(got, acc * xs, rtol=1e-5):
                raise AssertionError(f"{name}: multiply by the weight scale w_scale too")
        expect_close(got, want, f"{name}: y = (x_q @ w_q.T) * x_scale * w_scale", rtol=1e-5, atol=1e-6)


@check
def check_bitlinear_forward(bitlinear_forward):
    """``bitlinear_forward(x, w_q, w_scale, norm_weight=None) -> y float32 [..., out]``, equal to
    ``BitLinearInference(w_q, w_scale, norm_weight).forward(x)``."""
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.05, (8, 16)).astype(np.float32)
    wq, ws = absmean_ternary(w)
    norm = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    x = rng.normal(0, 1, (3, 16)).astype(np.float32)
    x_zero = x.copy()
    x_zero[1] = 0
    cases = [("no sub-norm [3, 16]", x, None), ("with sub-norm", x, norm),
             ("an all-zero token", x_zero, None), ("batch [2, 3, 16] with sub-norm", np.stack([x, 5 * x]), norm),
             ("large activations ×100", x * 100, None)]
    for name, xi, ni in cases:
        layer = bitlinear.BitLinearInference(wq, ws, norm_weight=ni)
        want = layer.forward(xi)
        got = as_array(student_call(bitlinear_forward, xi, wq, ws, ni), name)
        if got.shape != want.shape:
            raise AssertionError(f"{name}: expected output shape {want.shape} (x.shape[:-1] + (out,)), got {got.shape}")
        if np.isnan(got).any():
            raise AssertionError(f"{name}: NaN in the output — an all-zero token needs the eps floor")
        xs = absmax_int8(bitlinear.rms_norm(xi, ni) if ni is not None else xi)[1]
        tol = 1.01 * float(xs.max()) * ws  # one rounding step of x_q apart is still correct
        if ni is not None and not np.allclose(got, want, rtol=1e-4, atol=tol):
            if np.allclose(got, bitlinear.BitLinearInference(wq, ws).forward(xi), rtol=1e-4, atol=tol):
                raise AssertionError(f"{name}: apply the sub-norm (rms_norm with norm_weight) before "
                                     f"quantizing the activations")
        if not np.allclose(got, want, rtol=1e-4, atol=tol) and np.allclose(got * ws, want, rtol=1e-4, atol=tol):
            raise AssertionError(f"{name}: the output is missing the weight scale (multiply by w_scale)")
        expect_close(got, want, f"{name}: y (sub-norm → absmax int8 → int32 matmul → rescale)", rtol=1e-4, atol=tol)
