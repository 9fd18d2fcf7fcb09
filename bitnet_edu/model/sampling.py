"""Sampling rules and request settings, shared by the one-request loop
(:mod:`bitnet_edu.model.generation`) and the batch scheduler (:mod:`bitnet_edu.model.batching`).

* ``temperature`` 0 -> greedy argmax; otherwise softmax(logits / temperature);
* ``top_k``: keep the k largest logits; ``top_p``: keep the smallest set of tokens whose
  probability adds up to at least p (nucleus sampling);
* ``repetition_penalty`` (> 1 discourages repeats): as in transformers, a seen token's
  logit is divided by the penalty when positive and multiplied when negative.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["sample_next", "top_p_filter", "top_k_filter", "apply_repetition_penalty", "CHAT_STOP"]

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
