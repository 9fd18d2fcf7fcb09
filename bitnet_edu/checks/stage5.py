"""Checks for Lesson 05 (QAT training): the ternary weight with STE, the two-stage schedule,
one training step, post-training quantization (a copy of the model, and a ternary rounding that
beats the naive absmean one).

Each check compares the student's function with ``bitnet_edu.train`` on several inputs,
including edge cases (an all-zero weight, the step where the stages switch, a clipped step).
"""

from __future__ import annotations

import copy

import numpy as np

from ._core import check, expect_close, student_call

__all__ = ["check_ste_weight", "check_two_stage_schedule", "check_schedule_design", "check_training_step",
           "check_ptq", "check_ternary_ptq"]


@check
def check_ste_weight(ste_weight):
    """``ste_weight(w)`` (torch): forward ``weight_quant(w)`` (ternary times absmean), gradient identity."""
    import torch

    from ..bitlinear import weight_quant

    torch.manual_seed(0)
    cases = [("random [6, 8]", torch.randn(6, 8) * 0.05), ("all-zero weight", torch.zeros(4, 4)),
             ("one large outlier", torch.cat([torch.randn(3, 8) * 0.01, torch.full((1, 8), 5.0)]))]
    for name, w0 in cases:
        want = weight_quant(w0).numpy()
        w = w0.clone().requires_grad_(True)
        out = student_call(ste_weight, w)
        if out is None:
            raise AssertionError(f"{name}: your function returned None — did you forget `return`?")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(w0.shape):
            raise AssertionError(f"{name}: return a tensor shaped like w {tuple(w0.shape)}")
        expect_close(out.detach().numpy(), want,
                     f"{name}: forward value (clip(round(w / s), -1, 1) * s, s = max(mean|w|, 1e-5))",
                     rtol=1e-5, atol=1e-7)
        levels = np.unique(np.round(out.detach().numpy() / max(float(w0.abs().mean()), 1e-5), 4))
        if not set(levels) <= {-1.0, 0.0, 1.0}:
            raise AssertionError(f"{name}: the forward should take only three values, got {levels[:6]}")
        if not out.requires_grad:
            raise AssertionError(f"{name}: no gradient reaches w — the forward value must be the "
                                 f"ternary weight, but w itself must stay visible to autograd (Lesson 02)")
        g = torch.randn_like(w0)
        (grad,) = torch.autograd.grad(out, w, g)
        expect_close(grad.numpy(), g.numpy(), f"{name}: gradient (the STE passes it through unchanged)")


