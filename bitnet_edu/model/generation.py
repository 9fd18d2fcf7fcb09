"""Text generation: the prefill/decode loop with a KV cache, streaming, chat.

The loop: one *prefill* forward over the whole prompt fills the KV cache (matrix-matrix
kernels), then each *decode* step runs one token (matrix-vector kernels) and samples the
next from the last logits with the rules of :mod:`bitnet_edu.model.sampling` (all seeded,
reproducible).  A list of prompts is decoded together (:mod:`bitnet_edu.model.batching`).
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["sample_next", "top_p_filter", "top_k_filter", "apply_repetition_penalty",
           "generate", "stream", "generate_ids", "chat_prompt", "CHAT_STOP", "TextPieces"]

from ..formats.chat_template import builtin_2b4t, is_2b4t_template, render_chat_template
from .sampling import (CHAT_STOP, _check_options, _stop_ids,  # noqa: F401 (public here too)
                       apply_repetition_penalty, sample_next, top_k_filter, top_p_filter)


def _prompt_ids(model, prompt):
    """``(ids, is_text)``; text gets the bos token in front when the tokenizer does not add it."""
    if isinstance(prompt, str):
        ids = model.encode(prompt)
        bos = model.config.bos_token_id
        if bos is not None and getattr(model, "add_bos_token", None) is not False \
                and (not ids or ids[0] != bos):  # False: a GGUF saying no bos (as llama.cpp)
            ids = [int(bos)] + ids
        return ids, True
    try:
        arr = np.asarray(prompt)
    except ValueError:  # ragged nesting
        raise ValueError("token ids must be a flat list (or array) of integers") from None
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got {arr.dtype} values such as "
                         f"{arr.reshape(-1)[0]!r}; text prompts are strings")
    ids = [int(i) for i in arr.reshape(-1)]
    if not ids:
        raise ValueError("the prompt has no tokens")
    vocab = getattr(model.config, "vocab_size", None)
    bad = [i for i in ids if i < 0 or (vocab is not None and i >= vocab)]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside this model's vocabulary "
                         f"[0, {vocab}) ({len(bad)} such id{'s' if len(bad) > 1 else ''})")
    return ids, False


def generate_ids(model, ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, seed=None, stop=None):
    """Yield new token ids one at a time (the stop token itself is not yielded).

    Speed figures go to ``model.last_stats`` (prefill/decode tokens per second).
    """
    _check_options(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    ids = list(ids)
    limit = model.config.max_position_embeddings
    if len(ids) + max_new_tokens > limit:
        raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"the context length {limit}; shorten the prompt or ask for fewer tokens")
    stops = _stop_ids(model, stop)
    rng = np.random.default_rng(seed)
    cache = model.new_cache(len(ids) + max_new_tokens)
    opts = dict(temperature=temperature, top_k=top_k, top_p=top_p,
                repetition_penalty=repetition_penalty)
    t0 = time.perf_counter()
    logits = model.forward(ids, cache, last_only=True)[0]
    t1 = time.perf_counter()
    stats = model.last_stats = {"prompt_tokens": len(ids), "prefill_s": t1 - t0,
                                "prefill_tok_s": len(ids) / (t1 - t0), "new_tokens": 0,
                                "decode_s": 0.0, "decode_tok_s": float("nan")}
    history = list(ids)
    for n in range(max_new_tokens):
        nxt = sample_next(logits, rng, history=history, **opts)
        if nxt in stops:
            break
        history.append(nxt)
        stats["new_tokens"] = n + 1
        yield nxt
        if n + 1 < max_new_tokens:
            t = time.perf_counter()
            logits = model.forward([nxt], cache)[0]
            stats["decode_s"] += time.perf_counter() - t
            stats["decode_tok_s"] = n + 1 and (n + 1) / max(stats["decode_s"], 1e-9)


class TextPieces:
    """Turns new token ids into text pieces as they arrive: :meth:`add` returns the new,
    complete characters (``None`` while a multi-byte character still needs more tokens),
    :meth:`finish` whatever is left.  All new ids are decoded together each time, so a
    tokenizer that merges across tokens (leading spaces, byte fallback) stays correct."""

    def __init__(self, model):
        self.model, self.ids, self.sent = model, [], ""

    def add(self, token: int) -> str | None:
        self.ids.append(int(token))
        text = self.model.decode(self.ids)
        if text.endswith("\ufffd"):
            return None  # an unfinished UTF-8 sequence: wait for the next token
        piece, self.sent = text[len(self.sent):], text
        return piece

    def finish(self) -> str:
        if not self.ids:
            return ""
        text = self.model.decode(self.ids)
        piece, self.sent = text[len(self.sent):], text
        return piece


def stream(model, prompt, max_new_tokens: int = 32, **opts):
    """Yield the continuation piece by piece: text pieces for a text prompt, ids for ids.

    Text is decoded from all new ids each step and only the new, complete characters are
    yielded (a multi-byte character may need several tokens).
    """
    ids, is_text = _prompt_ids(model, prompt)
    pieces = TextPieces(model)
    for tok in generate_ids(model, ids, max_new_tokens, **opts):
        if not is_text:
            yield tok
            continue
        piece = pieces.add(tok)
        if piece is not None:
            yield piece
    if is_text:
        rest = pieces.finish()
        if rest:
            yield rest


def generate(model, prompt, max_new_tokens: int = 32, **opts):
    """Text -> new text; ids -> list of new ids; a list of prompts -> a list of results.

    A list is decoded as a batch (:mod:`bitnet_edu.model.batching`: one weight pass per step
    for all of them, at most ``max_batch`` (default 16) at a time); each result is what the
    prompt gives alone.  With a ``seed`` each prompt ``i`` samples with ``seed + i``, so results
    do not depend on the batch order.
    """
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], (str, list, tuple, np.ndarray)):
        from .batching import generate_batch_ids

        seed = opts.pop("seed", None)
        max_batch = opts.pop("max_batch", 16)
        parsed = [_prompt_ids(model, p) for p in prompt]
        seeds = [None if seed is None else seed + i for i in range(len(parsed))]
        outs = generate_batch_ids(model, [ids for ids, _ in parsed], max_new_tokens,
                                  max_batch=max_batch, seeds=seeds, **opts)
        return [_as_text(model, new) if is_text else new for (_, is_text), new in zip(parsed, outs)]
    pieces = list(stream(model, prompt, max_new_tokens, **opts))
    return "".join(pieces) if isinstance(prompt, str) else pieces


def _as_text(model, new) -> str:
    """The text :func:`stream` would have yielded for these new ids, joined."""
    pieces = TextPieces(model)
    out = [p for p in (pieces.add(t) for t in new) if p is not None]
    return "".join(out) + pieces.finish()


def chat_prompt(model, messages) -> str:
    """The conversation as prompt text in the model's chat format (the bos token, if the format
    has none, is added when the text is encoded).

    ``messages``: a list of ``{"role", "content"}`` dicts, or a string (one user message).
    ``model`` (may be None) decides the format:

    * no ``model.chat_template`` (a GGUF, ``random_model``, a directory without one), or one of
      2B4T's (:data:`~bitnet_edu.formats.chat_template.TEMPLATES_2B4T`): ``"Role:
      content<|eot_id|>"`` per message, then ``model.generation_prompt`` (``"Assistant: "``,
      2B4T's, unless ``tokenizer_config.json`` sets ``bitnet_edu_generation_prompt``); roles
      system, user, assistant.  Needs no jinja2.
    * any other template (Falcon3's ``<|user|>\n...``): rendered as transformers'
      ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``, in a jinja2
      sandbox, with the tokenizer's ``bos_token``/``eos_token`` strings.

    ValueError for a bad role, a template that fails or is refused, or no jinja2 when the
    template needs it (the message says ``pip install jinja2``).
    """
    template = getattr(model, "chat_template", None)
    if template is None or is_2b4t_template(template):
        return builtin_2b4t(messages, getattr(model, "generation_prompt", "Assistant: "))
    return render_chat_template(template, messages, add_generation_prompt=True,
                                **_chat_tokens(model))


def _chat_tokens(model) -> dict:
    """``bos_token``/``eos_token`` strings for a template: those ``tokenizer_config.json`` names
    (``model.chat_tokens``), else the tokenizer's tokens of the config's bos / first eos id."""
    tokens = dict(getattr(model, "chat_tokens", None) or {})
    tok, cfg = getattr(model, "tokenizer", None), getattr(model, "config", None)
    if tok is not None and cfg is not None:
        eos = cfg.eos_ids[0] if cfg.eos_ids else None
        for key, i in (("bos_token", cfg.bos_token_id), ("eos_token", eos)):
            if key not in tokens and i is not None and tok.id_to_token(int(i)) is not None:
                tokens[key] = tok.id_to_token(int(i))
    return tokens
