"""The training loop: AdamW with the BitNet b1.58 two-stage schedule, clipping, eval, checkpoints.

The schedule (after the BitNet b1.58 2B4T technical report, Microsoft, April 2025, in our words):

* **Stage 1 — high learning rate.**  Ternary models tolerate, and need, a larger learning rate
  than a float model of the same size: a small update rarely flips a ternary weight, so progress
  is slow unless steps are big.  After a short warmup the rate follows a cosine decay from a high
  peak.  Weight decay follows its own cosine schedule and peaks at 0.1 in this stage.
* **Stage 2 — cooldown.**  About halfway through the planned tokens the learning rate drops
  abruptly to a much lower peak and decays from there (cosine again), and weight decay is turned
  off entirely.  The latent float weights stop being pulled towards zero and settle, so fewer of
  them sit at a rounding boundary and the ternary weights stop flipping back and forth.  The
  report observes a sharp fall in loss at the switch.

(The report also changes the data mix in stage 2, towards higher-quality text; with one corpus
we skip that.)  Everything else is the usual nanoGPT loop: random windows of the token stream,
gradient-norm clipping, periodic validation, loss history as JSON, a checkpoint to resume from.
Batches are drawn from a generator seeded by ``(seed, step)``, so a resumed run sees exactly the
batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..formats.atomic import atomic_write
from .data import get_batch
from .model import zero_fraction

__all__ = ["TrainConfig", "lr_at", "weight_decay_at", "train", "evaluate", "train_step",
           "make_optimizer", "save_checkpoint", "load_checkpoint", "compiled", "bf16_fast",
           "set_grad_dtype"]


@dataclass
class TrainConfig:
    steps: int = 1200
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3         # stage-1 peak
    lr_stage2: float = 1e-3  # stage-2 peak, right after the drop
    lr_min: float = 1e-4     # end of stage 2
    warmup: int = 50
    stage1_frac: float = 0.5  # fraction of steps in stage 1
    weight_decay: float = 0.1  # stage-1 peak; stage 2 uses 0
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_iters: int = 8
    seed: int = 1337
    threads: int = 2
    compile: bool = False  # torch.compile the training forward/backward (eager if it fails)
    bf16_grads: bool = False  # bf16 backward matmuls in BitLinear, where the CPU has bf16 units

    def to_dict(self) -> dict:
        return asdict(self)


def _cosine(t: float, hi: float, lo: float) -> float:
    """Cosine from ``hi`` (t=0) to ``lo`` (t=1)."""
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def lr_at(step: int, tc: TrainConfig) -> float:
    """Learning rate at ``step``: warmup, cosine from ``lr`` (stage 1), drop to ``lr_stage2``,
    cosine to ``lr_min`` (stage 2)."""
    s1 = int(tc.steps * tc.stage1_frac)
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    if step < s1:
        # stage 1 decays only to half its peak: the real drop is the switch to stage 2
        return _cosine((step - tc.warmup) / max(1, s1 - tc.warmup), tc.lr, tc.lr / 2)
    return _cosine((step - s1) / max(1, tc.steps - s1 - 1), tc.lr_stage2, tc.lr_min)


def weight_decay_at(step: int, tc: TrainConfig) -> float:
    """Weight decay at ``step``: cosine peaking at ``weight_decay`` mid stage 1, then 0."""
    s1 = int(tc.steps * tc.stage1_frac)
    if step >= s1:
        return 0.0
    return tc.weight_decay * math.sin(math.pi * step / s1) if s1 > 1 else tc.weight_decay


def make_optimizer(model, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW; decay applies to matrices only (linears, embedding), never to norm weights."""
    mats = [p for p in model.parameters() if p.dim() >= 2]
    vecs = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": mats, "weight_decay": tc.weight_decay},
              {"params": vecs, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.95), eps=1e-8)


def _set_schedule(opt, step: int, tc: TrainConfig):
    lr, wd = lr_at(step, tc), weight_decay_at(step, tc)
    opt.param_groups[0].update(lr=lr, weight_decay=wd)
    opt.param_groups[1].update(lr=lr)
    return lr, wd


def train_step(model, opt, x, y, grad_clip: float = 1.0) -> float:
    """One optimizer step on batch ``(x, y)``: forward, backward, clip, update.  Returns the loss."""
    model.train()
    _, loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item()


def compiled(model):
    """``torch.compile(model)`` (inductor: fuses the elementwise quantization, norm and RoPE ops
    into C++ loops; needs a C++ compiler, compiles on the first call), or None where torch.compile
    is unavailable.  The result shares ``model``'s parameters."""
    try:
        return torch.compile(model)
    except Exception as e:  # noqa: BLE001 - any failure means: train eagerly
        warnings.warn(f"torch.compile unavailable ({type(e).__name__}: {e}); training eagerly",
                      RuntimeWarning, stacklevel=2)
        return None


def bf16_fast() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 matmuls
    are emulated and slower than float32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch
        return False


def set_grad_dtype(model, bf16: bool) -> bool:
    """Set every BitLinear's backward matmul dtype (``BitLinear.grad_dtype``): bf16 when asked
    and :func:`bf16_fast`, else float32.  Returns whether bf16 is in use."""
    from ..bitlinear import BitLinear

    use = bool(bf16) and bf16_fast()
    if bf16 and not use:
        warnings.warn("bf16_grads: this CPU has no native bf16 matmul; using float32",
                      RuntimeWarning, stacklevel=2)
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.grad_dtype = torch.bfloat16 if use else None
    return use