@check
def check_two_stage_schedule(schedule):
    """``schedule(step, tc) -> (lr, weight_decay)`` equals ``(lr_at, weight_decay_at)``."""
    from ..train.loop import TrainConfig, lr_at, weight_decay_at

    for tc in (TrainConfig(steps=100, warmup=10), TrainConfig(steps=37, warmup=3, stage1_frac=0.6, lr=1e-2),
               TrainConfig(steps=1000, warmup=50, lr_stage2=2e-4, lr_min=0.0)):
        s1 = int(tc.steps * tc.stage1_frac)
        for step in sorted({0, 1, tc.warmup - 1, tc.warmup, s1 // 2, s1 - 1, s1, s1 + 1, tc.steps - 1}):
            want_lr, want_wd = lr_at(step, tc), weight_decay_at(step, tc)
            got = student_call(schedule, step, tc)
            if got is None:
                raise AssertionError("your function returned None — return (lr, weight_decay)")
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise AssertionError(f"return a pair (lr, weight_decay), got {type(got).__name__}")
            lr, wd = got
            where = f"steps={tc.steps}, warmup={tc.warmup}, stage 1 ends at {s1}: step {step}"
            if step == s1 and abs(lr - want_lr) > 1e-9 and abs(lr - tc.lr / 2) < 1e-6 * tc.lr:
                raise AssertionError(f"{where}: stage 2 starts here — the rate must DROP to lr_stage2")
            expect_close(lr, want_lr, f"{where}: learning rate", rtol=1e-6, atol=1e-12)
            expect_close(wd, want_wd,
                         f"{where}: weight decay (a sine bump peaking mid stage 1, then 0)", rtol=1e-6, atol=1e-12)


def _tiny_model(seed=0):
    import torch

    from ..train.model import BitNetLM, ModelConfig

    torch.manual_seed(seed)
    return BitNetLM(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64,
                                max_seq_len=16))


@check
def check_training_step(training_step):
    """``training_step(model, opt, x, y, grad_clip) -> float`` matches ``train.train_step``."""
    import torch

    from ..train.loop import TrainConfig, make_optimizer, train_step

    for name, clip, lr in (("one step", 1.0, 1e-2), ("tight clipping", 1e-3, 1e-2), ("no clipping", 0.0, 1e-3)):
        a, b = _tiny_model(), _tiny_model()
        tc = TrainConfig(lr=lr, weight_decay=0.0)
        opt_a, opt_b = make_optimizer(a, tc), make_optimizer(b, tc)
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, 64, (2, 12), generator=g)
        y = torch.randint(0, 64, (2, 12), generator=g)
        before = [p.detach().clone() for p in a.parameters()]
        want = train_step(b, opt_b, x.clone(), y.clone(), clip)  # before the student can touch x, y
        got = student_call(training_step, a, opt_a, x, y, clip)
        if got is None:
            raise AssertionError(f"{name}: your function returned None — return the loss as a "
                                 f"Python float (loss.item())")
        if isinstance(got, torch.Tensor) and got.requires_grad:
            raise AssertionError(f"{name}: return loss.item() (a float), not the tensor with its graph")
        try:
            got = float(got)
        except Exception:  # noqa: BLE001 - a list, a string, a tensor of many values
            raise AssertionError(f"{name}: return the loss as one Python float, got "
                                 f"{type(got).__name__}") from None
        expect_close(got, want, f"{name}: the loss BEFORE the update", rtol=1e-5)
        if all(torch.equal(p, p0) for p, p0 in zip(a.parameters(), before)):
            raise AssertionError(f"{name}: no parameter changed — call loss.backward() and opt.step()")
        for (pname, pa), pb in zip(a.named_parameters(), b.parameters()):
            expect_close(pa.detach().numpy(), pb.detach().numpy(),
                         f"{name}: {pname} after the step (zero the grads, backward, clip, step)",
                         rtol=1e-4, atol=1e-6)


@check
def check_ptq(post_training_quantize):
    """``post_training_quantize(float_model)`` returns a BitLinear copy and leaves the input alone."""
    import torch

    from ..bitlinear import BitLinear
    from ..train.model import BitNetLM, ModelConfig
    from ..train.ptq import post_training_quantize as reference

    torch.manual_seed(0)
    fp = BitNetLM(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                              max_seq_len=16, quantized=False))
    before = copy.deepcopy(fp.state_dict())
    x = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        want = reference(fp)(x).numpy()  # before the student's code can touch fp
    q = student_call(post_training_quantize, fp)
    if q is None:
        raise AssertionError("your function returned None — return the quantized copy")
    if not isinstance(q, torch.nn.Module):
        raise AssertionError(f"return the quantized model (a torch.nn.Module), got {type(q).__name__}")
    if q is fp or any(isinstance(m, BitLinear) for m in fp.modules()):
        raise AssertionError("the float model was modified: quantize a copy (copy.deepcopy)")
    for k, v in before.items():
        if not torch.equal(fp.state_dict()[k], v):
            raise AssertionError(f"the float model's {k} changed: quantize a copy")
    n = sum(isinstance(m, BitLinear) for m in q.modules())
    if n != 14:
        raise AssertionError(f"expected 14 BitLinear layers (7 per layer x 2), got {n}")
    if isinstance(q.embed_tokens, BitLinear) or not isinstance(q.embed_tokens, torch.nn.Embedding):
        raise AssertionError("keep the embedding as it is (BitNet quantizes only the projections)")
    logits = student_call(q, x.clone())
    expect_close(logits.detach().numpy() if isinstance(logits, torch.Tensor) else logits, want,
                 "logits of the quantized copy", rtol=1e-4, atol=1e-5)


