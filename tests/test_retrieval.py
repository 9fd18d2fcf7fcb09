"""bitnet_edu.evaluate.retrieval: nearest neighbours, recall@k, MRR, chance, TF-IDF and the
held-out verse task, on cases small enough to work out by hand."""

import math

import numpy as np
import pytest

from bitnet_edu.evaluate import retrieval as R


# ---- nearest ---------------------------------------------------------------------------------

def test_nearest_by_hand():
    q = np.array([[1.0, 0.0]], np.float32)
    c = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]], np.float32)
    idx, val = R.nearest(q, c, 3)
    assert idx.dtype == np.int64 and idx.shape == (1, 3)
    assert idx.tolist() == [[1, 2, 0]]
    np.testing.assert_allclose(val, [[1.0, 0.6, 0.0]], atol=1e-7)
    assert val.dtype == np.float32
    # the dot product, not the cosine: a long vector wins when rows are not normalised
    idx, _ = R.nearest(q, np.array([[1.0, 1.0], [3.0, 9.0]]), 1)
    assert idx.tolist() == [[1]]


@pytest.mark.parametrize("n", [4, 40])  # 4 * k >= n: full sort; 4 * k < n: partition path
def test_nearest_ties_go_to_the_lower_index(n):
    c = np.zeros((n, 2))
    c[:, 1] = 1.0                     # every row scores 0 ...
    c[[2, 3], 0] = 1.0                # ... but rows 2 and 3 score 1, a tie
    idx, val = R.nearest(np.array([[1.0, 0.0]]), c, 3)
    assert idx.tolist() == [[2, 3, 0]]
    assert val.tolist() == [[1.0, 1.0, 0.0]]
    idx, _ = R.nearest(np.array([[0.0, 0.0]]), c, 2)     # all tied
    assert idx.tolist() == [[0, 1]]


@pytest.mark.parametrize("k", [1, 3, 25])
def test_nearest_matches_a_full_stable_sort(k):
    rng = np.random.default_rng(0)
    c = rng.integers(-2, 3, (60, 5)).astype(np.float32)   # small integers: many exact ties
    q = rng.integers(-2, 3, (7, 5)).astype(np.float32)
    idx, val = R.nearest(q, c, k)
    s = q.astype(np.float64) @ c.T.astype(np.float64)
    want = np.argsort(-s, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(val, np.take_along_axis(s, want, 1))


def test_nearest_many_queries_in_blocks(monkeypatch):
    monkeypatch.setattr(R, "_BLOCK", 3)
    rng = np.random.default_rng(1)
    c, q = rng.standard_normal((30, 4)), rng.standard_normal((10, 4))
    idx, _ = R.nearest(q, c, 2)
    np.testing.assert_array_equal(idx, np.argsort(-(q @ c.T), axis=1, kind="stable")[:, :2])


def test_nearest_exclude_leaves_the_query_out():
    v = np.eye(3) + 0.1
    idx, _ = R.nearest(v, v, 1)
    assert idx[:, 0].tolist() == [0, 1, 2]                 # each row's best match is itself
    idx, _ = R.nearest(v, v, 2, exclude=np.arange(3))
    assert 0 not in idx[0] and 1 not in idx[1] and 2 not in idx[2]
    assert idx.tolist() == [[1, 2], [0, 2], [0, 1]]
    idx, _ = R.nearest(v, v, 3, exclude=np.array([-1, -1, -1]))  # -1: nothing left out
    assert idx[:, 0].tolist() == [0, 1, 2]
    idx, _ = R.nearest(v[:1], v, 2, exclude=np.array([0]))
    assert idx.tolist() == [[1, 2]]


def test_nearest_refuses_k_beyond_the_corpus():
    v = np.eye(3)
    R.nearest(v, v, 3)                                     # k == n is fine
    with pytest.raises(ValueError, match="at most 3"):
        R.nearest(v, v, 4)
    with pytest.raises(ValueError, match="at most 2"):     # one row excluded per query
        R.nearest(v, v, 3, exclude=np.arange(3))
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="k must"):
            R.nearest(v, v, bad)


@pytest.mark.parametrize("q, c, match", [
    (np.ones(3), np.ones((2, 3)), "query_vecs must be 2-D"),
    (np.ones((1, 3)), np.ones((2, 3, 1)), "corpus_vecs must be 2-D"),
    (np.ones((1, 3)), np.ones((2, 4)), "dim 3 but corpus_vecs has dim 4"),
    (np.array([[np.nan, 1.0]]), np.ones((2, 2)), "NaN"),
    (np.ones((1, 2)), np.array([[np.inf, 1.0]]), "NaN or infinity"),
    (np.array([["a", "b"]]), np.ones((2, 2)), "numbers"),
])
def test_nearest_refuses_bad_inputs(q, c, match):
    with pytest.raises(ValueError, match=match):
        R.nearest(q, c, 1)


