"""Write tiny random BitNet checkpoints in exactly the real HF on-disk formats (for tests).

The hub is unreachable here, so tests build their own checkpoints: transformers'
``BitNetConfig`` / ``BitNetForCausalLM`` give the tensor names and shapes, weights are drawn
from a seeded NumPy generator, linears are quantized with absmean and packed with
transformers' own ``pack_weights``, and the file is written with the ``safetensors`` library.
Needs torch, transformers and safetensors (test dependencies).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bitnet_edu.quant import absmean_ternary

__all__ = ["write_tiny_checkpoint", "tiny_tokenizer", "TINY_DEFAULTS", "CHAT_TEMPLATE"]

# Odd on purpose: 3 layers, GQA ratio 3, head_dim 16, vocab not a power of two.
TINY_DEFAULTS = dict(hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                     num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                     rms_norm_eps=1e-5, rope_theta=10000.0)

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
_CORPUS = [
    "BitNet b1.58 stores every weight as -1, 0 or +1 with one scale per matrix.",
    "The quick brown fox jumps over the lazy dog.",
    "A ternary model runs fast on a laptop CPU because it only adds and subtracts.",
    "User: What is the capital of France? Assistant: Paris is the capital of France.",
    "Hello world! Hello BitNet. Tokens, tensors, and tiny tests.",
]
# The 2B4T chat template (tokenizer_config.json of microsoft/bitnet-b1.58-2B-4T).
CHAT_TEMPLATE = ("{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
                 "{% set content = message['role'] | capitalize + ': ' + message['content'] | trim "
                 "+ '<|eot_id|>' %}{{ content }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}")


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on a few sentences (LLaMA-3 specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok


def _state_dict(cfg, rng) -> dict[str, np.ndarray]:
    """float32 weights for every tensor of ``BitNetForCausalLM(cfg)`` (names from transformers)."""
    import torch
    from transformers import BitNetForCausalLM

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in BitNetForCausalLM(cfg).state_dict().items()}
    out = {}
    for name, shape in shapes.items():
        if name == "lm_head.weight":
            continue  # tied to the embedding: the real checkpoint has no lm_head tensor
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            out[name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        elif name == "model.embed_tokens.weight":
            out[name] = rng.standard_normal(shape).astype(np.float32)
        else:  # a linear: spread the scales so each layer's weight_scale differs
            out[name] = (rng.uniform(0.15, 0.4) * rng.standard_normal(shape)).astype(np.float32)
    return out


def write_tiny_checkpoint(directory, *, packed: bool = True, seed: int = 0, vocab_size=None,
                          **config_overrides) -> Path:
    """Write a tiny random BitNet checkpoint directory in the real HF format.

    Args:
        directory: created if missing; receives ``config.json``, ``model.safetensors``,
            ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json``.
        packed: True -> the offline packed format (uint8 ``[out/4, in]`` + bf16 ``weight_scale``,
            as ``microsoft/bitnet-b1.58-2B-4T``); False -> bf16 master weights with the online
            quantization config (as ``...-2B-4T-bf16``).
        seed: the same seed gives the same weights in both formats (packed = quantized master).
        vocab_size: model vocab (default: tokenizer size + 5, never a power of two).
        config_overrides: any ``BitNetConfig`` field (hidden_size, num_hidden_layers, ...).

    Returns the directory as a ``Path``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import BitNetConfig
    from transformers.integrations.bitnet import pack_weights

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    n_tok = tok.get_vocab_size()
    bos, eos, eot = (tok.token_to_id(s) for s in SPECIALS)
    kw = {**TINY_DEFAULTS, **config_overrides}
    theta = kw.pop("rope_theta")
    cfg = BitNetConfig(vocab_size=vocab_size or n_tok + 5, tie_word_embeddings=True,
                       bos_token_id=bos, eos_token_id=eos, pad_token_id=None,
                       rope_parameters={"rope_type": "default", "rope_theta": theta}, **kw)
    weights = _state_dict(cfg, np.random.default_rng(seed))

    tensors = {}
    for name, w in weights.items():
        t = torch.from_numpy(w).to(torch.bfloat16)
        if packed and name.endswith("_proj.weight"):
            q, s = absmean_ternary(t.float().numpy())  # quantize what the master file holds
            tensors[name] = pack_weights(torch.from_numpy(q.astype(np.float32)).clone()).contiguous()
            tensors[name + "_scale"] = torch.tensor([s], dtype=torch.bfloat16)
        else:
            tensors[name] = t.contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})

    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range",
            "rms_norm_eps", "use_cache", "bos_token_id", "eos_token_id", "tie_word_embeddings",
            "attention_bias", "attention_dropout", "model_type")
    config = {k: v for k, v in cfg.to_dict().items() if k in keep}
    config.update(rope_theta=theta, architectures=["BitNetForCausalLM"], torch_dtype="bfloat16",
                  quantization_config={"quant_method": "bitnet", "linear_class": "autobitlinear",
                                       "quantization_mode": "offline" if packed else "online"})
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": bos, "eos_token_id": [eos, eot], "do_sample": False}, indent=2))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "chat_template": CHAT_TEMPLATE,
         "model_max_length": kw["max_position_embeddings"]}, indent=2))
    return directory
