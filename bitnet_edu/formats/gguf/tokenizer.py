"""The tokenizer GGUF embeds (``tokenizer.ggml.*``) <-> a ``tokenizers.Tokenizer``.

GGUF stores a gpt2-style byte-level BPE as three parallel facts: the token strings (index =
id), a token type per id (1 normal, 3 control = special, 4 user-defined, ...), and the merge
rules as ``"left right"`` strings.  ``tokenizer.ggml.pre`` names the regex that splits text
before BPE: ``llama-bpe`` (LLaMA-3, what 2B4T uses) or ``gpt-2``.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np

from .container import T_ARRAY, T_BOOL, T_INT32, T_STRING, T_UINT32, GGUFError, Value

__all__ = ["tokenizer_from_gguf", "tokenizer_to_gguf", "placeholder_vocab_gguf", "LLAMA3_PATTERN",
           "NORMAL", "CONTROL", "USER_DEFINED"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The LLaMA-3 pre-tokenizer split (tokenizer.json of Meta-Llama-3 and bitnet-b1.58-2B-4T)
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_NAMES = ("llama-bpe", "llama3", "llama-v3")
_PAD = re.compile(r"\[PAD\d+\]")  # filler the converters write for ids missing from the vocab


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers as pt

    if pre == "gpt-2":
        return pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre not in _LLAMA3_NAMES:
        warnings.warn(f"tokenizer.ggml.pre={pre!r} is not one this package knows "
                      f"({_LLAMA3_NAMES + ('gpt-2',)}); using the LLaMA-3 split", stacklevel=3)
    return pt.Sequence([pt.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                        pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])


def tokenizer_from_gguf(meta: dict):
    """Build a ``tokenizers.Tokenizer`` from GGUF metadata (gpt2 byte-level BPE only).

    Control tokens become special added tokens; user-defined tokens become plain added tokens;
    ``tokenizer.ggml.add_bos_token`` (default true, as llama.cpp for LLaMA-3) adds the bos id.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = meta.get("tokenizer.ggml.model")
    if not isinstance(kind, str) or kind != "gpt2":
        raise GGUFError(f"tokenizer.ggml.model={kind!r} is not supported (only 'gpt2' "
                        "byte-level BPE)")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    for key, v in (("tokens", tokens), ("merges", merges)):
        if (not isinstance(v, list) or not all(isinstance(x, str) for x in v)
                or (key == "tokens" and not v)):
            raise GGUFError(f"tokenizer.ggml.{key} must be a (non-empty) array of strings")
    types = meta.get("tokenizer.ggml.token_type", np.full(len(tokens), NORMAL))
    if not isinstance(types, np.ndarray) or types.shape != (len(tokens),):
        raise GGUFError(f"tokenizer.ggml.token_type must be a numeric array with one entry per "
                        f"token ({len(tokens)})")
    pairs = [m.split(" ") for m in merges]
    bad = next((m for m, p in zip(merges, pairs) if len(p) != 2), None)
    if bad is not None:
        raise GGUFError(f"tokenizer.ggml.merges: {bad!r} is not two tokens separated by one space")
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicate string keeps its first id
    pre = meta.get("tokenizer.ggml.pre", "default")
    try:
        bpe = models.BPE(vocab, [tuple(p) for p in pairs], ignore_merges=pre in _LLAMA3_NAMES)
    except Exception as e:  # tokenizers raises its own exception type on a bad merge
        raise GGUFError(f"tokenizer.ggml.merges refer to unknown tokens: {e}") from None
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in np.flatnonzero(types == CONTROL)])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i in np.flatnonzero(types == USER_DEFINED)
                    if not _PAD.fullmatch(tokens[i])])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if bos is not None and (not isinstance(bos, int) or not 0 <= bos < len(tokens)):
        raise GGUFError(f"tokenizer.ggml.bos_token_id={bos!r} is not a token id "
                        f"(0..{len(tokens) - 1})")
    if meta.get("tokenizer.ggml.add_bos_token", True) is True and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B",
            special_tokens=[(tokens[bos], int(bos))])
    return tok