def test_nearest_refuses_a_bad_exclude():
    v = np.eye(3)
    for ex in (np.arange(2), np.zeros((3, 1), int), np.array([0.0, 1.0, 2.0]), np.array([0, 3, 1]),
               np.array([0, -2, 1])):
        with pytest.raises(ValueError, match="exclude"):
            R.nearest(v, v, 1, exclude=ex)


def test_nearest_integer_codes_score_exactly():
    codes = np.array([[1, -1, 1], [1, 1, 1], [-1, -1, -1]], np.int8)   # binary codes as ints
    idx, val = R.nearest(codes[:1], codes, 3)
    assert idx.tolist() == [[0, 1, 2]] and val.tolist() == [[3.0, 1.0, -1.0]]


# ---- recall@k and MRR ------------------------------------------------------------------------

RANKED = np.array([[3, 1, 2], [0, 2, 1]])
RELEVANT = [{1, 2}, {1}]


def test_recall_at_k_by_hand():
    # query 0: top 2 = {3, 1}, 1 of its 2 relevant -> 0.5; query 1: {0, 2} misses 1 -> 0
    assert R.recall_at_k(RANKED, RELEVANT, 2) == pytest.approx(0.25)
    assert R.recall_at_k(RANKED, RELEVANT, 1) == 0.0
    assert R.recall_at_k(RANKED, RELEVANT, 3) == 1.0
    # lists, arrays and a bool matrix say the same
    assert R.recall_at_k(RANKED, [[1, 2], np.array([1])], 2) == pytest.approx(0.25)
    mask = np.zeros((2, 4), bool)
    mask[0, [1, 2]] = mask[1, 1] = True
    assert R.recall_at_k(RANKED, mask, 2) == pytest.approx(0.25)


def test_recall_counts_a_repeated_row_once():
    assert R.recall_at_k(np.array([[1, 1, 2]]), [{1, 2}], 2) == 0.5


def test_recall_refusals():
    with pytest.raises(ValueError, match="only the top 3"):
        R.recall_at_k(RANKED, RELEVANT, 4)
    with pytest.raises(ValueError, match="no relevant item"):
        R.recall_at_k(RANKED, [{1}, set()], 1)
    with pytest.raises(ValueError, match="1 entries but ranked has 2"):
        R.recall_at_k(RANKED, [{1}], 1)
    with pytest.raises(ValueError, match="ranked must be ints"):
        R.recall_at_k(RANKED.astype(float), RELEVANT, 1)
    with pytest.raises(ValueError, match="ranked must be ints"):
        R.recall_at_k(np.array([1, 2]), [{1}, {2}], 1)
    with pytest.raises(ValueError, match="k must"):
        R.recall_at_k(RANKED, RELEVANT, 0)


def test_mean_reciprocal_rank_by_hand():
    # query 0: first relevant (1) at rank 2 -> 1/2; query 1: 1 at rank 3 -> 1/3
    assert R.mean_reciprocal_rank(RANKED, RELEVANT) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert R.mean_reciprocal_rank(RANKED, [{3}, {0}]) == 1.0
    assert R.mean_reciprocal_rank(RANKED, [{9}, {0}]) == 0.5      # not ranked: scores 0
    with pytest.raises(ValueError, match="no relevant item"):
        R.mean_reciprocal_rank(RANKED, [{1}, []])


