"""Export a trained :class:`~bitnet_edu.train.model.BitNetLM` in the real HF packed format.

The directory is what ``microsoft/bitnet-b1.58-2B-4T`` looks like, only smaller:

* ``config.json`` — ``model_type: bitnet``, ``BitNetForCausalLM``, tied embeddings and the
  *offline* quantization config (weights already ternary on disk);
* ``model.safetensors`` — each projection as uint8 ``[out/4, in]`` (2-bit codes packed along the
  output axis, :func:`~bitnet_edu.packing.pack_hf`) plus its absmean ``weight_scale`` bf16 ``[1]``;
  embedding and norms bf16;
* ``tokenizer.json`` (+ ``tokenizer_config.json``, ``generation_config.json``).

Our module names already are the HF names, so the export is: prefix ``model.``, quantize the
linears, cast the rest.  transformers, the Numba engine and bitnet.cpp's converter all read it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..bitlinear import BitLinear
from ..packing import pack_hf
from ..quant import absmean_ternary
from .bpe import EOT

__all__ = ["export_hf", "hf_config", "hf_state_dict", "packed_bytes"]

QUANT_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}


def hf_config(model, eot_id: int) -> dict:
    """The ``config.json`` dict for ``model`` (keys as in the 2B4T file)."""
    c = model.cfg
    return {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "relu2",
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "bfloat16",
        "quantization_config": dict(QUANT_CONFIG),
    }


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """HF tensor name -> tensor: packed uint8 + bf16 ``weight_scale`` for each BitLinear, bf16 otherwise."""
    bitlinear = {name for name, m in model.named_modules() if isinstance(m, BitLinear)}
    if not bitlinear:
        raise ValueError("model has no BitLinear layers: export a QAT model "
                         "(or post_training_quantize a float one)")
    out = {}
    for name, t in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if module in bitlinear:
            q, s = absmean_ternary(t.float().numpy(), model.cfg.eps)
            out[f"model.{name}"] = torch.from_numpy(pack_hf(q))
            out[f"model.{module}.weight_scale"] = torch.tensor([s], dtype=torch.bfloat16)
        else:
            out[f"model.{name}"] = t.detach().to(torch.bfloat16)
    return {k: v.contiguous() for k, v in out.items()}


def export_hf(model, tokenizer, out_dir) -> Path:
    """Write ``model`` (a QAT :class:`BitNetLM`) and its ``tokenizers.Tokenizer`` to ``out_dir``."""
    from safetensors.torch import save_file

    if tokenizer.get_vocab_size() > model.cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                         f"{model.cfg.vocab_size}")
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise ValueError(f"tokenizer lacks the {EOT} special token")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(model, eot), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": eot, "eos_token_id": eot, "do_sample": True, "temperature": 0.8, "top_k": 40},
        indent=2) + "\n")
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
         "model_max_length": model.cfg.max_seq_len}, indent=2) + "\n")
    return out


def packed_bytes(out_dir) -> int:
    """Size of ``model.safetensors`` in bytes."""
    return (Path(out_dir) / "model.safetensors").stat().st_size

