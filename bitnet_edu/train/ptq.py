"""Post-training quantization (PTQ) versus quantization-aware training (QAT).

PTQ: train a full-precision model, then round its weights to ternary (and its activations to
int8) with the very same absmean / absmax rules.  QAT: train with that rounding in the forward
pass from step one, so the weights learn to live on three values.  At 1.58 bits the difference
is dramatic: the float model never had a reason to make its weights ternary-friendly.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..bitlinear import BitLinear, replace_linears
from ..quant import absmean_ternary
from .loop import TrainConfig, evaluate, train
from .model import BitNetLM, ModelConfig

__all__ = ["post_training_quantize", "zero_fraction", "ternary_codes", "compare_ptq_qat"]


def post_training_quantize(model: BitNetLM) -> BitNetLM:
    """A copy of a float ``model`` whose seven projections per layer are ``BitLinear`` (same float
    weights, ternary + int8 in the forward).  The embedding and norms stay as they are, exactly
    as in a QAT model."""
    q = replace_linears(copy.deepcopy(model), skip=())
    q.cfg = ModelConfig(**{**model.cfg.to_dict(), "quantized": True})
    return q


def ternary_codes(model: BitNetLM) -> np.ndarray:
    """Every BitLinear weight rounded to {-1, 0, +1} (each with its own absmean), int8, flattened."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    if not layers:
        return np.zeros(0, np.int8)
    return np.concatenate([absmean_ternary(m.weight.detach().float().numpy(), m.eps)[0].ravel()
                           for m in layers])


def zero_fraction(model: BitNetLM) -> float:
    """Fraction of ternary weights that are 0 (NaN for a float model, which has none)."""
    q = ternary_codes(model)
    return float(np.mean(q == 0)) if q.size else float("nan")


def compare_ptq_qat(mcfg: ModelConfig, tc: TrainConfig, train_data, val_data, progress: bool = False) -> dict:
    """Train a float and a QAT model of the same shape, same seed, same batches; quantize the float
    one after training.  Returns ``{"fp", "ptq", "qat"}`` validation losses, the float and QAT
    histories, and the three models.
    """
    models, hist = {}, {}
    for kind, quantized in (("fp", False), ("qat", True)):
        torch.manual_seed(tc.seed)
        models[kind] = BitNetLM(ModelConfig(**{**mcfg.to_dict(), "quantized": quantized}))
        hist[kind] = train(models[kind], train_data, val_data, tc, progress=progress)
    models["ptq"] = post_training_quantize(models["fp"])
    val = {k: evaluate(m, val_data, tc) for k, m in models.items()}
    return {"val_loss": val, "history": hist, "models": models}