def _first_step(fast, model, opt, x, y, grad_clip):
    """The first step through the compiled ``fast`` (where compilation happens); on any
    failure a warning and the same step eagerly.  Returns ``(loss, module to use from now)``."""
    try:
        return train_step(fast, opt, x, y, grad_clip), fast
    except Exception as e:  # noqa: BLE001 - a compiler error of any kind
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      "training eagerly", RuntimeWarning, stacklevel=3)
        return train_step(model, opt, x, y, grad_clip), model


@torch.no_grad()
def evaluate(model, data, tc: TrainConfig) -> float:
    """Mean loss over ``tc.eval_iters`` fixed batches of ``data`` (same batches at every call)."""
    model.eval()
    g = torch.Generator().manual_seed(tc.seed + 1)
    losses = [float(model(*get_batch(data, tc.batch_size, tc.seq_len, g))[1]) for _ in range(tc.eval_iters)]
    return sum(losses) / len(losses)


def save_checkpoint(path, model, opt, step: int, history: dict, tc: TrainConfig):
    """Save weights, optimizer state, step and history (plain values only, so that
    :func:`load_checkpoint` can refuse anything else).  Written to a private temporary file and
    renamed: a crash mid-save never leaves a broken checkpoint, a planted symlink is not followed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                    "history": history, "model_config": model.cfg.to_dict(),
                    "train_config": tc.to_dict()}, f)


def load_checkpoint(path, model, opt=None) -> tuple[int, dict]:
    """Restore weights (and optimizer) from ``path``; returns ``(next_step, history)``.

    ``weights_only=True``: torch's restricted unpickler accepts tensors and plain containers only,
    so a shared ``checkpoint.pt`` cannot run code (a full pickle would)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler refuses anything but plain values
        raise ValueError(f"{path}: not a bitnet_edu training checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    model.load_state_dict(ck["model"])
    if opt is not None:
        opt.load_state_dict(ck["optim"])
    return ck["step"], ck["history"]


def _new_history() -> dict:
    return {"step": [], "loss": [], "lr": [], "weight_decay": [], "val_step": [], "val_loss": [],
            "zero_fraction": [], "seconds": 0.0}


def train(model, train_data, val_data, tc: TrainConfig, out_dir=None, resume: bool = False,
          callback=None, progress: bool = True) -> dict:
    """Train ``model`` in place for ``tc.steps`` steps; returns the loss history.

    Args:
        train_data, val_data: uint16 token streams (see :func:`~bitnet_edu.train.data.encode_texts`).
        out_dir: if given, ``checkpoint.pt`` and ``history.json`` are written there at every eval.
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        callback: ``callback(step, model, history)`` called after every eval (notebook plots).

    History keys: ``step, loss, lr, weight_decay`` (every step), ``val_step, val_loss,
    zero_fraction`` (every eval; zero fraction of the ternary weights, NaN for a float model),
    ``seconds``, ``bf16_grads`` and ``compiled`` (what this call actually used).
    """
    torch.set_num_threads(tc.threads)
    opt = make_optimizer(model, tc)
    history, start = _new_history(), 0
    ckpt = Path(out_dir) / "checkpoint.pt" if out_dir else None
    if resume and ckpt is not None and ckpt.exists():
        start, history = load_checkpoint(ckpt, model, opt)
    t0 = time.perf_counter() - history["seconds"]
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not progress,
               desc="train", mininterval=2.0)
    history["bf16_grads"] = set_grad_dtype(model, tc.bf16_grads)
    fast = compiled(model) if tc.compile else None  # evaluation stays eager
    for step in bar:
        lr, wd = _set_schedule(opt, step, tc)
        g = torch.Generator().manual_seed(tc.seed * 100_003 + step)  # batch depends on (seed, step) only
        x, y = get_batch(train_data, tc.batch_size, tc.seq_len, g)
        if fast is not None and step == start:
            loss, fast = _first_step(fast, model, opt, x, y, tc.grad_clip)
            if fast is model:
                fast = None
        else:
            loss = train_step(model if fast is None else fast, opt, x, y, tc.grad_clip)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; lower the learning rate")
        for k, v in (("step", step), ("loss", loss), ("lr", lr), ("weight_decay", wd)):
            history[k].append(v)
        last = step == tc.steps - 1
        if (step + 1) % tc.eval_every == 0 or last:
            history["val_step"].append(step)
            history["val_loss"].append(evaluate(model, val_data, tc))
            history["zero_fraction"].append(zero_fraction(model))
            history["seconds"] = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{history['val_loss'][-1]:.3f}", lr=f"{lr:.1e}")
            if progress:
                bar.write(f"step {step + 1}: train {loss:.3f}  val {history['val_loss'][-1]:.3f}  "
                          f"lr {lr:.2e}  wd {wd:.3f}  zeros {history['zero_fraction'][-1]:.3f}  "
                          f"{history['seconds']:.0f}s")
            if ckpt is not None:
                save_checkpoint(ckpt, model, opt, step + 1, history, tc)
                (ckpt.parent / "history.json").write_text(json.dumps(history))
            if callback is not None:
                callback(step, model, history)
    history["seconds"] = time.perf_counter() - t0
    history["compiled"] = fast is not None
    return history
