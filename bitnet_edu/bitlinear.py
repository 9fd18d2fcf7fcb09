"""Stage 2: BitLinear, the layer BitNet b1.58 uses in place of ``nn.Linear``.

Two forms of the same arithmetic:

* :class:`BitLinear` (torch) — for training.  The forward pass quantizes on the fly
  ("fake quantization": ternary weights with one absmean scale, int8 activations per token)
  and the straight-through estimator (STE) lets gradients flow to the latent float weights
  as if rounding were the identity.
* :class:`BitLinearInference` (NumPy) — for inference.  Weights are frozen as packed 2-bit
  codes and one float scale; the forward is int8 activations × ternary weights accumulated in
  int32, then ONE float multiply per output.  No float matmul at all.

torch is imported lazily, so the inference form works with NumPy alone.
"""

from __future__ import annotations

import functools

import numpy as np

from .norm import rms_norm  # the one NumPy RMSNorm (re-exported: bitlinear.rms_norm)
from .packing import pack_hf, unpack_hf
from .quant import absmax_int8, absmean_ternary

__all__ = [
    "BitLinear",
    "RMSNorm",
    "replace_linears",
    "weight_quant",
    "activation_quant",
    "ste",
    "BitLinearInference",
    "rms_norm",
]

EPS = 1e-5

try:  # torch is optional: only the training form needs it
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError:  # pragma: no cover - exercised on torch-free installs
    torch = None
    nn = None


def _need_torch():
    if torch is None:
        raise ImportError("BitLinear (training form) needs torch: pip install torch==2.13.0")


# --- torch form --------------------------------------------------------------------------------

def weight_quant(w, eps: float = EPS):
    """Absmean fake-quant of a weight tensor: ``clip(round(w / s), -1, 1) * s``, ``s = max(mean|w|, eps)``.

    Same dtype and shape as ``w``; values are ``{-s, 0, +s}``.
    """
    s = w.abs().mean().clamp(min=eps)
    return (w / s).round().clamp(-1, 1) * s


def activation_quant(x, eps: float = EPS):
    """Per-token absmax int8 fake-quant over the last axis: ``clip(round(x * a), -128, 127) / a``,
    ``a = 127 / max(max|x|, eps)``.  Same dtype and shape as ``x``."""
    a = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    return (x * a).round().clamp(-128, 127) / a


def ste(x, xq):
    """Straight-through estimator: the forward value is ``xq``, the gradient is that of ``x``.

    ``x + (xq - x).detach()`` equals ``xq`` numerically, but autograd only sees ``x``, so the
    rounding step (whose true gradient is zero almost everywhere) is treated as the identity.
    """
    return x + (xq - x).detach()


