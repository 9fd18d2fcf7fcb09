"""Scoring text with a language model, the way lm-evaluation-harness does it.

Every benchmark number of the multiple-choice and perplexity kind reduces to one quantity: the
log-probability the model gives a *continuation* after a *context*,

    log p(continuation | context) = sum_j log softmax(logits[row j])[continuation[j]],

where row ``j`` is the model's output at the position just before continuation token ``j``.
The rules below are lm-eval 0.4's (``lm_eval.api.model.TemplateLM``, ``lm_eval.utils``), so a
score computed here equals the one its harness computes with our backend:

* **Tokenizing a pair.**  Trailing whitespace of the context moves to the continuation
  (``"Question: "`` + ``"Paris"`` is scored as ``"Question:"`` + ``" Paris"``, since BPE
  tokenizers glue a space to the word after it).  Then ``context + continuation`` is encoded
  whole and cut after as many tokens as the context alone encodes to, so the continuation gets
  the tokens the model would really see.  The context starts with the model's *prefix token*
  (bos; eos when the model has no bos), as the model was trained; an empty context is the
  prefix token alone.
* **Too long.**  When context + continuation exceed the model's context length, the context is
  cut from the left (lm-eval does the same, silently); a continuation that alone does not fit is
  an error.
* **Greedy.**  ``is_greedy`` is True when every continuation token is the argmax of its row:
  greedy decoding from the context would have written exactly the continuation.
* **Rolling log-likelihood** (perplexity of a whole document): the document's tokens are cut
  into windows of at most ``max_length`` inputs (:func:`rolling_windows`, lm-eval's
  ``get_rolling_token_windows`` + ``make_disjoint_window``); the first window starts from the
  prefix token and predicts every token it holds, each later window predicts the next tokens
  given at least ``context_len`` tokens before them.  Every token is predicted exactly once.

Engine models (:class:`~bitnet_edu.model.BitNetModel`) score through the prefill GEMM path and
keep the KV cache of a context, so several continuations of one context pay for it once
(:func:`score_continuations`).  A torch :class:`~bitnet_edu.train.model.BitNetLM` (a float or
QAT model mid-training, with its tokenizer) is scored by plain full forwards.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["as_scorer", "encode_pair", "loglikelihood", "loglikelihood_tokens",
           "score_continuations", "multiple_choice", "MultipleChoice", "rolling_windows",
           "rolling_loglikelihood", "perplexity", "log_softmax_rows", "count_words"]


def log_softmax_rows(logits: np.ndarray, targets) -> np.ndarray:
    """``log p(targets[i])`` under row ``i`` of float ``[T, V]`` logits, float64 ``[T]``
    (computed in float64: a sum over a 128k vocabulary loses digits in float32)."""
    lg = np.asarray(logits, np.float64)
    targets = np.asarray(targets, np.int64)
    m = lg.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(lg - m).sum(axis=-1)) + m[:, 0]
    return lg[np.arange(len(targets)), targets] - logz


def count_words(text: str) -> int:
    """Words as lm-eval counts them for ``word_perplexity``: pieces between whitespace runs."""
    return len(re.split(r"\s+", text))


# ---- one interface over the engine and torch models -----------------------------------------

class _EngineScorer:
    """A :class:`~bitnet_edu.model.BitNetModel`: KV cache reuse, prefill GEMMs, and all of a
    context's continuations in one pass (:func:`~bitnet_edu.model.segments.forward_segments`)."""

    kv_reuse = True

    def __init__(self, model):
        self.model, self.tokenizer = model, getattr(model, "tokenizer", None)
        c = model.config
        no_bos = getattr(model, "add_bos_token", None) is False
        self.prefix = c.eos_ids[0] if (no_bos or c.bos_token_id is None) else int(c.bos_token_id)
        self.max_length = int(c.max_position_embeddings)
        self.vocab = int(c.vocab_size)

    def continuation_rows(self, context, conts):
        """For each continuation in ``conts``: float32 ``[len(cont), V]`` logit rows, row ``j``
        predicting ``cont[j]`` after ``context + cont[:j]``.  The context runs once."""
        from ..model.segments import forward_segments

        m = self.model
        cache = m.new_cache(len(context) + max(len(c) for c in conts) - 1)
        last = m.forward(context, cache, last_only=True)  # [1, V]: predicts cont[0]
        longer = [c[:-1] for c in conts if len(c) > 1]
        # all continuations in one pass: one weight stream for all of their tokens
        rows = iter(forward_segments(m, longer, cache) if longer else ())
        for cont in conts:
            yield last if len(cont) == 1 else np.concatenate([last, next(rows)])

    def window_rows(self, ids):
        """float32 ``[len(ids), V]``: every position's next-token logits."""
        return self.model.logits(ids)


