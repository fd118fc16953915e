"""Related-pin lookups without Spark: the inverted file that `jobs/related.py --method ann` writes,
read back and searched with the same kernel (pinsage_model.similarity) as the job.

    ids, scores = related_for("R/related_index", vectors, k=10)

The index folder (format_version 1, docs/related.md):

    index.json       format_version, run_id, dim, lists, probes, seed, sample, faiss_version, ...
    centroids.npy    [lists, dim] float32: the trained centroids, L2-normalised
    lists/           Parquet (list_id INT, pin_id BIGINT, embedding ARRAY<FLOAT>): every pin of the
                     run, in the list of its nearest centroid

A query probes its `probes` nearest lists (by cosine similarity to the centroids, ties to the smaller
list id) and its related pins are the top k of those lists' pins, scored exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from pinsage_model.similarity import TopK, normalise

FORMAT_VERSION = 1
INDEX_META = "index.json"
CENTROIDS = "centroids.npy"
LISTS = "lists"


def probe_lists(queries: np.ndarray, centroids: np.ndarray, probes: int) -> np.ndarray:
    """[n, probes] list ids, nearest first, of normalised query rows against normalised centroids
    (ties to the smaller list id; column 0 is a pin's own list)."""
    top = TopK(len(queries), probes)
    top.add(queries, centroids, np.arange(len(centroids)))
    return top.matrices()[0]


@dataclass(frozen=True)
class RelatedIndex:
    """An inverted file in memory: normalised centroids, and each list's pin ids and normalised
    embeddings (float64)."""

    meta: dict
    centroids: np.ndarray
    list_ids: dict[int, np.ndarray]
    list_vectors: dict[int, np.ndarray]

    def lookup(
        self, vectors: np.ndarray, k: int, exclude: np.ndarray | None = None, probes: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """([n, k] ids, [n, k] float32 scores) of the pins related to each vector row, best first;
        `exclude` ([n] ids) keeps a pin out of its own list; slots past the candidates hold -1 and NaN."""
        queries = np.asarray(vectors)
        if queries.ndim != 2 or queries.shape[1] != self.meta["dim"]:
            raise ValueError(f"vectors must be [n, {self.meta['dim']}], got {list(queries.shape)}")
        if not np.isfinite(queries).all():
            raise ValueError("vectors hold NaN or Inf")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        probes = self.meta["probes"] if probes is None else probes
        if not 1 <= probes <= len(self.centroids):
            raise ValueError(f"probes must be in 1..{len(self.centroids)}, got {probes}")
        q = normalise(queries)
        probed = probe_lists(q, self.centroids, probes)
        top = TopK(len(q), k, exclude)
        for list_id in np.unique(probed):
            members = self.list_ids.get(int(list_id))
            if members is None:
                continue
            rows = np.flatnonzero((probed == list_id).any(axis=1))
            top.add(q[rows], self.list_vectors[int(list_id)], members, rows)
        return top.matrices()


def load_index(path: str) -> RelatedIndex:
    """Read the index folder at `path` (a local path)."""
    import pyarrow.parquet as pq

    with open(os.path.join(path, INDEX_META)) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version")
        raise ValueError(f"{path}: index format_version {found}, expected {FORMAT_VERSION}")
    centroids = normalise(np.load(os.path.join(path, CENTROIDS)))
    table = pq.read_table(os.path.join(path, LISTS))
    table = table.sort_by([("list_id", "ascending"), ("pin_id", "ascending")])
    lists = table.column("list_id").to_numpy()
    ids = table.column("pin_id").to_numpy().astype(np.int64)
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = normalise(flat.reshape(len(ids), meta["dim"]))
    bounds = np.flatnonzero(np.diff(lists)) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(lists)]
    list_ids = {int(lists[s]): ids[s:e] for s, e in zip(starts, ends, strict=True) if e > s}
    list_vectors = {int(lists[s]): vectors[s:e] for s, e in zip(starts, ends, strict=True) if e > s}
    return RelatedIndex(meta, centroids, list_ids, list_vectors)


def related_for(
    index_path: str, vectors: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """([n, k] ids, [n, k] float32 scores): the k pins of the index nearest to each of `vectors`
    ([n, dim]) by cosine similarity, as `jobs/related.py --method ann` ranks them (its probes, best
    first, ties to the smaller id); -1 and NaN past the candidates. `exclude`: an id per row to leave
    out (a pin's own id when it is in the index)."""
    return load_index(index_path).lookup(vectors, k, exclude)
