"""From per-token hidden states to one vector per text: pooling, L2 normalisation, and
quantization of the output vectors (what a vector index stores).

Shapes: ``T`` tokens of one text, ``d`` the hidden size, ``n`` texts.  Everything is float32.

* ``"last"``: the hidden state of the last token.  A causal model's last position is the only
  one that has read the whole text; BitNet-embedding appends an end-of-text token and pools it
  (docs/family.md, 2d).
* ``"mean"``: the average over the text's tokens (what sentence-transformers calls
  ``pooling_mode_mean_tokens``): every position counts, also the early ones that saw little.
"""

from __future__ import annotations

import numpy as np

__all__ = ["POOLINGS", "pool", "l2_normalize", "quantize_embeddings", "embedding_bytes",
           "EMBEDDING_BITS", "embed_texts", "text_ids"]

#: the pooling modes ``pool`` (and ``model.embed``) accept
POOLINGS = ("last", "mean")
#: the bit widths ``quantize_embeddings`` accepts (per value of a stored vector)
EMBEDDING_BITS = (32, 8, 4, 2, 1)


def pool(hidden: np.ndarray, mode: str = "last") -> np.ndarray:
    """One text's vector from its hidden states ``hidden`` float32 ``[T, d]``: float32 ``[d]``."""
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {mode!r}")
    h = np.asarray(hidden, np.float32)
    if h.ndim != 2 or len(h) == 0:
        raise ValueError(f"hidden states must be float [T, d] with T >= 1, got shape {h.shape}")
    if mode == "last":
        return h[-1].copy()
    return h.mean(axis=0, dtype=np.float64).astype(np.float32)


def l2_normalize(e: np.ndarray) -> np.ndarray:
    """Each row (or the one vector) divided by its Euclidean length, float32; an all-zero row
    stays zero (it has no direction).  After this, a dot product is the cosine similarity."""
    e = np.asarray(e, np.float32)
    n = np.linalg.norm(e.astype(np.float64), axis=-1, keepdims=True)
    return np.where(n > 0, e / np.where(n > 0, n, 1.0), 0.0).astype(np.float32)


def quantize_embeddings(e: np.ndarray, bits: int) -> np.ndarray:
    """``e`` float ``[n, d]`` stored with ``bits`` bits per value, returned dequantized float32
    ``[n, d]`` (what the index would compute with).

    Our choice of scheme (the bitnet.cpp README says the vectors "can be quantized to 8, 4, 2,
    or even 1 bit" without naming one): 32 keeps ``e``; 8, 4 and 2 bits round each value to the
    symmetric grid ``{-m .. m} * s`` with ``m = 2**(bits-1) - 1`` (127, 7, 1) and one absmax
    scale ``s`` per vector, so 2 bits is ternary; 1 bit keeps only the sign (``+-1``, zero to +1).
    Rows are not re-normalized: cosine ranking ignores a row's length only if the caller
    normalizes again."""
    if isinstance(bits, bool) or bits not in EMBEDDING_BITS:
        raise ValueError(f"bits must be one of {EMBEDDING_BITS}, got {bits!r}")
    e = np.asarray(e, np.float32)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be float [n, d], got shape {e.shape}")
    if bits == 32:
        return e.copy()
    if bits == 1:
        return np.where(e >= 0, np.float32(1), np.float32(-1))
    m = np.float32(2 ** (bits - 1) - 1)
    amax = np.abs(e).max(axis=1, keepdims=True)
    s = np.where(amax > 0, amax / m, np.float32(1)).astype(np.float32)
    return (np.clip(np.rint(e / s), -m, m) * s).astype(np.float32)


def embedding_bytes(n: int, d: int, bits: int) -> int:
    """Bytes an index of ``n`` vectors of ``d`` values at ``bits`` bits takes: the packed codes
    (rounded up to whole bytes per vector) plus one float32 scale per vector for 8/4/2 bits."""
    if bits not in EMBEDDING_BITS:
        raise ValueError(f"bits must be one of {EMBEDDING_BITS}, got {bits!r}")
    per = (d * bits + 7) // 8 + (4 if bits in (8, 4, 2) else 0)
    return int(n) * per


def text_ids(model, text, *, truncate: bool = False) -> list[int]:
    """The token ids ``model`` embeds for one text: a string is encoded with bos in front (as
    for generation, when the model has one and the tokenizer does not add it) and the model's
    ``embed_eos_id`` appended when it has one (BitNet-embedding: last-token pooling reads that
    token); a list of ids is taken as it is.  ValueError for an empty text, and for one longer
    than ``max_position_embeddings`` unless ``truncate`` (then the end is cut, keeping a
    trailing eos)."""
    cfg = model.config
    if isinstance(text, str):
        from .generation import _prompt_ids  # bos in front exactly as for a prompt
        ids = _prompt_ids(model, text)[0]
        eos = getattr(model, "embed_eos_id", None)
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [int(eos)]
    else:
        try:
            arr = np.asarray(text)
        except ValueError:
            raise ValueError("token ids must be a flat list of integers") from None
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"a text must be a string or a list of token ids, got "
                             f"{type(text).__name__} of {arr.dtype}")
        ids = [int(i) for i in arr.reshape(-1)]
        eos = None
    if not ids:
        raise ValueError("an empty text has no tokens to embed")
    limit = cfg.max_position_embeddings
    if len(ids) > limit:
        if not truncate:
            raise ValueError(f"a text of {len(ids)} tokens is longer than the model reads "
                             f"(max_position_embeddings={limit}); pass truncate=True to cut it")
        ids = ids[:limit - 1] + [ids[-1]] if eos is not None else ids[:limit]
    return ids


def embed_texts(model, texts, *, pooling: str = "last", normalize: bool = True,
                truncate: bool = False, progress: bool | None = None) -> np.ndarray:
    """``model.embed``: each text through ``model.hidden_states`` (float32 ``[T, d]``), pooled,
    L2-normalized when ``normalize``.  float32 ``[n, d]``; ``[d]`` for a single string.  A tqdm
    bar shows for more than 32 texts (``progress`` forces it on or off)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got "
                         f"{pooling!r}")
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    if not items:
        return np.zeros((0, model.config.hidden_size), np.float32)
    all_ids = [text_ids(model, t, truncate=truncate) for t in items]  # all checked first
    from tqdm.auto import tqdm
    show = len(items) > 32 if progress is None else progress
    out = np.empty((len(items), model.config.hidden_size), np.float32)
    for k, ids in enumerate(tqdm(all_ids, desc="embedding", unit="text", disable=not show,
                                 leave=False)):
        out[k] = pool(model.hidden_states(ids), pooling)
    if normalize:
        out = l2_normalize(out)
    return out[0] if single else out
