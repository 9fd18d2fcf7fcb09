"""Post-training quantization (PTQ) versus quantization-aware training (QAT).

PTQ: train a full-precision model, then round its weights to ternary (and its activations to
int8) with the very same absmean / absmax rules.  QAT: train with that rounding in the forward
pass from step one, so the weights learn to live on three values.  At 1.58 bits the difference
is dramatic: the float model never had a reason to make its weights ternary-friendly.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from ..bitlinear import replace_linears
from ..config import BitNetConfig
from .loop import TrainConfig, evaluate, train
from .model import BitNetLM, ternary_codes, zero_fraction

__all__ = ["post_training_quantize", "zero_fraction", "ternary_codes", "compare_ptq_qat"]


def post_training_quantize(model: BitNetLM) -> BitNetLM:
    """A copy of a float ``model`` whose seven projections per layer are ``BitLinear`` (same float
    weights, ternary + int8 in the forward).  The embedding and norms stay as they are, exactly
    as in a QAT model."""
    q = replace_linears(copy.deepcopy(model), skip=())
    q.cfg = replace(model.cfg, quantized=True)
    return q


def compare_ptq_qat(mcfg: BitNetConfig, tc: TrainConfig, train_data, val_data,
                    progress: bool = False) -> dict:
    """Train a float and a QAT model of shape ``mcfg``, same seed, same batches; quantize the float
    one after training.  Returns ``{"fp", "ptq", "qat"}`` validation losses, the float and QAT
    histories, and the three models.
    """
    models, hist = {}, {}
    for kind, quantized in (("fp", False), ("qat", True)):
        torch.manual_seed(tc.seed)
        models[kind] = BitNetLM(mcfg, quantized=quantized)
        hist[kind] = train(models[kind], train_data, val_data, tc, progress=progress)
    models["ptq"] = post_training_quantize(models["fp"])
    val = {k: evaluate(m, val_data, tc) for k, m in models.items()}
    return {"val_loss": val, "history": hist, "models": models}
