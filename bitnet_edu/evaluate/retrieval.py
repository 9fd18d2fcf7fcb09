"""Similarity search and how to score it: nearest neighbours, recall@k, mean reciprocal rank.

An embedding model turns each text into one vector; a search ranks the corpus by the dot product
of its (L2-normalised) vectors with the query's vector, and a retrieval benchmark counts how
high the texts known to be relevant land in that ranking.  This module holds the pieces Lesson
04 section 8c uses, with no dependency beyond NumPy:

* :func:`nearest` -- the ``k`` best corpus rows for each query, by dot product, ties broken by
  the lower corpus index (a stable, reproducible ranking), optionally leaving out one corpus row
  per query (the query itself, when queries are drawn from the corpus);
* :func:`recall_at_k` and :func:`mean_reciprocal_rank` -- the two usual scores of a ranking
  against a ground truth, and :func:`chance`, what a random ranking scores on average;
* :func:`tfidf_vectors` -- the bag-of-words baseline every embedding model must beat;
* :func:`heldout_verses` and :func:`same_group` -- a task with a ground truth from the corpus
  the shipped model was trained on: verses of the held-out chapters (the model never saw them),
  where a verse's relevant texts are the other verses of its chapter;
* :func:`score_search` and :func:`search_chance` -- that task in one call: every text a query
  against all the others, scored by recall@k and MRR, and what chance scores on it.

Everything takes and returns NumPy arrays; shapes are in each docstring.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter

import numpy as np

__all__ = ["nearest", "recall_at_k", "mean_reciprocal_rank", "chance", "tfidf_vectors",
           "words", "heldout_verses", "same_group", "score_search", "search_chance"]

_BLOCK = 1024  # queries scored per matrix product (bounds the [block, n] score matrix)


def _int_k(k, what="k") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"{what} must be a whole number, got {k!r}")
    if k < 1:
        raise ValueError(f"{what} must be at least 1, got {k}")
    return int(k)


def _matrix(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D [rows, dim], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"{what} must hold numbers, got dtype {a.dtype}")
    a = a.astype(np.float64 if a.dtype == np.float64 else np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} holds NaN or infinity")
    return a


def nearest(query_vecs, corpus_vecs, k: int, *, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` corpus rows with the largest dot product with each query, best first.

    ``query_vecs``: numbers ``[q, d]``; ``corpus_vecs``: numbers ``[n, d]`` (any numeric dtype:
    float vectors, or the integer codes of quantized ones; float64 stays float64, everything
    else is scored in float32).  With L2-normalised rows the dot product is the cosine
    similarity.  ``exclude``: ``None``, or ints ``[q]``: the corpus row to leave out of query
    ``i``'s results (``-1``: none), e.g. ``np.arange(n)`` when the queries are the corpus itself.

    Returns ``(indices, scores)``: int64 ``[q, k]`` corpus rows and their float ``[q, k]``
    scores, in decreasing score; equal scores are ordered by the lower corpus index.
    ValueError when the shapes do not fit, a value is not finite, or ``k`` exceeds the rows a
    query can get (``n``, or ``n - 1`` when it has a row excluded).
    """
    q = _matrix(query_vecs, "query_vecs")
    c = _matrix(corpus_vecs, "corpus_vecs")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"query_vecs has dim {q.shape[1]} but corpus_vecs has dim {c.shape[1]}")
    k = _int_k(k)
    n = c.shape[0]
    if exclude is None:
        ex = np.full(q.shape[0], -1, np.int64)
    else:
        ex = np.asarray(exclude)
        if ex.shape != (q.shape[0],) or not np.issubdtype(ex.dtype, np.integer):
            raise ValueError(f"exclude must be ints of shape ({q.shape[0]},), got "
                             f"{ex.dtype} {ex.shape}")
        if ((ex < -1) | (ex >= n)).any():
            raise ValueError(f"exclude holds a row outside -1 .. {n - 1}")
        ex = ex.astype(np.int64)
    avail = n - 1 if (ex >= 0).any() else n
    if k > avail:
        raise ValueError(f"k={k} but a query can get at most {avail} of the {n} corpus rows")
    dtype = np.float64 if np.float64 in (q.dtype, c.dtype) else np.float32
    q, c = q.astype(dtype, copy=False), c.astype(dtype, copy=False)
    idx = np.empty((q.shape[0], k), np.int64)
    val = np.empty((q.shape[0], k), dtype)
    for s in range(0, q.shape[0], _BLOCK):
        scores = q[s:s + _BLOCK] @ c.T                       # [b, n]
        rows = np.arange(scores.shape[0])
        e = ex[s:s + _BLOCK]
        scores[rows[e >= 0], e[e >= 0]] = -np.inf            # an excluded row never ranks
        idx[s:s + _BLOCK], val[s:s + _BLOCK] = _top_k_stable(scores, k)
    return idx, val


