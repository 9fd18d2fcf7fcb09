"""LoRA fine-tuning of a BitNet b1.58 model whose ternary base stays frozen, in PEFT's format.

One place for the whole API (the layers live in :mod:`.adapter`, the experiments in
:mod:`.finetune`, the data in :mod:`.finetune_data`, the torch copy of a shipped model in
:mod:`.import_hf`)::

    from bitnet_edu.train.lora import load_bitnet_lm, LoraConfig, add_lora, save_adapter
    lm = load_bitnet_lm()                      # the shipped model, as a QAT BitNetLM
    add_lora(lm, LoraConfig(r=8, lora_alpha=16))
    ...train...                                # only lora_A / lora_B require grad
    save_adapter(lm, "my_adapter")             # adapter_config.json + adapter_model.safetensors

    # PEFT reads it onto the same torch model (HF module layout):
    peft.PeftModel.from_pretrained(HFCausalLM(load_bitnet_lm()), "my_adapter")

CLI::

    python -m bitnet_edu.train.lora compare [--fast]   # LoRA vs continued QAT vs merge+requantize
    python -m bitnet_edu.train.lora chat [--fast]      # a LoRA chat adapter on KJV questions
    python -m bitnet_edu.train.lora chat --out bitnet_edu/adapters/chat   # the shipped one
        [--kinds son_of,begat,father,passage,verse,verse_end] [--steps N] [--r 8] [--targets q_proj,...]

The shipped chat adapter (``bitnet_edu/adapters/chat``, its README.md has the numbers) loads
with :func:`load_adapter` onto :func:`load_bitnet_lm`'s model, or with PEFT onto
``HFCausalLM(load_bitnet_lm())``.
"""

from __future__ import annotations

from .adapter import (PEFT_TARGETS, HFCausalLM, LoraConfig, LoraLinear, adapter_state_dict,  # noqa: F401
                      add_lora, load_adapter, lora_layers, merge_lora, merge_report,
                      merged_model, peft_config_dict, requantize, save_adapter,
                      trainable_parameters)
from .finetune import (FinetuneConfig, compare, exact_match, fast_frozen, finetune,  # noqa: F401
                       format_compare, plain_text_match, train_chat_adapter)
from .finetune import main as _main
from .finetune_data import kjv_chat_items, stdlib_docs  # noqa: F401
from .import_hf import latent_from_ternary, load_bitnet_lm  # noqa: F401

__all__ = ["PEFT_TARGETS", "HFCausalLM", "LoraConfig", "LoraLinear", "adapter_state_dict",
           "add_lora", "load_adapter", "lora_layers", "merge_lora", "merge_report",
           "merged_model", "peft_config_dict", "requantize", "save_adapter",
           "trainable_parameters", "FinetuneConfig", "compare", "exact_match", "finetune",
           "format_compare", "train_chat_adapter", "fast_frozen", "plain_text_match",
           "kjv_chat_items", "stdlib_docs",
           "latent_from_ternary", "load_bitnet_lm", "main"]


def main(argv=None):
    """``python -m bitnet_edu.train.lora compare|chat [--fast] ...``"""
    return _main(argv)


if __name__ == "__main__":
    main()