class _TorchScorer:
    """A torch ``BitNetLM`` (and its tokenizer): plain full forwards, no cache."""

    kv_reuse = False

    def __init__(self, model, tokenizer):
        if tokenizer is None:
            raise ValueError("a torch model needs its tokenizer: pass tokenizer=...")
        self.model, self.tokenizer = model, tokenizer
        c = model.cfg
        bos = c.bos_token_id
        eos = c.eos_token_id if not isinstance(c.eos_token_id, (list, tuple)) else c.eos_token_id[0]
        self.prefix = int(bos if bos is not None else eos if eos is not None else 0)
        self.max_length = int(c.max_position_embeddings)
        self.vocab = int(c.vocab_size)

    def window_rows(self, ids):
        import torch

        self.model.eval()
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(ids, np.int64))[None]
            return self.model(x)[0].float().numpy()

    def continuation_rows(self, context, conts):
        for cont in conts:
            yield self.window_rows(list(context) + list(cont[:-1]))[len(context) - 1:]


def as_scorer(model, tokenizer=None):
    """The scoring interface for an engine model or a torch ``BitNetLM`` (then ``tokenizer``
    is its ``tokenizers.Tokenizer``).  Already a scorer: returned as is."""
    if isinstance(model, (_EngineScorer, _TorchScorer)):
        return model
    if hasattr(model, "new_cache") and hasattr(model, "forward"):
        return _EngineScorer(model)
    if hasattr(model, "cfg") and hasattr(model, "embed_tokens"):
        return _TorchScorer(model, tokenizer)
    raise TypeError(f"expected a BitNetModel (bitnet_edu.load_model) or a torch BitNetLM, got "
                    f"{type(model).__name__}")


def _encode(scorer, text: str) -> list[int]:
    if scorer.tokenizer is None:
        raise ValueError("this model has no tokenizer: scoring text needs one (load a "
                         "directory with tokenizer.json, or score token ids with "
                         "loglikelihood_tokens / score_continuations)")
    return list(scorer.tokenizer.encode(text, add_special_tokens=False).ids)


def encode_pair(model, context: str, continuation: str, *, tokenizer=None):
    """``(context_ids, continuation_ids)`` by lm-eval's rules (module docstring): the prefix
    token, then the context; the continuation's tokens cut from the encoding of the whole."""
    s = as_scorer(model, tokenizer)
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise TypeError("context and continuation must be strings")
    if context == "":
        cont = _encode(s, continuation)
        if cont and cont[0] == s.prefix:
            return cont[:1], cont[1:]
        return [s.prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(s, context + continuation)
    ctx = _encode(s, context)
    return [s.prefix] + ctx, whole[len(ctx):]


def _fit(scorer, context, cont):
    """Cut the context from the left so that context + continuation fit the model; lm-eval
    feeds ``(context + continuation)[-(max_length + 1):][:-1]``, the same tokens."""
    if len(cont) == 0:
        raise ValueError("the continuation encodes to no tokens: there is nothing to score")
    if len(cont) > scorer.max_length:
        raise ValueError(f"the continuation has {len(cont)} tokens, more than the model's "
                         f"context length {scorer.max_length}")
    keep = scorer.max_length + 1 - len(cont)
    return list(context)[-keep:]


def _check_ids(scorer, ids, what):
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < scorer.vocab]
    if bad:
        raise ValueError(f"{what} token id {bad[0]} is outside the vocabulary [0, {scorer.vocab})")
    return ids


