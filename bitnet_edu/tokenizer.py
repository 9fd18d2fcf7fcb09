"""Tokenizers for the models: ``tokenizer.json`` (HF directory) or a GGUF's embedded vocab.

Both give a ``tokenizers.Tokenizer``.  The 2B4T tokenizer is LLaMA-3's byte-level BPE; its
``post_processor`` adds ``<|begin_of_text|>`` (bos) in front of every encoded text.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_tokenizer", "encode", "special_id"]


def load_tokenizer(path):
    """``tokenizers.Tokenizer`` from a model directory (``tokenizer.json``) or a file; None if absent."""
    from tokenizers import Tokenizer

    path = Path(path)
    f = path / "tokenizer.json" if path.is_dir() else path
    if not f.exists():
        return None
    try:
        return Tokenizer.from_file(str(f))
    except Exception as e:  # the Rust error says what is wrong in the JSON
        raise ValueError(f"{f}: not a valid tokenizer.json: {e}") from None


def encode(tok, text: str) -> list[int]:
    """Token ids of ``text`` (with the tokenizer's own bos handling)."""
    return tok.encode(text).ids


def special_id(tok, text: str):
    """The id of a special token such as ``"<|eot_id|>"``, or None."""
    return tok.token_to_id(text) if tok is not None else None
