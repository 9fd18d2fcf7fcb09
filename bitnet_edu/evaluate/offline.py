"""Offline tasks from the held-out chapters of the training corpus, and a runner for them.

The shipped model never saw these chapters (every 20th chapter of the KJV is held out,
:func:`bitnet_edu.train.data.split_texts`), so its scores here are honest, and the tasks run
with no network, in CI too.  Three tasks, each an lm-eval task (``tasks/*.yaml``) over the JSON
data in ``tasks/data`` (written by :func:`build`, read by both lm-eval and :func:`run_task`):

* ``bitnet_edu_next_verse`` (multiple choice, 4 choices): a verse as the context; the true next
  verse against three verses drawn from other held-out chapters.  Chance: 25 %.
* ``bitnet_edu_cloze`` (multiple choice, 4 choices): a verse cut before one of its words (4 or
  more letters, not the first word); that word against three words of about the same frequency
  in the training split, so that a model cannot win by preferring common words.  Chance: 25 %.
  (Both leave out every verse that also occurs, word for word, in the training split.)
* ``bitnet_edu_heldout`` (rolling log-likelihood): the held-out chapters themselves; bits per
  byte (= bits per character, the text is ASCII).  Chance: 8 bits per byte for a uniform guess
  over bytes; a model that knows only character frequencies (unigram, fitted on the training
  split) gets the ``unigram_bits_per_char`` stored with the data.

``python -m bitnet_edu.evaluate build-tasks`` rewrites the data (deterministic: seeded); a test
checks that it reproduces the shipped files.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from pathlib import Path

from .scoring import as_scorer, multiple_choice, perplexity

__all__ = ["TASKS", "TASK_DIR", "DATA_DIR", "build", "load_docs", "run_task", "run_all",
           "chance", "format_table"]

TASK_DIR = Path(__file__).resolve().parent / "tasks"
DATA_DIR = TASK_DIR / "data"
TASKS = ("bitnet_edu_next_verse", "bitnet_edu_cloze", "bitnet_edu_heldout")
_FILES = {"bitnet_edu_next_verse": "next_verse.json", "bitnet_edu_cloze": "cloze.json",
          "bitnet_edu_heldout": "heldout.json"}
N_QUESTIONS = 300  # per multiple-choice task
SEED = 1234
_CHOICES = 4


def _verses(chapter: str) -> list[str]:
    return [v for v in chapter.split("\n") if v.strip()]


def build_next_verse(chapters, n=N_QUESTIONS, seed=SEED, seen=frozenset()) -> list[dict]:
    """Questions ``{"context", "choices", "label"}``: the verse after ``context`` is
    ``choices[label]``; the other choices are verses from other held-out chapters.  Pairs
    whose context or answer is also a verse in ``seen`` (the training split: the KJV repeats
    formulas such as "And the LORD spake unto Moses, saying," hundreds of times) are left out,
    so that no answer can be recalled from training."""
    rng = random.Random(seed)
    verses = [_verses(c) for c in chapters]
    pairs = [(ci, vi) for ci, vs in enumerate(verses) for vi in range(len(vs) - 1)
             if vs[vi] not in seen and vs[vi + 1] not in seen]
    out = []
    for ci, vi in rng.sample(pairs, n):
        true = verses[ci][vi + 1]
        others = []
        while len(others) < _CHOICES - 1:
            cj = rng.randrange(len(verses))
            if cj == ci:
                continue
            v = rng.choice(verses[cj])
            if v != true and v not in others:
                others.append(v)
        choices = others + [true]
        rng.shuffle(choices)
        out.append({"context": verses[ci][vi], "choices": choices, "label": choices.index(true)})
    return out


def build_cloze(chapters, train_texts, n=N_QUESTIONS, seed=SEED) -> list[dict]:
    """Questions ``{"context", "choices", "label"}``: ``context`` is a verse up to (not
    including) the space before a word; the word is ``choices[label]``, the others are
    words of nearby frequency rank in the training split (never the true word, nor another
    word of the verse).  Verses that also occur in the training split are left out."""
    from ..train.evaluate import words as split_words

    rng = random.Random(seed + 1)
    freq = Counter(w for t in train_texts for w in split_words(t))
    # candidate words: alphabetic, 4+ letters, seen often enough to have a stable rank
    ranked = [w for w, k in freq.most_common() if w.isalpha() and len(w) >= 4 and k >= 5]
    rank = {w: i for i, w in enumerate(ranked)}
    seen = _train_verses(train_texts)
    verses = [v for c in chapters for v in _verses(c) if v not in seen]
    out = []
    while len(out) < n:
        v = rng.choice(verses)
        parts = v.split(" ")
        spots = [i for i, p in enumerate(parts) if i > 0 and p.isalpha() and p.islower()
                 and p in rank]
        if not spots:
            continue
        i = rng.choice(spots)
        word = parts[i]
        r = rank[word]
        near = [w for w in ranked[max(0, r - 20):r + 21] if w != word and w not in parts]
        if len(near) < _CHOICES - 1:
            continue
        choices = rng.sample(near, _CHOICES - 1) + [word]
        rng.shuffle(choices)
        out.append({"context": " ".join(parts[:i]), "choices": choices,
                    "label": choices.index(word)})
    return out


def _train_verses(train_texts) -> frozenset:
    return frozenset(v for t in train_texts for v in _verses(t))


def unigram_bits_per_char(train_texts, texts) -> float:
    """Bits per character of ``texts`` under character frequencies fitted on ``train_texts``
    (add-one smoothing): what knowing only the alphabet's statistics is worth."""
    counts = Counter(ch for t in train_texts for ch in t)
    alphabet = set(counts) | {ch for t in texts for ch in t}
    total = sum(counts.values()) + len(alphabet)
    bits = 0.0
    n = 0
    for t in texts:
        for ch, k in Counter(t).items():
            bits -= k * math.log2((counts[ch] + 1) / total)
            n += k
    return bits / n


