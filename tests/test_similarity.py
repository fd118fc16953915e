"""The shared top-k kernel and the index lookups, against plain Python sorting of every score
(no Spark)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.lib.vectors import to_list
from pinsage_model.related import CENTROIDS, INDEX_META, LISTS, load_index, related_for
from pinsage_model.similarity import TopK, top_k_rows


def brute_force(queries, candidates, cand_ids, k, exclude=None):
    """Each query's k best candidate ids, by sorting (-float32 score, id) tuples in Python."""
    result = []
    for i, q in enumerate(queries):
        qn = q / max(np.linalg.norm(q), 1e-12)
        scored = []
        for c, cid in zip(candidates, cand_ids, strict=True):
            if exclude is not None and cid == exclude[i]:
                continue
            cn = c / max(np.linalg.norm(c), 1e-12)
            # The stored score: the cosine rounded to a multiple of 2**-24.
            scored.append((-round(float(np.dot(qn, cn)) * 2**24), int(cid)))
        result.append([cid for _, cid in sorted(scored)[:k]])
    return result


def run_top_k(queries, candidates, ids, k, chunk, exclude=None):
    from pinsage_model.similarity import normalise

    top = TopK(len(queries), k, exclude)
    q, c = normalise(queries), normalise(candidates)
    for lo in range(0, len(ids), chunk):
        top.add(q, c[lo : lo + chunk], ids[lo : lo + chunk])
    got, scores = top.matrices()
    return [[int(i) for i in row if i != -1] for row in got], scores


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_top_k_matches_sorting_with_ties_duplicates_zero_vectors_and_short_catalogues(chunk):
    rng = np.random.default_rng(5)
    for _ in range(15):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        # Small integer vectors: many equal scores, repeated vectors and zero vectors.
        candidates = rng.integers(-1, 2, size=(n, 3)).astype(np.float64)
        ids = rng.permutation(10_000)[:n].astype(np.int64)
        queries, own = candidates[:5], ids[:5]
        got, _ = run_top_k(queries, candidates, ids, k, chunk, exclude=own)
        assert got == brute_force(queries, candidates, ids, k, own)


def test_equal_vectors_tie_to_the_smaller_id_and_k_beyond_the_catalogue_leaves_slots_empty():
    candidates = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ids = np.array([30, 20, 10, 40])
    got, scores = run_top_k(candidates[:1], candidates, ids, k=5, chunk=2, exclude=ids[:1])
    assert got == [[10, 20, 40]]  # 10 and 20 equal 30's direction; 40 is orthogonal
    assert scores[0, :3].tolist() == [1.0, 1.0, 0.0] and np.isnan(scores[0, 3:]).all()


def test_a_zero_vector_scores_zero_against_everything():
    candidates = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    got, scores = run_top_k(candidates[:1], candidates, np.array([5, 7, 6]), k=2, chunk=3, exclude=[5])
    assert got == [[6, 7]] and scores[0].tolist() == [0.0, 0.0]
    assert not np.signbit(scores).any()  # -0.0 is stored as 0.0


@pytest.mark.parametrize("offset", [0, -(2**62)])  # small row numbers, or pin ids of any size
def test_top_k_rows_merges_partial_lists_by_score_then_id(offset):
    rows = np.array([2, 1, 1, 1, 2]) + offset
    ids = np.array([9, 4, 3, 5, 8])
    scores = np.array([0.5, 0.5, 0.5, 0.9, 0.5], dtype=np.float32)
    assert [a.tolist() for a in top_k_rows(rows, ids, scores, 2)] == [
        [1 + offset, 1 + offset, 2 + offset, 2 + offset],
        [5, 3, 8, 9],
        [np.float32(0.9), np.float32(0.5), np.float32(0.5), np.float32(0.5)],
        [1, 2, 1, 2],
    ]


def write_index(path, centroids, lists, ids, vectors, probes):
    os.makedirs(path)
    np.save(os.path.join(path, CENTROIDS), np.asarray(centroids, dtype=np.float32))
    os.makedirs(os.path.join(path, LISTS))
    table = pa.table(
        {
            "list_id": pa.array(lists, pa.int32()),
            "pin_id": pa.array(ids, pa.int64()),
            "embedding": to_list(vectors),
        }
    )
    pq.write_table(table, os.path.join(path, LISTS, "part-0.parquet"))
    meta = {
        "format_version": 1,
        "run_id": "r",
        "dim": vectors.shape[1],
        "lists": len(centroids),
        "probes": probes,
    }
    with open(os.path.join(path, INDEX_META), "w") as f:
        json.dump(meta, f)


def test_related_for_scores_the_probed_lists_exactly(tmp_path):
    rng = np.random.default_rng(2)
    centroids = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    vectors = rng.normal(size=(60, 3))
    lists = np.argmax(vectors @ centroids.T, axis=1)
    ids = np.arange(100, 160)
    write_index(str(tmp_path / "index"), centroids, lists, ids, vectors, probes=2)
    queries = rng.normal(size=(8, 3))
    got, scores = related_for(str(tmp_path / "index"), queries, k=4)
    for i, q in enumerate(queries):
        probed = np.lexsort((np.arange(4), -(centroids @ q)))[:2]
        inside = np.isin(lists, probed)
        assert got[i].tolist() == brute_force([q], vectors[inside], ids[inside], 4)[0]
    assert scores.dtype == np.float32 and (np.diff(scores, axis=1) <= 0).all()
    # Every list probed: the exact top k; a pin's own id excluded.
    index = load_index(str(tmp_path / "index"))
    got, _ = index.lookup(vectors[:5], k=3, exclude=ids[:5], probes=4)
    assert [r.tolist() for r in got] == brute_force(vectors[:5], vectors, ids, 3, ids[:5])


def test_related_for_refuses_vectors_of_another_width_and_non_finite_values(tmp_path):
    write_index(str(tmp_path / "i"), np.eye(2), [0, 1], [1, 2], np.eye(2), probes=1)
    with pytest.raises(ValueError, match=r"vectors must be \[n, 2\], got \[1, 3\]"):
        related_for(str(tmp_path / "i"), np.ones((1, 3)), k=1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        related_for(str(tmp_path / "i"), np.array([[np.nan, 1.0]]), k=1)