def _top_k_stable(scores: np.ndarray, k: int):
    """Top ``k`` of each row of ``scores`` ``[b, n]``: decreasing, ties by the lower column."""
    b, n = scores.shape
    if 4 * k >= n:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        # the k-th largest value of each row; every entry at least that large is a candidate
        # (ties can make more than k), sorted by (row, -score, column)
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
        r, col = np.nonzero(scores >= kth[:, None])
        o = np.lexsort((col, -scores[r, col], r))
        r, col = r[o], col[o]
        first = np.searchsorted(r, np.arange(b))             # where each row's candidates start
        pos = np.arange(len(r)) - first[r]
        keep = pos < k
        order = np.empty((b, k), np.int64)
        order[r[keep], pos[keep]] = col[keep]
    return order, np.take_along_axis(scores, order, axis=1)


def _relevant_sets(relevant, n_query: int) -> list:
    if isinstance(relevant, np.ndarray) and relevant.ndim == 2 and relevant.dtype == np.bool_:
        relevant = [np.flatnonzero(r) for r in relevant]
    if len(relevant) != n_query:
        raise ValueError(f"relevant has {len(relevant)} entries but ranked has {n_query} queries")
    out = []
    for i, r in enumerate(relevant):
        s = {int(x) for x in np.asarray(list(r) if isinstance(r, (set, frozenset)) else r,
                                        dtype=np.int64).reshape(-1)}
        if not s:
            raise ValueError(f"query {i} has no relevant item: its recall is undefined")
        out.append(s)
    return out


def _ranked(ranked) -> np.ndarray:
    r = np.asarray(ranked)
    if r.ndim != 2 or not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"ranked must be ints [queries, k] (nearest's indices), got "
                         f"{r.dtype} {r.shape}")
    return r


def recall_at_k(ranked, relevant, k: int) -> float:
    """Mean over queries of the share of a query's relevant items found in its top ``k``.

    ``ranked``: ints ``[q, m]``, each query's corpus rows best first (``nearest``'s indices),
    ``m >= k``; ``relevant``: ``q`` collections of corpus rows (sets, lists or int arrays; each
    non-empty), or a bool matrix ``[q, n]``.  Query ``i`` scores
    ``|top k of ranked[i] ∩ relevant[i]| / |relevant[i]|``; the result is their mean, a float
    in [0, 1].  With one relevant item per query it is the hit rate: the share of queries whose
    item is in the top ``k``.  A row repeated in ``ranked[i]`` counts once.
    """
    r = _ranked(ranked)
    k = _int_k(k)
    if k > r.shape[1]:
        raise ValueError(f"k={k} but ranked holds only the top {r.shape[1]} of each query")
    rel = _relevant_sets(relevant, r.shape[0])
    return float(np.mean([len(set(row[:k].tolist()) & s) / len(s) for row, s in zip(r, rel)]))


def mean_reciprocal_rank(ranked, relevant) -> float:
    """Mean over queries of ``1 / rank`` of the first relevant item in the query's ranking.

    ``ranked``: ints ``[q, m]`` best first; ``relevant`` as in :func:`recall_at_k`.  The rank
    counts from 1; a query with no relevant item among its ``m`` ranked rows scores 0 (so with
    ``m`` below the corpus size this is MRR@m).  A float in [0, 1].
    """
    r = _ranked(ranked)
    rel = _relevant_sets(relevant, r.shape[0])
    out = []
    for row, s in zip(r, rel):
        hit = np.flatnonzero(np.isin(row, list(s)))
        out.append(1.0 / (hit[0] + 1) if len(hit) else 0.0)
    return float(np.mean(out))


