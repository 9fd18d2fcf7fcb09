"""A byte-level BPE tokenizer trained on the corpus with the ``tokenizers`` library.

Byte-level (as GPT-2 and LLaMA-3) means every string is encodable: the base alphabet is the 256
bytes, and merges learned on the corpus build words on top.  One special token,
``<|endoftext|>`` (id 0), separates documents and serves as bos/eos.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["train_bpe", "EOT"]

EOT = "<|endoftext|>"


def train_bpe(texts, vocab_size: int = 4096) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (including the 256 bytes and ``EOT``) on ``texts``."""
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size={vocab_size} must exceed 257 (256 bytes + {EOT})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
