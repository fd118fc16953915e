"""Cosine similarity of embeddings and the top-k kernel: one definition for the evaluation's ranks,
the related-pins job (exact and inverted-file) and the lookups of pinsage_model.related.

Scores are float64 dot products of rows divided by max(L2 norm, NORM_EPS), so a zero vector scores
0 against everything. The evaluation compares such scores with TIE_TOLERANCE. The related-pins order
is defined on the score as stored: the float64 cosine rounded to a multiple of SCORE_STEP (2**-24,
exact in float32), higher first, and among equal stored scores the smaller id first. That order is
total and is what `TopK` keeps, so a related list does not depend on the order in which candidates are
met (which block, partition or list they come in). The fixed step, rather than float32's relative
rounding, absorbs the last-bit differences of float64 products computed in different block shapes
also near 0, where float32 would keep them (orthogonal vectors score exactly 0).
"""

from __future__ import annotations

import numpy as np

TIE_TOLERANCE = 1e-10
NORM_EPS = 1e-12
SCORE_STEP = 2.0**-24
# Pending (row, id, score) entries kept between compactions, per row and top-k slot.
_PENDING_FACTOR = 4


def normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows divided by max(L2 norm, NORM_EPS), in float64."""
    m = np.asarray(matrix, dtype=np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), NORM_EPS)


def cosine_scores(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[q, c] float64 scores of normalised query rows [q, d] against normalised candidate rows [c, d]."""
    return queries @ candidates.T


def pair_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n] float64 cosine scores of paired normalised rows a[i], b[i]: each a sum over one row of
    products, so a pair's score is the same bits whichever other pairs are scored with it."""
    return np.add.reduce(a * b, axis=1)


def _screen_margin(dim: int) -> float:
    """An upper bound of |float32 score - exact score| for normalised rows of width `dim` (inputs
    rounded to float32 and a float32 dot product of `dim` terms: about (dim + 2) * 2**-24), times 4."""
    return (dim + 2) * 2.0**-22


def stored_scores(scores: np.ndarray) -> np.ndarray:
    """float64 scores as stored and ordered: rounded to a multiple of SCORE_STEP, as float32 (exact
    for scores in [-1, 1]), with -0.0 made 0.0 so equal scores are equal bit for bit."""
    return (np.round(np.asarray(scores) / SCORE_STEP) * SCORE_STEP).astype(np.float32) + np.float32(0.0)


def top_k_rows(
    rows: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The best `k` (id, score) entries of each row of flat entry arrays, by stored score descending
    and then id ascending: (rows, ids, scores, ranks), sorted by row and rank (1-based). An id must
    appear at most once per row."""
    if len(rows) and 0 <= rows.min() and rows.max() < 1 << 37:
        # Stored scores are multiples of SCORE_STEP in [-1, 1], 26 bits: packed below the row, one
        # sort key less.
        steps = np.rint(scores.astype(np.float64) / SCORE_STEP).astype(np.int64)
        order = np.lexsort((ids, rows.astype(np.int64) * (1 << 26) + ((1 << 25) - steps)))
    else:
        order = np.lexsort((ids, -scores, rows))
    rows, ids, scores = rows[order], ids[order], scores[order]
    n = len(rows)
    starts = np.ones(n, dtype=bool)
    starts[1:] = rows[1:] != rows[:-1]
    index = np.arange(n)
    ranks = index - np.maximum.accumulate(np.where(starts, index, 0)) + 1
    keep = ranks <= k
    return rows[keep], ids[keep], scores[keep], ranks[keep]


class TopK:
    """The running top-k candidates of `n` query rows (the related-pins order of the module doc).

    `add` takes a [rows, c] block of float64 scores for candidate ids [c]; entries that cannot enter
    a row's top k (below its current k-th stored score) are dropped at once, the rest are compacted
    from time to time, so memory stays about `_PENDING_FACTOR * n * k` entries whatever the number of
    candidates. `exclude` ([n] ids) is a row's own id, never its own candidate."""

    def __init__(self, n: int, k: int, exclude: np.ndarray | None = None) -> None:
        self.n, self.k = n, k
        self.exclude = None if exclude is None else np.asarray(exclude, dtype=np.int64)
        # Below a row's threshold nothing can enter its top k; -inf until the row has k entries.
        self.threshold = np.full(n, -np.inf, dtype=np.float32)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending = 0

    def add(
        self, queries: np.ndarray, candidates: np.ndarray, ids: np.ndarray, rows: np.ndarray | None = None
    ) -> None:
        """Candidates `ids` [c] (distinct) with normalised float64 vectors `candidates` [c, d] for the
        normalised float64 `queries` [len(rows), d] of query `rows` (default: every row).

        A float32 matrix product screens the pairs (a pair is dropped only when its float32 score,
        widened by the product's worst-case rounding error, cannot reach a row's current floor); the
        pairs that pass are scored exactly, `pair_scores`, so a stored score never depends on the
        block shapes a BLAS call happened to see."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(rows) == 0 or len(ids) == 0:
            return
        ids = np.asarray(ids, dtype=np.int64)
        rough = queries.astype(np.float32) @ candidates.astype(np.float32).T
        if self.exclude is not None:
            order = np.argsort(ids)
            at = np.minimum(np.searchsorted(ids, self.exclude[rows], sorter=order), len(ids) - 1)
            hit = ids[order[at]] == self.exclude[rows]
            rough[np.flatnonzero(hit), order[at[hit]]] = -np.inf
        floor = self.threshold[rows]
        filling = len(ids) > self.k and not np.isfinite(floor).all()
        if filling:
            # Rows still filling up: this block's own k-th best is a floor too, so a first block
            # does not keep every entry.
            own = np.partition(rough, len(ids) - self.k, axis=1)[:, len(ids) - self.k]
            floor = np.maximum(floor, own - _screen_margin(queries.shape[1]))
        # One score step below the floor can still round to it; the margin covers float32 rounding.
        screen = floor - np.float32(SCORE_STEP + _screen_margin(queries.shape[1]))
        keep = rough >= screen[:, None]
        if not np.isfinite(screen).all():  # -inf >= -inf: a row's own id would pass
            keep &= rough > -np.inf
        r, c = np.divmod(np.flatnonzero(keep), len(ids))
        exact = pair_scores(queries[r], candidates[c])
        self._parts.append((rows[r], ids[c], stored_scores(exact)))
        self._pending += len(r)
        # Compacting right after a first block sets the thresholds that screen every later one.
        if filling or self._pending > _PENDING_FACTOR * self.n * self.k:
            self._compact()

    def _compact(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._parts:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0, dtype=np.float32), empty
        rows, ids, scores = (np.concatenate(a) for a in zip(*self._parts, strict=True))
        rows, ids, scores, ranks = top_k_rows(rows, ids, scores, self.k)
        self._parts, self._pending = [(rows, ids, scores)], len(rows)
        full = ranks == self.k
        self.threshold[rows[full]] = scores[full]
        return rows, ids, scores, ranks

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rows, ids, scores, ranks): each row's best k (fewer when it met fewer candidates), sorted
        by row and rank."""
        return self._compact()

    def matrices(self, fill_id: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """([n, k] ids, [n, k] float32 scores) by rank; slots past a row's candidates hold `fill_id`
        and NaN."""
        rows, ids, scores, ranks = self.result()
        out_ids = np.full((self.n, self.k), fill_id, dtype=np.int64)
        out_scores = np.full((self.n, self.k), np.nan, dtype=np.float32)
        out_ids[rows, ranks - 1] = ids
        out_scores[rows, ranks - 1] = scores
        return out_ids, out_scores
