"""How good is a trained model?  Bits per character on the held-out chapters and word validity.

``python -m bitnet_edu.train.evaluate [MODEL_DIR] [--fast]`` (default ``bitnet_edu.DEFAULT_MODEL``)
loads the exported HF directory into the Numba engine, so it measures the shipped artifact.

* **Bits per character** (bpc): each validation chapter (``split_texts("val")``) is tokenized
  with the model's tokenizer, the bos token put in front, and every text token scored once by
  the model's next-token loss.  A chapter longer than the context is scored in windows of
  ``max_position_embeddings`` tokens that advance by ``stride``: each window scores only its last
  ``stride`` tokens (the first window all of its own), so every token sees at least
  ``n_ctx - stride + 1`` tokens of context.  ``bpc = sum(NLL in nats) / ln 2 / characters``.
  Dividing by characters, not tokens, makes models with different tokenizers comparable; token
  perplexity ``exp(NLL / tokens)`` is reported too, but depends on the tokenizer.
* **Word validity**: sampled continuations (temperature 0.8, top-p 0.95, fixed RNG seeds, several
  prompts) are split into words (letters with inner apostrophes, case-folded), and we count the
  fraction found among the words of the training split.  A continuation cut off by the token
  limit drops its last, possibly unfinished, word.

A torch :class:`~bitnet_edu.train.model.BitNetLM` (plus its tokenizer) works too, for use
during training; it samples with the engine's rule (:func:`~bitnet_edu.model.generation.sample_next`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data import split_texts

__all__ = ["PROMPTS", "words", "training_words", "word_validity", "bits_per_char", "sample_texts",
           "evaluate_model", "window_plan", "main"]

#: Prompts for the word-validity samples (KJV openings).
PROMPTS = ("And God said", "In the beginning", "And it came to pass", "The LORD is my shepherd",
           "Blessed are", "Then said Jesus unto them", "And the king", "O give thanks unto the LORD")

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # letters, with apostrophes inside only


def words(text: str) -> list[str]:
    """The words of ``text``, case-folded: runs of letters joined by inner apostrophes
    (``"LORD's"`` -> ``"lord's"``); digits, punctuation and edge apostrophes separate."""
    return _WORD.findall(text.casefold())


@lru_cache(maxsize=1)
def training_words() -> frozenset:
    """Every word of the training split (all of it, whatever a recipe's ``data_fraction``)."""
    return frozenset(w for t in split_texts("train") for w in words(t))


def word_validity(texts, vocabulary=None, prompts=None, truncated=None) -> dict:
    """Fraction of the words of ``texts`` found in ``vocabulary`` (default :func:`training_words`).

    ``prompts[i]``, if given, is the prompt that ``texts[i]`` continues: the words are those of
    ``prompts[i] + texts[i]`` that end inside the continuation (a continuation that finishes the
    prompt's last word counts as the whole word).  ``truncated[i]`` True drops the last word when
    the text ends on a letter (cut off mid-word by the token limit).
    Returns ``{"valid_fraction", "words", "valid", "invalid_top"}`` (invalid words, most common first).
    """
    vocab = training_words() if vocabulary is None else vocabulary
    counts = Counter()
    n = ok = 0
    for i, t in enumerate(texts):
        p = prompts[i] if prompts is not None else ""
        full = p + t
        spans = [m for m in _WORD.finditer(full.casefold()) if m.end() > len(p)]
        if truncated is not None and truncated[i] and spans and spans[-1].end() == len(full):
            spans = spans[:-1]
        for m in spans:
            w = m.group()
            n += 1
            if w in vocab:
                ok += 1
            else:
                counts[w] += 1
    return {"valid_fraction": ok / n if n else float("nan"), "words": n, "valid": ok,
            "invalid_top": [w for w, _ in counts.most_common(12)]}


# --- the two kinds of model behind one interface ------------------------------------------------

class _Engine:
    """A loaded :class:`~bitnet_edu.model.transformer.BitNetModel` (Numba engine)."""

    def __init__(self, model):
        self.model, self.tokenizer = model, model.tokenizer
        if self.tokenizer is None:
            raise ValueError("the model has no tokenizer (tokenizer.json): cannot score text")
        self.n_ctx = int(model.config.max_position_embeddings)
        self.bos = model.config.bos_token_id
        self.eos = set(model.config.eos_ids)

    def logits(self, windows):
        """float32 ``[T, V]`` logits for each window (an int64 ``[T]`` array)."""
        return [self.model.logits(w) for w in windows]

    def sample(self, prompt, max_new_tokens, seed, **opts):
        text = self.model.generate(prompt, max_new_tokens, seed=seed, **opts)
        return text, self.model.last_stats["new_tokens"] >= max_new_tokens


class _Torch:
    """A torch :class:`~bitnet_edu.train.model.BitNetLM` and its ``tokenizers.Tokenizer``."""

    def __init__(self, model, tokenizer):
        from .bpe import EOT

        if tokenizer is None:
            raise ValueError("a torch model needs its tokenizer: evaluate_model(model, tokenizer)")
        self.model, self.tokenizer = model, tokenizer
        self.n_ctx = int(model.cfg.max_position_embeddings)
        eot = tokenizer.token_to_id(EOT)
        self.bos = model.cfg.bos_token_id if model.cfg.bos_token_id is not None else eot
        eos = model.cfg.eos_token_id
        eos = eot if eos is None else eos
        self.eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}

    def logits(self, windows, batch: int = 16):
        import torch

        self.model.eval()
        out = [None] * len(windows)
        by_len = {}
        for i, w in enumerate(windows):
            by_len.setdefault(len(w), []).append(i)
        with torch.no_grad():
            for idx in by_len.values():
                for j in range(0, len(idx), batch):
                    part = idx[j:j + batch]
                    x = torch.from_numpy(np.stack([windows[i] for i in part]))
                    y = self.model(x).float().numpy()
                    for k, i in enumerate(part):
                        out[i] = y[k]
        return out

    def sample(self, prompt, max_new_tokens, seed, **opts):
        from ..model.generation import sample_next

        ids = _with_bos(self.tokenizer.encode(prompt).ids, self.bos)
        rng = np.random.default_rng(seed)
        hist, new = list(ids), []
        for _ in range(max_new_tokens):
            logits = self.logits([np.asarray(hist[-self.n_ctx:], np.int64)])[0][-1]
            nxt = sample_next(logits, rng, history=hist, **opts)
            if nxt in self.eos:
                break
            hist.append(nxt)
            new.append(nxt)
        return self.tokenizer.decode(new), len(new) >= max_new_tokens