def score_continuations(model, context_ids, continuations, *, tokenizer=None):
    """``[(logprob_sum, is_greedy), ...]`` of several token continuations of one context.

    ``context_ids`` and each continuation: lists of token ids (the context with its prefix
    token).  An engine model runs the context once and reuses its KV cache for every
    continuation (the continuations that need the context cut shorter run on their own).
    """
    s = as_scorer(model, tokenizer)
    context = _check_ids(s, context_ids, "context")
    if not context:
        raise ValueError("the context is empty: it needs at least the prefix token")
    conts = [_check_ids(s, c, "continuation") for c in continuations]
    out = [None] * len(conts)
    groups = {}  # the context after cutting -> continuations that use it
    for i, c in enumerate(conts):
        groups.setdefault(tuple(_fit(s, context, c)), []).append(i)
    for ctx, idx in groups.items():
        for i, rows in zip(idx, s.continuation_rows(list(ctx), [conts[i] for i in idx])):
            cont = conts[i]
            lp = log_softmax_rows(rows, cont)
            out[i] = (float(lp.sum()), bool((rows.argmax(axis=-1) == np.asarray(cont)).all()))
    return out


def loglikelihood_tokens(model, context_ids, continuation_ids, *, tokenizer=None):
    """``(logprob_sum, is_greedy)`` of token ids ``continuation_ids`` after ``context_ids``."""
    return score_continuations(model, context_ids, [continuation_ids], tokenizer=tokenizer)[0]


def loglikelihood(model, context: str, continuation: str, *, tokenizer=None):
    """``(logprob_sum, is_greedy)``: the natural-log probability of ``continuation`` after
    ``context``, and whether greedy decoding would write it (lm-eval's ``loglikelihood``)."""
    s = as_scorer(model, tokenizer)
    ctx, cont = encode_pair(s, context, continuation)
    return loglikelihood_tokens(s, ctx, cont)


@dataclass
class MultipleChoice:
    """Scores of one multiple-choice question (lm-eval's metrics for ``multiple_choice``).

    ``logprobs[i]``: log p(choice i | context); ``pred`` its argmax (``acc``);
    ``pred_norm`` the argmax of ``logprobs / characters`` (``acc_norm``: lm-eval divides by
    ``len(choice)``, characters, not bytes or tokens); ``pred_bytes`` of ``logprobs / UTF-8
    bytes`` (``acc_bytes``).  ``greedy[i]``: the choice is greedy decoding's output.
    """

    logprobs: list
    greedy: list
    chars: list
    bytes: list
    tokens: list

    @property
    def pred(self) -> int:
        return int(np.argmax(self.logprobs))

    @property
    def pred_norm(self) -> int:
        return int(np.argmax(np.asarray(self.logprobs) / np.asarray(self.chars, float)))

    @property
    def pred_bytes(self) -> int:
        return int(np.argmax(np.asarray(self.logprobs) / np.asarray(self.bytes, float)))

    def probabilities(self) -> np.ndarray:
        """The choices' probabilities renormalised over the choices (softmax of logprobs)."""
        lp = np.asarray(self.logprobs, float)
        p = np.exp(lp - lp.max())
        return p / p.sum()

    def metrics(self, gold: int) -> dict:
        """``{"acc", "acc_norm", "acc_bytes"}`` (1.0 or 0.0) for the right answer ``gold``."""
        if not 0 <= int(gold) < len(self.logprobs):
            raise ValueError(f"gold index {gold} is not one of the {len(self.logprobs)} choices")
        return {"acc": float(self.pred == gold), "acc_norm": float(self.pred_norm == gold),
                "acc_bytes": float(self.pred_bytes == gold)}


def multiple_choice(model, context: str, choices, *, delimiter: str = " ", tokenizer=None):
    """Score each of ``choices`` as a continuation of ``context`` -> :class:`MultipleChoice`.

    ``delimiter`` goes between the context and each choice (lm-eval's ``target_delimiter``,
    default a space); lengths for ``acc_norm`` are those of the choice without it, as lm-eval
    counts them.  On the engine the context is computed once for all choices.
    """
    s = as_scorer(model, tokenizer)
    choices = list(choices)
    if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("multiple_choice needs at least two non-empty string choices")
    pairs = [encode_pair(s, context, delimiter + c) for c in choices]
    by_ctx = {}
    for i, (ctx, _) in enumerate(pairs):
        by_ctx.setdefault(tuple(ctx), []).append(i)
    scores = [None] * len(choices)
    for ctx, idx in by_ctx.items():
        for i, sc in zip(idx, score_continuations(s, list(ctx), [pairs[i][1] for i in idx])):
            scores[i] = sc
    return MultipleChoice(logprobs=[lp for lp, _ in scores], greedy=[g for _, g in scores],
                          chars=[len(c) for c in choices],
                          bytes=[len(c.encode("utf-8")) for c in choices],
                          tokens=[len(p[1]) for p in pairs])