def _pair2(got, what):
    if got is None:
        raise AssertionError(f"{what}: your function returned None — return (lr, weight_decay)")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise AssertionError(f"{what}: return a pair (lr, weight_decay), got {type(got).__name__}")
    try:
        lr, wd = float(got[0]), float(got[1])
    except Exception:  # noqa: BLE001
        raise AssertionError(f"{what}: lr and weight_decay must be numbers") from None
    if not (np.isfinite(lr) and np.isfinite(wd)) or lr < 0 or wd < 0:
        raise AssertionError(f"{what}: lr and weight decay must be finite and >= 0, got {lr}, {wd}")
    return lr, wd


@check
def check_schedule_design(schedule):
    """``schedule(step, tc) -> (lr, weight_decay)``: any schedule with the b1.58 recipe's
    properties (arXiv 2402.17764 / 2504.12285) passes, not one formula:

    warmup from a small rate up to ``tc.lr``; a high stage 1 that decays at most to half its peak;
    an **abrupt** drop at the stage boundary ``s1 = int(tc.steps * tc.stage1_frac)`` to at most
    ``tc.lr_stage2``; a decaying stage 2 that ends near ``tc.lr_min``; weight decay on in stage 1
    (at most ``tc.weight_decay``) and exactly 0 in stage 2.
    """
    from ..train.loop import TrainConfig

    for tc in (TrainConfig(steps=100, warmup=10), TrainConfig(steps=37, warmup=3, stage1_frac=0.6, lr=1e-2),
               TrainConfig(steps=1000, warmup=50, lr_stage2=2e-4, lr_min=1e-5)):
        s1 = int(tc.steps * tc.stage1_frac)
        where = f"steps={tc.steps}, warmup={tc.warmup}, s1={s1}, lr={tc.lr:g}"
        sched = [_pair2(student_call(schedule, k, tc), f"{where}, step {k}") for k in range(tc.steps)]
        lr = np.array([a for a, _ in sched])
        wd = np.array([b for _, b in sched])
        tol = 1e-9 + 1e-6 * tc.lr
        if lr.max() > tc.lr * (1 + 1e-6):
            raise AssertionError(f"{where}: the rate exceeds the peak tc.lr ({lr.max():.3g})")
        if lr[0] > 0.5 * tc.lr:
            raise AssertionError(f"{where}: no warmup — step 0 already runs at {lr[0]:.3g}; start small "
                                 f"and rise over tc.warmup steps (Adam's moment estimates are still noise)")
        if np.any(np.diff(lr[:tc.warmup + 1]) < -tol) or lr[tc.warmup] < 0.9 * tc.lr:
            raise AssertionError(f"{where}: the warmup must rise to about tc.lr by step tc.warmup "
                                 f"(got {lr[tc.warmup]:.3g} there)")
        if np.any(np.diff(lr[tc.warmup:s1]) > tol):
            raise AssertionError(f"{where}: the rate rises again inside stage 1; after the warmup it "
                                 f"only decays")
        if lr[s1 - 1] < 0.5 * tc.lr * (1 - 1e-6):
            raise AssertionError(f"{where}: stage 1 ends at {lr[s1 - 1]:.3g}, below half the peak: "
                                 f"ternary weights flip only under large steps, keep stage 1 high")
        if lr[s1] > tc.lr_stage2 * (1 + 1e-6) or lr[s1 - 1] < 1.5 * lr[s1]:
            raise AssertionError(f"{where}: no abrupt drop at step {s1} ({lr[s1 - 1]:.3g} -> {lr[s1]:.3g}): "
                                 f"stage 2 must START at tc.lr_stage2 or lower (the cooldown is a step, "
                                 f"not a slope)")
        if np.any(np.diff(lr[s1:]) > tol):
            raise AssertionError(f"{where}: the rate rises inside stage 2; it should only decay")
        if not (0.5 * tc.lr_min <= lr[-1] <= 2 * tc.lr_min + tol):
            raise AssertionError(f"{where}: the last step runs at {lr[-1]:.3g}; stage 2 should end near "
                                 f"tc.lr_min = {tc.lr_min:g}")
        if np.any(wd[s1:] != 0):
            raise AssertionError(f"{where}: weight decay is still on in stage 2 (step {s1 + int(np.argmax(wd[s1:] != 0))}): "
                                 f"switch it off so the latent weights settle instead of shrinking toward "
                                 f"the rounding thresholds")
        if wd[:s1].max() <= 0 or wd.max() > tc.weight_decay * (1 + 1e-6):
            raise AssertionError(f"{where}: weight decay in stage 1 must be on, at most "
                                 f"tc.weight_decay = {tc.weight_decay:g} (got max {wd.max():.3g})")


