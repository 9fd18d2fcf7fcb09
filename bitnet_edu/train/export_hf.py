"""Export a trained :class:`~bitnet_edu.train.model.BitNetLM` in the real HF packed format.

The directory is what ``microsoft/bitnet-b1.58-2B-4T`` looks like, only smaller
(``docs/formats.md``):

* ``config.json`` — the model's :class:`~bitnet_edu.config.BitNetConfig` (``model_type:
  bitnet``, ``BitNetForCausalLM``, tied embeddings) plus the *offline* quantization config
  (weights already ternary on disk);
* ``model.safetensors`` — each projection as uint8 ``[out/4, in]`` (2-bit codes packed along the
  output axis, :func:`~bitnet_edu.packing.pack_hf`) plus its absmean ``weight_scale`` bf16 ``[1]``;
  embedding and norms bf16;
* ``tokenizer.json`` (+ ``tokenizer_config.json``, ``generation_config.json``).

Our module names already are the HF names, so the export is: prefix ``model.``, quantize the
linears, and hand the canonical tensors to :func:`bitnet_edu.formats.hf.write_hf_checkpoint`
(the same writer the engine's models use).  transformers, the Numba engine and bitnet.cpp's
converter all read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..bitlinear import BitLinear
from ..formats.hf import QUANT_CONFIG, write_hf_checkpoint
from ..formats.schema import expected_tensors, is_linear, is_scale
from ..packing import pack_hf
from ..quant import absmean_ternary
from .bpe import EOT

__all__ = ["export_hf", "hf_config", "hf_state_dict", "canonical_tensors", "packed_bytes"]


def hf_config(model, eot_id: int) -> dict:
    """The ``config.json`` dict for ``model``: its config's ``to_dict()`` with bos/eos the
    end-of-text id, plus the offline ``quantization_config``."""
    d = model.cfg.to_dict()
    d.update(bos_token_id=eot_id, eos_token_id=eot_id, quantization_config=dict(QUANT_CONFIG))
    return d


def canonical_tensors(model):
    """``model``'s canonical checkpoint (:mod:`bitnet_edu.formats.schema`), one tensor at a time
    in the schema's order: each BitLinear weight as int8 ternary ``[out, in]`` (absmean, as the
    QAT forward rounds it) then its float32 ``[1]`` scale; every other tensor float32."""
    bitlinear = {name for name, m in model.named_modules() if isinstance(m, BitLinear)}
    if not bitlinear:
        raise ValueError("model has no BitLinear layers: export a QAT model "
                         "(or post_training_quantize a float one)")
    sd = model.state_dict()
    for name in expected_tensors(model.cfg):
        if is_scale(name):
            continue  # comes with its weight
        t = sd[name.removeprefix("model.")].detach().float()
        if is_linear(name) and name.removeprefix("model.").rsplit(".", 1)[0] in bitlinear:
            q, s = absmean_ternary(t.numpy(), model.cfg.rms_norm_eps)
            yield name, q
            yield name + "_scale", np.array([s], np.float32)
        else:
            yield name, t.numpy()


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """HF tensor name -> tensor as stored: packed uint8 + bf16 ``weight_scale`` for each
    BitLinear, bf16 otherwise (what :func:`export_hf` writes, as torch tensors)."""
    out = {}
    for name, a in canonical_tensors(model):
        if is_linear(name):
            out[name] = torch.from_numpy(pack_hf(a))
        else:
            out[name] = torch.from_numpy(np.ascontiguousarray(a)).to(torch.bfloat16)
    return out


def export_hf(model, tokenizer, out_dir) -> Path:
    """Write ``model`` (a QAT :class:`BitNetLM`) and its ``tokenizers.Tokenizer`` to ``out_dir``."""
    if tokenizer.get_vocab_size() > model.cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                         f"{model.cfg.vocab_size}")
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise ValueError(f"tokenizer lacks the {EOT} special token")
    return write_hf_checkpoint(
        out_dir, hf_config(model, eot), canonical_tensors(model), tokenizer=tokenizer,
        generation_config={"bos_token_id": eot, "eos_token_id": eot, "do_sample": True,
                           "temperature": 0.8, "top_k": 40},
        tokenizer_config={"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT,
                          "eos_token": EOT,
                          "model_max_length": model.cfg.max_position_embeddings})


def packed_bytes(out_dir) -> int:
    """Size of ``model.safetensors`` in bytes."""
    return (Path(out_dir) / "model.safetensors").stat().st_size