def build(out_dir: Path | None = None) -> dict:
    """Write the three tasks' JSON data from the corpus (needs the ``[train]`` extra for the
    corpus).  Returns ``{task: path}``."""
    from ..train.data import split_texts

    out_dir = Path(out_dir) if out_dir is not None else DATA_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    val, train = split_texts("val"), split_texts("train")
    data = {
        "bitnet_edu_next_verse": {"chance": 1 / _CHOICES, "docs": build_next_verse(val, seen=_train_verses(train))},
        "bitnet_edu_cloze": {"chance": 1 / _CHOICES, "docs": build_cloze(val, train)},
        "bitnet_edu_heldout": {"chance_bits_per_byte": 8.0,
                               "unigram_bits_per_char": unigram_bits_per_char(train, val),
                               "docs": [{"text": t} for t in val]},
    }
    paths = {}
    for task, d in data.items():
        p = out_dir / _FILES[task]
        p.write_text(json.dumps(d, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
        paths[task] = p
    return paths


def _load(task: str, data_dir: Path | None = None) -> dict:
    if task not in _FILES:
        raise ValueError(f"unknown task {task!r}; the offline tasks are {', '.join(TASKS)}")
    p = Path(data_dir or DATA_DIR) / _FILES[task]
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} is missing: rebuild it with "
                                "python -m bitnet_edu.evaluate build-tasks") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e}); rebuild it with "
                         "python -m bitnet_edu.evaluate build-tasks") from None
    if not isinstance(d, dict) or not isinstance(d.get("docs"), list):
        raise ValueError(f"{p}: expected an object with a 'docs' list")
    return d


def load_docs(task: str, limit: int | None = None, data_dir: Path | None = None) -> list[dict]:
    """The documents of ``task`` (the first ``limit``), as lm-eval reads them."""
    docs = _load(task, data_dir)["docs"]
    return docs if limit is None else docs[:limit]


def chance(task: str) -> dict:
    """The task's random-chance baselines (``{"acc": 0.25}``, or bits per byte)."""
    d = _load(task)
    if "chance" in d:
        return {"acc": d["chance"], "acc_norm": d["chance"]}
    return {"bits_per_byte": d["chance_bits_per_byte"],
            "unigram_bits_per_char": d["unigram_bits_per_char"]}


def run_task(model, task: str, *, limit: int | None = None, tokenizer=None,
             progress: bool = True) -> dict:
    """Score ``model`` on one offline task with our own scorer (no lm-eval needed).

    Multiple choice: ``{"acc", "acc_norm", "acc_bytes", "n", "chance", "seconds", "preds"}``
    (``preds``: ``(pred, pred_norm, label)`` per question).  Held-out text: the dict of
    :func:`~bitnet_edu.evaluate.scoring.perplexity` plus ``chance`` and ``seconds``.
    """
    from tqdm.auto import tqdm

    s = as_scorer(model, tokenizer)
    docs = load_docs(task, limit)
    t0 = time.perf_counter()
    if task == "bitnet_edu_heldout":
        res = perplexity(s, [d["text"] for d in docs], progress=progress)
    else:
        delim = "\n" if task == "bitnet_edu_next_verse" else " "
        sums = Counter()
        preds = []
        for d in tqdm(docs, disable=not progress, desc=task, unit="q"):
            mc = multiple_choice(s, d["context"], d["choices"], delimiter=delim)
            sums.update(mc.metrics(d["label"]))
            preds.append((mc.pred, mc.pred_norm, d["label"]))
        res = {k: v / len(docs) for k, v in sums.items()}
        res.update(n=len(docs), preds=preds)
    res["chance"] = chance(task)
    res["seconds"] = time.perf_counter() - t0
    return res


def run_all(model, *, limit: int | None = None, tokenizer=None, progress: bool = True) -> dict:
    """:func:`run_task` for every offline task: ``{task: result}``."""
    return {t: run_task(model, t, limit=limit, tokenizer=tokenizer, progress=progress)
            for t in TASKS}


def format_table(results: dict) -> str:
    """A plain-text table of :func:`run_all`'s results with the chance baselines beside."""
    rows = ["task                     metric          score    chance"]
    for task, r in results.items():
        if "acc" in r:
            for m in ("acc", "acc_norm"):
                rows.append(f"{task:<24} {m:<14} {r[m]:>7.3f}   {r['chance'][m]:>7.3f}"
                            f"   (n={r['n']})")
        else:
            rows.append(f"{task:<24} {'bits_per_byte':<14} {r['bits_per_byte']:>7.3f}   "
                        f"{r['chance']['bits_per_byte']:>7.3f}   (unigram "
                        f"{r['chance']['unigram_bits_per_char']:.3f})")
    return "\n".join(rows)