def _pre_name(pre_tokenizer) -> str:
    """The ``tokenizer.ggml.pre`` name of a tokenizer.json pre-tokenizer, or ValueError."""
    p = pre_tokenizer or {}
    if p.get("type") == "ByteLevel" and p.get("use_regex", True):
        return "gpt-2"
    parts = p.get("pretokenizers", []) if p.get("type") == "Sequence" else []
    if (len(parts) == 2 and parts[0].get("type") == "Split"
            and parts[0].get("pattern", {}).get("Regex") == LLAMA3_PATTERN
            and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)):
        return "llama-bpe"
    raise ValueError("GGUF export supports byte-level BPE tokenizers with the GPT-2 or LLaMA-3 "
                     f"pre-tokenizer; this one has {json.dumps(p)[:200]}")


def tokenizer_to_gguf(tok, *, vocab_size: int, bos_token_id, eos_token_id, pad_token_id=None,
                      chat_template: str | None = None) -> dict:
    """The ``tokenizer.ggml.*`` metadata (typed :class:`Value` s) for a byte-level BPE tokenizer.

    ``vocab_size`` is the model's (it may exceed the tokenizer's: the gap is filled with
    ``[PAD<id>]`` user-defined tokens, as bitnet.cpp's converter does).  ``eos_token_id`` may be
    a list: the first is the eos, a second one is written as ``eot_token_id``.
    """
    spec = json.loads(tok.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or spec.get("normalizer"):
        raise ValueError(f"GGUF export needs a BPE tokenizer without normalizer, got model "
                         f"{model.get('type')!r}, normalizer {spec.get('normalizer')!r}")
    pre = _pre_name(spec.get("pre_tokenizer"))
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"tokenizer has token id {max(by_id)} but the model vocab_size is "
                         f"{vocab_size}")
    added = tok.get_added_tokens_decoder()
    tokens, types = [], np.full(vocab_size, NORMAL, np.int32)
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types[i] = USER_DEFINED
        else:
            tokens.append(by_id[i])
            if i in added:
                types[i] = CONTROL if added[i].special else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    meta = {
        "tokenizer.ggml.model": Value(T_STRING, "gpt2"),
        "tokenizer.ggml.pre": Value(T_STRING, pre),
        "tokenizer.ggml.tokens": Value(T_ARRAY, tokens, T_STRING),
        "tokenizer.ggml.token_type": Value(T_ARRAY, types, T_INT32),
        "tokenizer.ggml.merges": Value(T_ARRAY, merges, T_STRING),
    }
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos[0],
           "eot_token_id": eos[1] if len(eos) > 1 else None,
           "padding_token_id": pad_token_id if pad_token_id is not None else eos[0]}
    for key, v in ids.items():
        if v is not None:
            meta[f"tokenizer.ggml.{key}"] = Value(T_UINT32, int(v))
    # true whenever there is a bos id: our generate() puts bos in front of every text prompt
    # (tokenizer.json's own post-processor or not), and bitnet.cpp follows this flag
    meta["tokenizer.ggml.add_bos_token"] = Value(T_BOOL, bos_token_id is not None)
    if chat_template:
        meta["tokenizer.chat_template"] = Value(T_STRING, chat_template)
    return meta


def placeholder_vocab_gguf(vocab_size: int, *, bos_token_id=None, eos_token_id=None,
                           pad_token_id=None) -> dict:
    """``tokenizer.ggml.*`` metadata for a model without a tokenizer: ``<tok_N>`` for every id.

    For speed runs of a random-weight model (bitnet.cpp and our engine take token ids); the
    tokens are normal, there are no merges, and only the ids that fit the vocabulary are written.
    """
    eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    meta = {
        "tokenizer.ggml.model": Value(T_STRING, "gpt2"),
        "tokenizer.ggml.pre": Value(T_STRING, "llama-bpe"),
        "tokenizer.ggml.tokens": Value(T_ARRAY, [f"<tok_{i}>" for i in range(vocab_size)],
                                       T_STRING),
        "tokenizer.ggml.token_type": Value(T_ARRAY, np.full(vocab_size, NORMAL, np.int32), T_INT32),
        "tokenizer.ggml.merges": Value(T_ARRAY, [], T_STRING),
    }
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos[0],
           "eot_token_id": eos[1] if len(eos) > 1 else None,
           "padding_token_id": pad_token_id if pad_token_id is not None else eos[0]}
    for key, v in ids.items():
        if v is not None and 0 <= int(v) < vocab_size:
            meta[f"tokenizer.ggml.{key}"] = Value(T_UINT32, int(v))
    meta["tokenizer.ggml.add_bos_token"] = Value(
        T_BOOL, "tokenizer.ggml.bos_token_id" in meta)
    return meta