def chance(n_candidates, n_relevant, k: int) -> dict:
    """What a uniformly random ranking scores on average: ``{"recall": ..., "mrr": ...}``.

    ``n_candidates``: the rows each query is ranked over (an int, or ints ``[q]``); ``n_relevant``:
    the relevant rows of each query (an int, or ints ``[q]``).  Recall@k of a random ranking is
    ``k / n_candidates`` whatever the number relevant; the expected reciprocal rank of the first
    of ``R`` relevant rows among ``N`` is ``sum_r (1/r) * C(N - r, R - 1) / C(N, R)``.  Each is
    averaged over the queries.
    """
    k = _int_k(k)
    n_c, n_r = (a.reshape(-1) for a in np.broadcast_arrays(np.asarray(n_candidates, np.int64),
                                                           np.asarray(n_relevant, np.int64)))
    if (n_r < 1).any() or (n_r > n_c).any():
        raise ValueError("every query needs 1 .. n_candidates relevant rows")
    if (k > n_c).any():
        raise ValueError(f"k={k} exceeds the candidates of a query")
    cache: dict = {}

    def mrr(n, r):
        if (n, r) not in cache:
            # P(first relevant at rank j) = C(n - j, r - 1) / C(n, r), in logs for large n
            j = np.arange(1, n - r + 2)
            logp = (_lgamma(n - j + 1) - _lgamma(r) - _lgamma(n - j - r + 2)
                    - (_lgamma(n + 1) - _lgamma(r + 1) - _lgamma(n - r + 1)))
            cache[n, r] = float(np.sum(np.exp(logp) / j))
        return cache[n, r]

    return {"recall": float(np.mean(np.minimum(k / n_c, 1.0))),
            "mrr": float(np.mean([mrr(int(n), int(r)) for n, r in zip(n_c, n_r)]))}


def _lgamma(x):
    return np.vectorize(math.lgamma, otypes=[float])(np.asarray(x, np.float64))


_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """The lowercase words of ``text`` (runs of letters; "LORD's" -> ["lord", "s"])."""
    return _WORD.findall(text.lower())


def tfidf_vectors(texts, fit_texts=None) -> tuple[np.ndarray, list[str]]:
    """Bag-of-words TF-IDF vectors, L2-normalised: the baseline an embedding must beat.

    ``texts``: the strings to embed; ``fit_texts``: the strings the vocabulary and the document
    frequencies come from (default: ``texts`` themselves).  Words are :func:`words`; the
    vocabulary is every word of ``fit_texts``, sorted; a word of ``texts`` outside it is
    ignored.  Entry ``(i, w)`` is ``count of w in text i * idf(w)`` with the smoothed
    ``idf(w) = ln((1 + N) / (1 + df(w))) + 1`` (scikit-learn's default; ``N`` fit texts,
    ``df`` the fit texts containing ``w``), then each row is divided by its L2 norm (a text
    with no known word stays all zero).

    Returns ``(vectors, vocabulary)``: float32 ``[len(texts), len(vocabulary)]`` (dense: fine
    for thousands of verses, about 4 bytes x texts x vocabulary) and the list of words.
    """
    texts = list(texts)
    fit = texts if fit_texts is None else list(fit_texts)
    for t in texts + fit:
        if not isinstance(t, str):
            raise ValueError(f"texts must be strings, got {type(t).__name__}")
    df = Counter(w for t in fit for w in set(words(t)))
    vocab = sorted(df)
    col = {w: i for i, w in enumerate(vocab)}
    idf = np.array([math.log((1 + len(fit)) / (1 + df[w])) + 1 for w in vocab], np.float64)
    x = np.zeros((len(texts), len(vocab)), np.float64)
    for i, t in enumerate(texts):
        for w, n in Counter(words(t)).items():
            if w in col:
                x[i, col[w]] = n
    x *= idf
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    return x.astype(np.float32), vocab