def _adapter(model, tokenizer=None):
    if isinstance(model, (_Engine, _Torch)):
        return model
    if model is None or isinstance(model, (str, Path)):
        import bitnet_edu

        return _Engine(bitnet_edu.load_model(model or bitnet_edu.DEFAULT_MODEL))
    if hasattr(model, "new_cache") and hasattr(model, "generate"):
        return _Engine(model)
    if hasattr(model, "cfg") and hasattr(model, "embed_tokens"):
        return _Torch(model, tokenizer)
    raise TypeError(f"expected a model directory, a loaded BitNetModel or a torch BitNetLM, "
                    f"got {type(model).__name__}")


def _with_bos(ids, bos):
    ids = [int(i) for i in ids]
    return ids if bos is None or (ids and ids[0] == bos) else [int(bos)] + ids


# --- bits per character -------------------------------------------------------------------------

def window_plan(n: int, n_ctx: int, stride: int):
    """Windows that score targets ``1 .. n-1`` of an ``n``-token stream once each.

    Yields ``(a, b, t0)``: feed ``stream[a:b]`` (``b - a <= n_ctx``), whose logit row ``j``
    predicts ``stream[a + j + 1]``, and score targets ``t0 .. b`` (rows ``t0 - a - 1 ..``).
    The first window scores up to ``n_ctx`` targets, each later one ``stride`` new ones with
    ``n_ctx - stride`` tokens or more of context before the first.
    """
    if not 1 <= stride <= n_ctx:
        raise ValueError(f"stride must be in [1, n_ctx={n_ctx}], got {stride}")
    done = 0  # targets 1 .. done are scored
    while done < n - 1:
        b = min(n - 1, n_ctx if done == 0 else done + stride)
        a = max(0, b - n_ctx)
        yield a, b, done + 1
        done = b


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``-log p(target)`` per row of float ``[T, V]`` logits, in float64 ``[T]``."""
    lg = logits.astype(np.float64)
    m = lg.max(-1, keepdims=True)
    logz = np.log(np.exp(lg - m).sum(-1)) + m[:, 0]
    return logz - lg[np.arange(len(targets)), targets]


def bits_per_char(model, tokenizer=None, texts=None, *, stride: int | None = None,
                  progress: bool = True) -> dict:
    """Bits per character of ``texts`` (default: the held-out chapters) under ``model``.

    Args:
        model: an HF model directory (Numba engine), a loaded ``BitNetModel`` or a torch
            ``BitNetLM`` (then give its ``tokenizer``).
        texts: documents (str), each scored from a bos token on its own.
        stride: new targets per window after the first (default ``n_ctx // 2``; ``n_ctx`` =
            plain consecutive windows, smaller = more context and more compute).

    Returns ``{"bits_per_char", "nats", "chars", "tokens", "token_perplexity", "stride", ...}``.
    """
    m = _adapter(model, tokenizer)
    texts = split_texts("val") if texts is None else list(texts)
    stride = stride or max(1, m.n_ctx // 2)
    streams = [np.asarray(_with_bos(e.ids, m.bos), np.int64)
               for e in m.tokenizer.encode_batch(texts)]
    jobs = [(s, a, b, t0) for s in streams for a, b, t0 in window_plan(len(s), m.n_ctx, stride)]
    nats, tokens, t_start = 0.0, 0, time.perf_counter()
    chunk = 16
    for i in tqdm(range(0, len(jobs), chunk), disable=not progress, desc="bits/char",
                  unit="x16 windows", mininterval=1.0):
        part = jobs[i:i + chunk]
        for (s, a, b, t0), lg in zip(part, m.logits([s[a:b] for s, a, b, _ in part])):
            rows = lg[t0 - a - 1:]
            nats += float(_log_softmax_at(rows, s[t0:b + 1]).sum())
            tokens += b + 1 - t0
    chars = sum(len(t) for t in texts)
    return {"bits_per_char": nats / math.log(2) / chars, "nats": nats, "chars": chars,
            "tokens": tokens, "token_perplexity": math.exp(nats / tokens),
            "chars_per_token": chars / tokens, "documents": len(texts), "stride": stride,
            "n_ctx": m.n_ctx, "windows": len(jobs), "seconds": time.perf_counter() - t_start}


# --- sampling -----------------------------------------------------------------------------------

def sample_texts(model, tokenizer=None, *, prompts=PROMPTS, n_samples: int = 32,
                 max_new_tokens: int = 128, temperature: float = 0.8, top_p: float = 0.95,
                 top_k: int = 0, repetition_penalty: float = 1.0, seed: int = 0,
                 progress: bool = True) -> list[dict]:
    """``n_samples`` continuations, prompt ``i % len(prompts)`` with RNG seed ``seed + i``.

    ``max_new_tokens`` is capped by the context left after the prompt.  Returns dicts
    ``{"prompt", "seed", "text", "truncated"}`` (``truncated``: stopped by the token limit, not by
    an end-of-text token)."""
    m = _adapter(model, tokenizer)
    opts = dict(temperature=temperature, top_p=top_p, top_k=top_k,
                repetition_penalty=repetition_penalty)
    out = []
    for i in tqdm(range(n_samples), disable=not progress, desc="samples", mininterval=1.0):
        p = prompts[i % len(prompts)]
        room = m.n_ctx - len(_with_bos(m.tokenizer.encode(p).ids, m.bos))
        text, cut = m.sample(p, min(max_new_tokens, room), seed + i, **opts)
        out.append({"prompt": p, "seed": seed + i, "text": text, "truncated": bool(cut)})
    return out


# --- everything ---------------------------------------------------------------------------------

def evaluate_model(model=None, tokenizer=None, *, chapters: int | None = None,
                   stride: int | None = None, n_samples: int = 32, max_new_tokens: int = 128,
                   temperature: float = 0.8, top_p: float = 0.95, seed: int = 0,
                   prompts=PROMPTS, progress: bool = True, report: bool = True) -> dict:
    """Bits per character, token perplexity and word validity of ``model``.

    Args:
        model: an HF model directory (default ``bitnet_edu.DEFAULT_MODEL``), a loaded
            ``BitNetModel``, or a torch ``BitNetLM`` with its ``tokenizer``.
        chapters: score only the first ``chapters`` held-out chapters (None = all 59).
        n_samples, max_new_tokens, temperature, top_p, seed, prompts: the word-validity samples.
        report: print a short report.

    Returns a dict: ``bits_per_char``, ``token_perplexity``, ``word_validity`` (fraction),
    ``words``, ``invalid_words``, ``samples`` (the texts) and the details (``bpc``: see
    :func:`bits_per_char`).
    """
    m = _adapter(model, tokenizer)
    texts = split_texts("val")
    if chapters is not None:
        texts = texts[:chapters]
    bpc = bits_per_char(m, texts=texts, stride=stride, progress=progress)
    samples = sample_texts(m, prompts=prompts, n_samples=n_samples, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, seed=seed, progress=progress)
    wv = word_validity([s["text"] for s in samples], prompts=[s["prompt"] for s in samples],
                       truncated=[s["truncated"] for s in samples])
    res = {"bits_per_char": bpc["bits_per_char"], "token_perplexity": bpc["token_perplexity"],
           "word_validity": wv["valid_fraction"], "words": wv["words"],
           "invalid_words": wv["invalid_top"], "chapters": bpc["documents"],
           "sampling": dict(n_samples=n_samples, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, seed=seed),
           "bpc": bpc, "samples": samples}
    if report:
        print(format_report(res), flush=True)
    return res


def format_report(r: dict) -> str:
    """A few lines of text from an :func:`evaluate_model` result."""
    b, s = r["bpc"], r["sampling"]
    first = r["samples"][0] if r["samples"] else None
    lines = [
        f"held-out chapters: {b['documents']} ({b['chars']:,} chars, {b['tokens']:,} tokens, "
        f"{b['chars_per_token']:.2f} chars/token; windows of {b['n_ctx']}, stride {b['stride']})",
        f"  bits/char         {r['bits_per_char']:.4f}",
        f"  token perplexity  {r['token_perplexity']:.2f}",
        f"word validity: {r['word_validity']:.2%} of {r['words']:,} sampled words are words of the "
        f"training text ({s['n_samples']} samples x {s['max_new_tokens']} tokens, "
        f"temperature {s['temperature']:g}, top-p {s['top_p']:g})",
        f"  not words: {', '.join(r['invalid_words'][:10]) or '-'}",
    ]
    if first:
        lines.append(f"  sample: {(first['prompt'] + first['text'])[:160]!r}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    import bitnet_edu

    p = argparse.ArgumentParser(prog="python -m bitnet_edu.train.evaluate",
                                description="Bits per character and word validity of a model.")
    p.add_argument("model", nargs="?", default=str(bitnet_edu.DEFAULT_MODEL),
                   help="HF model directory (default: the shipped model)")
    p.add_argument("--fast", action="store_true",
                   help="3 chapters, 4 samples of 32 tokens (seconds; a smoke test)")
    p.add_argument("--chapters", type=int, default=None, help="first N held-out chapters (default all)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default context/2)")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128, help="new tokens per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result (without samples) here")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.fast:
        a.chapters, a.samples, a.tokens = a.chapters or 3, min(a.samples, 4), min(a.tokens, 32)
    r = evaluate_model(a.model, chapters=a.chapters, stride=a.stride, n_samples=a.samples,
                       max_new_tokens=a.tokens, seed=a.seed, progress=not a.no_progress)
    if a.json:
        Path(a.json).write_text(json.dumps({k: v for k, v in r.items() if k != "samples"},
                                           indent=2) + "\n")
    return r


class _CallableModule(type(json)):
    """Importing this submodule rebinds ``bitnet_edu.train.evaluate`` (the package attribute,
    until then :func:`bitnet_edu.train.loop.evaluate`) to the module; calling the module calls
    that function, so ``from bitnet_edu.train import evaluate; evaluate(model, data, tc)`` works
    whichever was imported first."""

    def __call__(self, *args, **kwargs):
        from .loop import evaluate

        return evaluate(*args, **kwargs)


if __name__ == "__main__":
    main()
else:
    import sys

    sys.modules[__name__].__class__ = _CallableModule