# ---- rolling log-likelihood and perplexity ----------------------------------------------------

def rolling_windows(tokens, prefix: int, max_length: int, context_len: int = 1):
    """``[(inputs, targets), ...]`` covering ``tokens`` (lm-eval's disjoint rolling windows).

    Feed ``context + targets[:-1]`` where ``context = inputs``; here ``inputs`` already is that
    whole input (``len(inputs) <= max_length``) and its last ``len(targets)`` logit rows predict
    ``targets``.  The first window is ``[prefix] + tokens[:max_length - 1]`` predicting
    ``tokens[:max_length]``; each later one predicts up to ``max_length - context_len + 1``
    new tokens with the ``context_len - 1`` or more tokens before them as extra context.
    """
    tokens = [int(t) for t in tokens]
    if not 1 <= context_len <= max_length:
        raise ValueError(f"context_len must be in [1, max_length={max_length}], got {context_len}")
    out = []
    if not tokens:
        return out
    first = min(max_length, len(tokens))
    out.append(([int(prefix)] + tokens[:first - 1], tokens[:first]))
    step, done = max_length - context_len + 1, first
    while done < len(tokens):
        n = min(len(tokens) - done, step)
        end = done + n
        out.append((tokens[max(0, end - max_length - 1):end - 1], tokens[end - n:end]))
        done = end
    return out


def rolling_loglikelihood(model, text: str, *, context_len: int = 1, tokenizer=None,
                          return_tokens: bool = False):
    """Natural-log probability of the whole of ``text`` (lm-eval's ``loglikelihood_rolling``),
    summed over :func:`rolling_windows` of the model's context length.  ``return_tokens``:
    also return how many tokens were predicted."""
    s = as_scorer(model, tokenizer)
    tokens = _encode(s, text)
    total = 0.0
    for inputs, targets in rolling_windows(tokens, s.prefix, s.max_length, context_len):
        rows = s.window_rows(inputs)[len(inputs) - len(targets):]
        total += float(log_softmax_rows(rows, targets).sum())
    return (total, len(tokens)) if return_tokens else total


def perplexity(model, texts, *, context_len: int = 1, tokenizer=None, progress: bool = False):
    """Perplexity of documents ``texts`` (a str or a list of them), each scored on its own.

    Returns a dict: ``nll`` (nats, all documents), ``tokens``, ``chars``, ``bytes``, ``words``;
    ``token_perplexity = exp(nll / tokens)`` (depends on the tokenizer: more, shorter tokens
    give a lower one for the same text); ``bits_per_char = nll / ln 2 / chars`` and
    ``bits_per_byte`` (lm-eval's; equal for ASCII text); ``byte_perplexity`` and
    ``word_perplexity`` as lm-eval defines them.  ``context_len``: see :func:`rolling_windows`
    (1 = lm-eval's default; larger = more context per prediction, more compute).
    """
    s = as_scorer(model, tokenizer)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("perplexity needs one or more non-empty strings")
    from tqdm.auto import tqdm

    nll = 0.0
    tokens = 0
    for t in tqdm(texts, disable=not progress, desc="perplexity", unit="doc"):
        lp, n = rolling_loglikelihood(s, t, context_len=context_len, return_tokens=True)
        nll -= lp
        tokens += n
    chars = sum(len(t) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    words = sum(count_words(t) for t in texts)
    return {"nll": nll, "tokens": tokens, "chars": chars, "bytes": nbytes, "words": words,
            "documents": len(texts), "token_perplexity": math.exp(nll / tokens),
            "bits_per_char": nll / math.log(2) / chars, "bits_per_byte": nll / math.log(2) / nbytes,
            "byte_perplexity": math.exp(nll / nbytes), "word_perplexity": math.exp(nll / words),
            "chars_per_token": chars / tokens}