@functools.lru_cache(maxsize=1)
def _int_mm_is_fast() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI), where
    ``torch._int_mm`` beats a float32 matmul of the same codes.  Without them it is far slower
    (measured on an AMD EPYC without VNNI: 124 ms against 7 ms for [256, 384] x [384, 1024]), and
    the float32 product of int8 codes is exact anyway for in_features < 2**17."""
    try:
        import llvmlite.binding as llvm
        f = llvm.get_host_cpu_features()
        return bool(f.get("avx512vnni") or f.get("avxvnni"))
    except Exception:  # no llvmlite or an unknown CPU: the float path is exact, just maybe slower
        return False


if torch is not None:

    class _BitLinearSTE(torch.autograd.Function):
        """``F.linear(ste(x, activation_quant(x)), ste(w, weight_quant(w)))`` in one op.

        Forward: the integer codes ``xq = clip(round(x * a))`` and ``wq = clip(round(w / s))``
        multiplied exactly (int8 x int8 -> int32 with ``torch._int_mm`` on CPU, else float, exact
        for in_features < 2**17), then one rescale ``acc * (s / a)``: the value of the unfused
        expression up to float rounding (about 1e-7 relative), and what the inference engine
        computes.  Backward (STE): ``grad_x = grad_y @ (wq * s)``, ``grad_w = grad_y.T @ (xq / a)``,
        in float32, or with ``grad_dtype=torch.bfloat16`` as bf16 matmuls (the codes are exact in
        bf16; grad_y, xq / a and the products are rounded to 8 significant bits).  Saves int8
        codes, not float copies.  ``x`` float32 ``[N, in]``, ``w`` ``[out, in]`` -> ``[N, out]``.
        """

        @staticmethod
        def forward(ctx, x, w, eps, grad_dtype=None):
            s = w.abs().mean().clamp(min=eps)
            wq = (w / s).round_().clamp_(-1, 1)
            a = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
            xq = (x * a).round_().clamp_(-128, 127)
            if x.device.type == "cpu" and x.dtype == torch.float32 and (
                    x.shape[-1] >= 2**17 or _int_mm_is_fast()):
                xq, wq = xq.to(torch.int8), wq.to(torch.int8)
                acc = torch._int_mm(xq, wq.T).to(x.dtype)
            else:  # exact: every partial sum is an integer below 128 * 2**17 = 2**24
                acc = xq @ wq.T
                if x.device.type == "cpu":
                    xq, wq = xq.to(torch.int8), wq.to(torch.int8)  # saved: 1 byte, not 4
            ctx.save_for_backward(xq, a, wq, s)
            ctx.grad_dtype = grad_dtype
            return acc.mul_(s / a)

        @staticmethod
        def backward(ctx, gy):
            xq, a, wq, s = ctx.saved_tensors
            dt = ctx.grad_dtype
            gx = gw = None
            if dt is None or dt == gy.dtype:
                if ctx.needs_input_grad[0]:
                    gx = gy @ (wq.to(gy.dtype) * s)
                if ctx.needs_input_grad[1]:
                    gw = gy.T @ (xq.to(gy.dtype) / a)
                return gx, gw, None, None
            g = gy.to(dt)
            if ctx.needs_input_grad[0]:
                gx = (g @ wq.to(dt)).to(gy.dtype) * s
            if ctx.needs_input_grad[1]:
                gw = (g.T @ (xq.to(gy.dtype) / a).to(dt)).to(gy.dtype)
            return gx, gw, None, None

    class RMSNorm(nn.Module):
        """RMSNorm over the last axis, computed in float32 then scaled by a learned weight ``[dim]``."""

        def __init__(self, dim: int, eps: float = EPS):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            dtype = x.dtype
            x = x.float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * x.to(dtype)

    class BitLinear(nn.Linear):
        """``nn.Linear`` with the b1.58 fake-quant forward and STE, trainable from scratch.

        Args:
            in_features, out_features: as ``nn.Linear``; weight ``[out, in]`` float (latent).
            bias: BitNet uses none; kept for drop-in replacement.
            rms_norm: if True, an RMSNorm (the "sub-norm") is applied to the input first, as in
                BitNet's attention output and FFN down projections.
            eps: floor for both scales.

        Input ``[..., in]`` float, output ``[..., out]`` float.

        ``grad_dtype``: dtype of the backward matmuls; None (default) = the input's.
        ``torch.bfloat16`` trains about 1.4x faster on CPUs with AVX512-BF16/AMX (rounds the
        gradients to 8 significant bits; the forward is unchanged).
        """

        grad_dtype = None

        def __init__(self, in_features: int, out_features: int, bias: bool = False,
                     rms_norm: bool = False, eps: float = EPS, device=None, dtype=None):
            super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
            self.eps = eps
            self.norm = RMSNorm(in_features, eps) if rms_norm else None

        def forward(self, x):
            if x.shape[-1] != self.in_features:
                raise ValueError(f"BitLinear expects [..., {self.in_features}], got {tuple(x.shape)}")
            if self.norm is not None:
                x = self.norm(x)
            if x.dtype != self.weight.dtype:  # e.g. a bf16 layer: the unfused form
                w = ste(self.weight, weight_quant(self.weight, self.eps))
                x = ste(x, activation_quant(x, self.eps))
                return F.linear(x, w, self.bias)
            y = _BitLinearSTE.apply(x.reshape(-1, self.in_features), self.weight, self.eps,
                                    self.grad_dtype)
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias

        def ternary(self):
            """The frozen weights: ``(q int8 [out, in], scale float)`` as NumPy."""
            return absmean_ternary(self.weight.detach().float().cpu().numpy(), self.eps)

        def extra_repr(self) -> str:
            return super().extra_repr() + f", rms_norm={self.norm is not None}"

    def replace_linears(module, rms_norm: bool = False, skip=("lm_head",)):
        """Swap every ``nn.Linear`` inside ``module`` for a :class:`BitLinear` (in place).

        The float weights are copied, so a trained model becomes a BitNet ready for QAT
        fine-tuning (or, evaluated directly, a post-training-quantized model).  Modules whose
        name is in ``skip`` (e.g. the output head) stay full precision.  Returns ``module``.
        """
        for name, child in list(module.named_children()):
            if name in skip:
                continue
            if isinstance(child, nn.Linear) and not isinstance(child, BitLinear):
                new = BitLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                rms_norm=rms_norm, device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    new.weight.copy_(child.weight)
                    if child.bias is not None:
                        new.bias.copy_(child.bias)
                setattr(module, name, new)
            else:
                replace_linears(child, rms_norm, skip)
        return module

else:  # pragma: no cover

    def _missing(*a, **k):
        _need_torch()

    BitLinear = RMSNorm = replace_linears = _missing


# --- NumPy inference form ----------------------------------------------------------------------

class BitLinearInference:
    """A frozen BitLinear: 2-bit packed ternary weights + one float scale, NumPy forward.

    Attributes:
        packed: uint8 ``[ceil(out/4), in]`` in the Hugging Face layout (see ``packing.pack_hf``).
        scale: float, the absmean weight scale (multiplies the output).
        norm_weight: float32 ``[in]`` or None — the optional input RMSNorm (sub-norm).
    """

    def __init__(self, q, scale: float, norm_weight=None, bias=None, eps: float = EPS):
        q = np.asarray(q)
        if q.ndim != 2:
            raise ValueError(f"ternary weights must be [out, in], got shape {q.shape}")
        self.out_features, self.in_features = q.shape
        pad = (-self.out_features) % 4  # the HF layout packs rows in quarters
        self.packed = pack_hf(np.concatenate([q, np.zeros((pad, q.shape[1]), np.int8)]))
        self.scale = float(scale)
        self.norm_weight = None if norm_weight is None else np.asarray(norm_weight, np.float32)
        self.bias = None if bias is None else np.asarray(bias, np.float32)
        self.eps = eps
        self._q = None

    @classmethod
    def from_float(cls, weight, **kw) -> "BitLinearInference":
        """Quantize a float ``[out, in]`` weight with absmean and freeze it."""
        q, s = absmean_ternary(weight)
        return cls(q, s, **kw)

    @classmethod
    def from_torch(cls, layer) -> "BitLinearInference":
        """Freeze a trained :class:`BitLinear` (weights, scale, sub-norm, bias)."""
        q, s = layer.ternary()
        norm = None if layer.norm is None else layer.norm.weight.detach().float().numpy()
        bias = None if layer.bias is None else layer.bias.detach().float().numpy()
        return cls(q, s, norm_weight=norm, bias=bias, eps=layer.eps)

    @property
    def weight_ternary(self) -> np.ndarray:
        """The ternary weights unpacked, int8 ``[out, in]`` (cached after the first call)."""
        if self._q is None:
            self._q = unpack_hf(self.packed)[: self.out_features]
        return self._q

    @property
    def nbytes(self) -> int:
        """Bytes held for the weights: packed codes + one float32 scale."""
        return self.packed.nbytes + 4

    def forward(self, x, trace: bool = False):
        """``x`` float ``[..., in]`` -> float32 ``[..., out]``.

        Steps: (sub-norm) -> int8 activations per token -> int32 ``x_q @ W_q.T`` -> rescale by
        ``x_scale * w_scale``.  With ``trace=True`` returns ``(y, steps)`` where ``steps`` is a
        dict of every intermediate (for the notebook's step-through).
        """
        x = np.asarray(x, np.float32)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input [..., {self.in_features}], got {x.shape}")
        steps = {"input": x}
        if self.norm_weight is not None:
            x = rms_norm(x, self.norm_weight, self.eps)
            steps["normed"] = x
        xq, xs = absmax_int8(x, self.eps)
        acc = xq.astype(np.int32) @ self.weight_ternary.T.astype(np.int32)  # exact integer sums
        y = acc.astype(np.float32) * xs * np.float32(self.scale)
        if self.bias is not None:
            y = y + self.bias
        steps.update(x_int8=xq, x_scale=xs, acc_int32=acc, w_scale=self.scale, output=y)
        return (y, steps) if trace else y

    __call__ = forward

    def __repr__(self) -> str:
        return (f"BitLinearInference(in={self.in_features}, out={self.out_features}, "
                f"scale={self.scale:.4g}, sub_norm={self.norm_weight is not None}, {self.nbytes} bytes)")