def test_chance_by_hand():
    # 4 candidates, 1 relevant: rank 1..4 equally likely
    assert R.chance(4, 1, 1) == pytest.approx({"recall": 0.25, "mrr": (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4})
    # 3 candidates, 2 relevant: first relevant at rank 1 w.p. 2/3, at rank 2 w.p. 1/3
    assert R.chance(3, 2, 2) == pytest.approx({"recall": 2 / 3, "mrr": 2 / 3 + 1 / 6})
    # per query, averaged
    both = R.chance([4, 3], [1, 2], 1)
    assert both["mrr"] == pytest.approx(((25 / 48) + (5 / 6)) / 2)
    assert both["recall"] == pytest.approx((1 / 4 + 1 / 3) / 2)
    assert R.chance(5, 5, 1)["mrr"] == 1.0
    for bad in [(3, 0, 1), (3, 4, 1), (3, 1, 4)]:
        with pytest.raises(ValueError):
            R.chance(*bad)


def test_chance_agrees_with_random_rankings():
    rng = np.random.default_rng(2)
    n, rel, k, trials = 50, [3, 7, 8], 5, 4000
    ranked = np.stack([rng.permutation(n) for _ in range(trials)])
    relevant = [set(range(rel[i % 3])) for i in range(trials)]
    want = R.chance(n, [rel[i % 3] for i in range(trials)], k)
    assert R.mean_reciprocal_rank(ranked, relevant) == pytest.approx(want["mrr"], abs=0.02)
    assert R.recall_at_k(ranked, relevant, k) == pytest.approx(want["recall"], abs=0.01)
    assert R.chance(31102, 30, 10)["mrr"] < 0.01      # large n: no overflow


# ---- TF-IDF ----------------------------------------------------------------------------------

def test_tfidf_by_hand():
    x, vocab = R.tfidf_vectors(["a b", "A c, c."])
    assert vocab == ["a", "b", "c"]
    assert x.dtype == np.float32 and x.shape == (2, 3)
    idf_rare = math.log(3 / 2) + 1                      # b, c: in 1 of 2 texts; a: idf 1
    r0 = np.array([1.0, idf_rare, 0.0])
    r1 = np.array([1.0, 0.0, 2 * idf_rare])
    np.testing.assert_allclose(x, [r0 / np.linalg.norm(r0), r1 / np.linalg.norm(r1)], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-6)


def test_tfidf_fit_texts_and_empty_rows():
    x, vocab = R.tfidf_vectors(["the LORD's day", "zzz", ""], fit_texts=["the lord s", "day"])
    assert vocab == ["day", "lord", "s", "the"]
    assert x[0].min() > 0                                # "LORD's" -> lord, s
    assert not x[1].any() and not x[2].any()            # no known word: all zero, no NaN
    with pytest.raises(ValueError, match="strings"):
        R.tfidf_vectors(["a", 3])


def test_tfidf_retrieves_the_shared_rare_word():
    texts = ["moses said", "aaron said", "moses went", "he said", "they said"]
    x, _ = R.tfidf_vectors(texts)
    idx, _ = R.nearest(x[:1], x, 1, exclude=np.array([0]))
    assert idx.tolist() == [[2]]     # the rarer shared word wins: "moses" (2 texts) over "said" (4)


# ---- the held-out verse task -----------------------------------------------------------------

def test_same_group():
    got = R.same_group([0, 0, 1, 0, 2])
    assert [g.tolist() for g in got] == [[1, 3], [0, 3], [], [0, 1], []]
    assert all(g.dtype == np.int64 for g in got)
    with pytest.raises(ValueError, match="1-D"):
        R.same_group(np.zeros((2, 2)))


def test_heldout_verses():
    from bitnet_edu.evaluate import offline

    verses, chapter = R.heldout_verses()
    n_chapters = len(offline.load_docs("bitnet_edu_heldout"))
    assert len(verses) == len(chapter) == len(set(verses))          # no verse twice
    assert chapter.dtype == np.int64 and set(chapter.tolist()) == set(range(n_chapters))
    assert (np.diff(chapter) >= 0).all()
    assert all(v == v.strip() and v for v in verses)
    some, ch = R.heldout_verses(per_chapter=5, seed=3)
    assert np.bincount(ch).max() == 5 and set(some) <= set(verses)
    again, ch2 = R.heldout_verses(per_chapter=5, seed=3)               # deterministic
    assert again == some and np.array_equal(ch2, ch)
    assert R.heldout_verses(per_chapter=5, seed=4)[0] != some
    # kept in chapter order
    pos = {v: i for i, v in enumerate(verses)}
    assert [pos[v] for v in some] == sorted(pos[v] for v in some)
    with pytest.raises(ValueError, match="per_chapter"):
        R.heldout_verses(per_chapter=0)



# ---- score_search / search_chance --------------------------------------------------------------

def test_score_search_by_hand():
    # rows 0, 1 (label 0) point one way, rows 2, 3 (label 1) another; row 4 is alone in its label
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.9], [0.7, 0.7]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lab = [0, 0, 1, 1, 2]
    got = R.score_search(x, lab, k=1)
    assert got == {"recall": 1.0, "mrr": 1.0}           # each query's nearest is its partner
    # by hand: query 0 ranks 1, 4, 3, 2 -> its partner first; the same for every query here
    idx, _ = R.nearest(x[:4], x, 4, exclude=np.arange(4))
    assert (idx[:, 0] == [1, 0, 3, 2]).all()
    # the labels swapped: every partner is now behind row 4 (second) or last
    got = R.score_search(x, [0, 1, 0, 1, 2], k=2)
    want_idx, _ = R.nearest(x[:4], x, 4, exclude=np.arange(4))
    rel = R.same_group([0, 1, 0, 1, 2])[:4]
    assert got["recall"] == pytest.approx(R.recall_at_k(want_idx, rel, 2))
    assert got["mrr"] == pytest.approx(R.mean_reciprocal_rank(want_idx, rel))
    assert got["mrr"] < 0.5


def test_score_search_of_random_vectors_is_near_chance():
    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(20), 5)
    x = rng.standard_normal((100, 16)).astype(np.float32)
    got, ch = R.score_search(x, lab, k=10), R.search_chance(lab, k=10)
    assert ch["recall"] == pytest.approx(10 / 99)
    assert ch == pytest.approx(R.chance(99, 4, 10))
    assert abs(got["recall"] - ch["recall"]) < 0.05 and abs(got["mrr"] - ch["mrr"]) < 0.08


def test_score_search_refuses_bad_input():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        R.score_search(x, [0, 0])
    with pytest.raises(ValueError, match="nothing to search"):
        R.score_search(x, [0, 1, 2], k=1)
    with pytest.raises(ValueError, match="at most 2"):
        R.score_search(x, [0, 0, 1], k=3)
    with pytest.raises(ValueError, match="nothing to search"):
        R.search_chance([0, 1, 2])
