"""Text generation: sampling rules, the prefill/decode loop with a KV cache, streaming, chat.

The loop: one *prefill* forward over the whole prompt fills the KV cache (matrix-matrix
kernels), then each *decode* step runs one token (matrix-vector kernels) and samples the
next from the last logits.  Sampling (all seeded, reproducible):

* ``temperature`` 0 -> greedy argmax; otherwise softmax(logits / temperature);
* ``top_k``: keep the k largest logits; ``top_p``: keep the smallest set of tokens whose
  probability adds up to at least p (nucleus sampling);
* ``repetition_penalty`` (> 1 discourages repeats): as in transformers, a seen token's
  logit is divided by the penalty when positive and multiplied when negative.
"""

from __future__ import annotations

import math
import numbers
import time

import numpy as np

__all__ = ["sample_next", "top_p_filter", "top_k_filter", "apply_repetition_penalty",
           "generate", "stream", "generate_ids", "chat_prompt", "CHAT_STOP"]

CHAT_STOP = ("<|eot_id|>", "<|end_of_text|>")


def apply_repetition_penalty(logits: np.ndarray, history, penalty: float) -> np.ndarray:
    """``logits`` float32 ``[V]`` with every token of ``history`` penalized (a new array)."""
    logits = np.array(logits, np.float32)
    if penalty != 1.0 and len(history):
        seen = np.unique(np.asarray(history, np.int64))
        v = logits[seen]
        logits[seen] = np.where(v > 0, v / penalty, v * penalty)
    return logits


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Set all but the ``k`` largest logits to -inf (ties at the k-th value are kept)."""
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits).astype(np.float32)


def top_p_filter(probs: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter: keep the most probable tokens until their sum reaches ``p``, renormalize.

    ``probs`` float ``[V]`` summing to 1 -> same shape; the top token is always kept.
    """
    if p >= 1.0:
        return probs
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    n_keep = int(np.searchsorted(cum, p) + 1)  # first index where the sum reaches p, inclusive
    keep = np.zeros_like(probs, dtype=bool)
    keep[order[:n_keep]] = True
    out = np.where(keep, probs, 0.0)
    return out / out.sum()


def sample_next(logits, rng=None, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                repetition_penalty: float = 1.0, history=()) -> int:
    """Pick the next token id from last-position ``logits`` ``[V]``."""
    if math.isnan(temperature):
        raise ValueError("temperature is NaN; give a number >= 0 (0 = greedy)")
    logits = apply_repetition_penalty(logits, history, repetition_penalty)
    if temperature <= 0:
        return int(np.argmax(logits))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scaled = logits / np.float32(temperature)
    if np.isinf(scaled[np.isfinite(logits)]).any() or np.float32(temperature) == 0:
        # a temperature so small that float32 overflows (1e-45): divide in float64 after
        # subtracting the maximum, which keeps the T -> 0 limit (the top tokens, ties shared)
        lg = logits.astype(np.float64)
        with np.errstate(over="ignore"):
            scaled = (lg - lg.max()) / float(temperature)
    logits = top_k_filter(scaled, top_k).astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs = top_p_filter(probs / probs.sum(), top_p)
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(probs.size, p=probs))


def _stop_ids(model, stop) -> set:
    """Token ids that end generation: ``stop`` (ids or special-token strings) or the eos ids."""
    if stop is None:
        ids = set(model.config.eos_ids)
        for s in CHAT_STOP:
            i = model.tokenizer.token_to_id(s) if model.tokenizer is not None else None
            if i is not None:
                ids.add(i)
        return ids
    stop = [stop] if isinstance(stop, (str, int, np.integer)) else stop
    out = set()
    for s in stop:
        if isinstance(s, str):
            i = model.tokenizer.token_to_id(s) if model.tokenizer is not None else None
            if i is None:
                raise ValueError(f"stop string {s!r} is not a single token of this tokenizer; "
                                 "give token ids, or a special token such as '<|eot_id|>'")
            out.add(i)
        else:
            out.add(int(s))
    return out


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


def _check_options(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
    """Reject settings that would crash later or silently mean something else."""
    def real(name, v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
            raise ValueError(f"{name} must be a number, got {v!r}")
        return float(v)

    def whole(name, v):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must be a whole number, got {v!r}")
        return int(v)

    if whole("max_new_tokens", max_new_tokens) < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    t = real("temperature", temperature)
    if t < 0 or math.isinf(t):
        raise ValueError(f"temperature must be >= 0 and finite (0 = greedy), got {temperature}")
    if whole("top_k", top_k) < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 <= real("top_p", top_p) <= 1:
        raise ValueError(f"top_p must be between 0 and 1 (1 = off), got {top_p}")
    r = real("repetition_penalty", repetition_penalty)
    if r <= 0 or math.isinf(r):
        raise ValueError(f"repetition_penalty must be > 0 (1 = off, > 1 discourages repeats), "
                         f"got {repetition_penalty}")
    if isinstance(seed, (bool, numbers.Real)) and (not isinstance(seed, numbers.Integral)
                                                    or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"seed must be a non-negative whole number (or None), got {seed!r}")


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


def stream(model, prompt, max_new_tokens: int = 32, **opts):
    """Yield the continuation piece by piece: text pieces for a text prompt, ids for ids.

    Text is decoded from all new ids each step and only the new, complete characters are
    yielded (a multi-byte character may need several tokens).
    """
    ids, is_text = _prompt_ids(model, prompt)
    new, sent = [], ""
    for tok in generate_ids(model, ids, max_new_tokens, **opts):
        if not is_text:
            yield tok
            continue
        new.append(tok)
        text = model.decode(new)
        if text.endswith("\ufffd"):
            continue  # an unfinished UTF-8 sequence: wait for the next token
        yield text[len(sent):]
        sent = text
    if is_text and new:
        text = model.decode(new)
        if len(text) > len(sent):
            yield text[len(sent):]


def generate(model, prompt, max_new_tokens: int = 32, **opts):
    """Text -> new text; ids -> list of new ids; a list of prompts -> a list of results.

    A batch runs one prompt after another (each with its own cache); with a ``seed`` each
    prompt ``i`` samples with ``seed + i`` so results do not depend on the batch order.
    """
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], (str, list, tuple, np.ndarray)):
        seed = opts.pop("seed", None)
        return [generate(model, p, max_new_tokens, seed=None if seed is None else seed + i, **opts)
                for i, p in enumerate(prompt)]
    pieces = list(stream(model, prompt, max_new_tokens, **opts))
    return "".join(pieces) if isinstance(prompt, str) else pieces


def chat_prompt(model, messages) -> str:
    """The 2B4T chat template as text: ``"Role: content<|eot_id|>"`` per message, then
    ``"Assistant: "``.  (The bos token is added when the text is encoded.)"""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    out = []
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"message role must be system, user or assistant, got {m.get('role')!r}")
        out.append(f"{m['role'].capitalize()}: {str(m['content']).strip()}<|eot_id|>")
    return "".join(out) + "Assistant: "