def heldout_verses(per_chapter: int | None = None, seed: int = 0, data_dir=None
                   ) -> tuple[list[str], np.ndarray]:
    """Verses of the held-out chapters, with the chapter each comes from.

    The chapters are the offline task ``bitnet_edu_heldout`` (every 20th chapter of the KJV,
    which the shipped model never saw in training; shipped with the package, so no corpus
    download).  A verse whose exact text already came earlier is dropped (the KJV repeats
    formulas word for word), so no query has a copy of itself to find.  ``per_chapter``:
    keep that many verses of each chapter, drawn with ``seed`` and kept in their order
    (``None``: all of them); a chapter with fewer keeps all of its own.

    Returns ``(verses, chapter)``: a list of strings and int64 ``[len(verses)]`` chapter
    numbers 0, 1, ... in held-out order.
    """
    from .offline import load_docs

    if per_chapter is not None:
        _int_k(per_chapter, "per_chapter")
    rng = np.random.default_rng(seed)
    seen: set = set()
    verses, chapter = [], []
    for ci, d in enumerate(load_docs("bitnet_edu_heldout", data_dir=data_dir)):
        vs = []
        for v in d["text"].split("\n"):
            v = v.strip()
            if v and v not in seen:
                seen.add(v)
                vs.append(v)
        if per_chapter is not None and len(vs) > per_chapter:
            vs = [vs[i] for i in sorted(rng.choice(len(vs), per_chapter, replace=False))]
        verses += vs
        chapter += [ci] * len(vs)
    return verses, np.asarray(chapter, np.int64)


def same_group(labels) -> list[np.ndarray]:
    """For each item, the *other* items with the same label: ``q`` int64 arrays.

    ``labels``: ints ``[q]`` (a chapter per verse).  Item ``i``'s array holds every ``j != i``
    with ``labels[j] == labels[i]`` (the query itself is never its own relevant item); an item
    alone in its group gets an empty array, which :func:`recall_at_k` refuses, so drop it first.
    """
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    groups: dict = {}
    for i, g in enumerate(lab.tolist()):
        groups.setdefault(g, []).append(i)
    members = {g: np.asarray(v, np.int64) for g, v in groups.items()}
    return [members[g][members[g] != i] for i, g in enumerate(lab.tolist())]


def _search_queries(labels):
    lab = np.asarray(labels)
    rel = same_group(lab)
    keep = np.flatnonzero([len(r) > 0 for r in rel])
    if len(keep) == 0:
        raise ValueError("no item shares its label with another: nothing to search for")
    return lab, rel, keep


def score_search(vectors, labels, k: int = 10) -> dict:
    """Each row of ``vectors`` a query against all the other rows: ``{"recall": recall@k,
    "mrr": mean reciprocal rank}`` (floats in [0, 1]).

    ``vectors``: numbers ``[n, d]``, ranked by dot product (normalise the rows first for the
    cosine); ``labels``: ints ``[n]`` (the chapter of each verse).  A query's relevant rows are
    the other rows with its label (:func:`same_group`); a row alone in its group is still a
    candidate for the others but asks no query.  The whole ranking of the ``n - 1`` other rows
    is scored, so the MRR is exact and :func:`search_chance` gives what chance scores on it.
    """
    x = _matrix(vectors, "vectors")
    lab, rel, keep = _search_queries(labels)
    if lab.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {lab.shape}")
    k = _int_k(k)
    if k > x.shape[0] - 1:
        raise ValueError(f"k={k} but a query can get at most {x.shape[0] - 1} other rows")
    idx, _ = nearest(x[keep], x, x.shape[0] - 1, exclude=keep)
    relevant = [rel[i] for i in keep]
    return {"recall": recall_at_k(idx, relevant, k), "mrr": mean_reciprocal_rank(idx, relevant)}


def search_chance(labels, k: int = 10) -> dict:
    """What a random ranking scores on :func:`score_search`'s task with these ``labels``:
    ``{"recall": ..., "mrr": ...}`` (:func:`chance` over the same queries)."""
    lab, rel, keep = _search_queries(labels)
    return chance(len(lab) - 1, [len(rel[i]) for i in keep], k)