def _naive_ternary_mse(w):
    s = max(float(np.mean(np.abs(w))), 1e-5)
    return float(np.mean((w - np.clip(np.rint(w / s), -1, 1) * s) ** 2))


@check
def check_ternary_ptq(ternary_ptq):
    """``ternary_ptq(w) -> (q, scale)``: ternary codes and ONE scale for a trained float matrix
    (the HF / I2_S formats), with a weight error at least 10 % below the naive absmean rounding's
    on every test matrix."""
    from ._core import as_array

    rng = np.random.default_rng(5)
    rows = np.exp(rng.normal(0, 0.5, (64, 1)))
    cases = [("Gaussian [64, 128]", rng.normal(0, 0.02, (64, 128))),
             ("Laplace [64, 128]", rng.laplace(0, 0.02, (64, 128))),
             ("Student-t (3 dof) [96, 64]", rng.standard_t(3, (96, 64)) * 0.01),
             ("rows of different spread [64, 128]", rng.normal(0, 0.02, (64, 128)) * rows)]
    for name, w in cases:
        w = w.astype(np.float32)
        naive = _naive_ternary_mse(w)
        got = student_call(ternary_ptq, w)
        if got is None:
            raise AssertionError(f"{name}: your function returned None — return (q, scale)")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise AssertionError(f"{name}: return a pair (q, scale), got {type(got).__name__}")
        q = as_array(got[0], f"{name}: q")
        if q.shape != w.shape:
            raise AssertionError(f"{name}: q must have the shape of w {w.shape}, got {q.shape}")
        if not np.all(np.isin(q, (-1, 0, 1))):
            bad = np.unique(q[~np.isin(q, (-1, 0, 1))])[:4]
            raise AssertionError(f"{name}: q holds values outside {{-1, 0, +1}} ({bad}): clip the rounding")
        scale = as_array(got[1], f"{name}: scale")
        if scale.size != 1:
            raise AssertionError(f"{name}: ONE scale per matrix (got {scale.size}): the HF checkpoint and "
                                 f"I2_S store one weight_scale per projection, per-row scales do not fit")
        scale = float(scale.reshape(()))
        if not np.isfinite(scale) or scale <= 0:
            raise AssertionError(f"{name}: the scale must be a positive number, got {scale}")
        mse = float(np.mean((w - q * scale) ** 2))
        if mse > naive * (1 + 1e-4):
            raise AssertionError(f"{name}: your error {mse:.3g} is WORSE than naive absmean rounding "
                                 f"({naive:.3g})")
        if mse > 0.9 * naive:
            same = abs(mse - naive) <= 1e-6 * naive
            raise AssertionError(f"{name}: error {mse:.3g} vs naive absmean {naive:.3g} — "
                                 + ("that IS the naive rounding; " if same else "not 10 % better; ")
                                 + "the absmean scale is not the best one (Lesson 01, exercise 5): "
                                   "measure, or fit the scale to the codes")
