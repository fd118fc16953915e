"""The co-occurrence baselines: item-to-item models of the binary pins x boards membership matrix X
(X[i, b] = 1 when pin i is on board b; weights are ignored), ranking the same pairs and pool as the
other methods (rank and tie definitions in the package docstring):

- itemknn, cosine with shrinkage: s(q, c) = (X X^T)[q, c] / (sqrt(deg q) sqrt(deg c) + shrink),
  deg = a pin's boards; with `neighbors` N > 0 only the query's N best-scored pins keep their
  score (all of those level with the N-th), the rest score 0;
- rp3beta (Paudel et al. 2016), a two-step walk pin -> board -> pin with each step's probability
  raised to alpha, divided by the candidate's popularity: s(q, c) = sum_b (1/deg q)^alpha
  (1/deg b)^alpha / (deg c)^beta, deg b = a board's pins;
- ease (Steck 2019): G = X^T X over pins (items), P = (G + lambda I)^-1, B = -P / diag(P) column by
  column, diag(B) = 0; a single-item query q scores c by B[q, c] = -P[q, c] / P[c, c].

itemknn and rp3beta run on Spark (`cooccurrence`, `rank_cooccurrence`): one self-join through the
boards restricted to the pairs' query pins gives, per (query, co-member), the count of shared boards
and sum_b (deg b)^-alpha for every alpha of the grid, written once; one pass grouped by query then
scores every grid point and counts, per pair, the pool candidates above and level with the positive.
ease runs on the driver (`ease_ranks`): a dense items x items float64 matrix, items = pins with
memberships.

A pool pin no model can score (no shared board, or no memberships) scores 0. The scores are floats
summed in no fixed order, so two scores within a relative SCORE_RTOL of the larger are equal
(`count_against`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger("pinsage.evaluation")

SCORE_RTOL = 1e-9
# Pair rows x pool columns scored at once on the driver by ease: 4M float64, 32 MB.
_EASE_BLOCK_ELEMENTS = 1 << 22
_FLOAT64_BYTES = 8

COUNTS_DDL = "method string, query_pin bigint, pos_pin bigint, higher bigint, ties bigint"


# ---- grid points --------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class ItemKnn:
    shrink: float = 0.0
    neighbors: int = 0

    @property
    def name(self) -> str:
        return f"itemknn[shrink={_num(self.shrink)},neighbors={self.neighbors}]"

    def params(self) -> dict:
        return {"shrink": self.shrink, "neighbors": self.neighbors}


@dataclass(frozen=True)
class RP3Beta:
    alpha: float = 1.0
    beta: float = 0.5

    @property
    def name(self) -> str:
        return f"rp3beta[alpha={_num(self.alpha)},beta={_num(self.beta)}]"

    def params(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta}


@dataclass(frozen=True)
class Ease:
    lam: float = 500.0

    @property
    def name(self) -> str:
        return f"ease[lambda={_num(self.lam)}]"

    def params(self) -> dict:
        return {"lambda": self.lam}


# ---- the count shared by every co-occurrence method ---------------------------------------------


def count_against(
    scores: np.ndarray,
    ids: np.ndarray,
    query: np.ndarray,
    pos: np.ndarray,
    s_pos: np.ndarray,
    others: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(higher, ties) per pair k: `scores` [k or 1, m] are the scores of the scored pool pins `ids`
    [m] for pair k's query; each pair's query and positive are left out. The pair's `others`
    candidates (the pool without query and positive) that are not among `ids` score 0. Scores within
    a relative SCORE_RTOL of the larger are level."""
    keep = (ids[None, :] != pos[:, None]) & (ids[None, :] != query[:, None])
    s_p = s_pos[:, None]
    diff = scores - s_p
    tol = SCORE_RTOL * np.maximum(np.abs(scores), np.abs(s_p))
    higher = ((diff > tol) & keep).sum(axis=1)
    ties = ((np.abs(diff) <= tol) & keep).sum(axis=1)
    zeros = others - keep.sum(axis=1)
    higher = higher + np.where(s_pos < 0, zeros, 0)
    ties = ties + np.where(s_pos == 0, zeros, 0)
    return higher.astype(np.int64), ties.astype(np.int64)


def keep_top(scores: np.ndarray, n: int) -> np.ndarray:
    """`scores` with all but the n best set to 0; every score level with the n-th best stays."""
    if n <= 0 or len(scores) <= n:
        return scores
    nth = np.partition(scores, len(scores) - n)[len(scores) - n]
    return np.where(scores >= nth, scores, 0.0)


# ---- itemknn and rp3beta on Spark ---------------------------------------------------------------


def binary_memberships(edges: DataFrame, max_board_pins: int = 0) -> DataFrame:
    """(pin_id, board_id), each membership once; with max_board_pins > 0, boards with more pins than
    that are left out (a board of B pins costs up to B^2 co-occurrence rows)."""
    members = edges.where(F.col("pin_id").isNotNull() & F.col("board_id").isNotNull())
    members = members.select("pin_id", "board_id").distinct()
    if max_board_pins > 0:
        small = members.groupBy("board_id").count().where(F.col("count") <= max_board_pins)
        members = members.join(small.select("board_id"), "board_id", "left_semi")
    return members.select("pin_id", "board_id")


def _degrees(members: DataFrame, key: str, name: str) -> DataFrame:
    return members.groupBy(key).agg(F.count(F.lit(1)).alias(name))


def cooccurrence(pairs: DataFrame, members: DataFrame, pool: DataFrame, alphas: Sequence[float]) -> DataFrame:
    """(query_pin, cand, co, dc, in_pool, a0, a1, ...) for every pin `cand` != the query sharing a
    board with a query pin of `pairs`: co = shared boards, dc = cand's boards, in_pool = 1 when cand
    is in the pool, a<i> = sum over the shared boards b of (pins of b)^-alphas[i].

    The self-join is queries x memberships x memberships: sum over boards of (query pins on the
    board) x (pins on the board) rows before the aggregation per (query, cand)."""
    queries = pairs.select("query_pin").distinct()
    by_query = members.select(F.col("pin_id").alias("query_pin"), "board_id")
    on_boards = (
        queries.join(by_query, "query_pin")
        .join(_degrees(members, "board_id", "db"), "board_id")
        .join(members.select("board_id", F.col("pin_id").alias("cand")), "board_id")
        .where(F.col("cand") != F.col("query_pin"))
    )
    db = F.col("db").cast("double")
    agg = on_boards.groupBy("query_pin", "cand").agg(
        F.count(F.lit(1)).alias("co"),
        *(F.sum(F.pow(db, F.lit(-float(a)))).alias(f"a{i}") for i, a in enumerate(alphas)),
    )
    dc = _degrees(members, "pin_id", "dc").withColumnRenamed("pin_id", "cand")
    in_pool = pool.select(F.col("pin_id").alias("cand"), F.lit(1).alias("in_pool"))
    joined = agg.join(dc, "cand").join(in_pool, "cand", "left")
    alpha_cols = [f"a{i}" for i in range(len(alphas))]
    return joined.select(
        "query_pin", "cand", "co", "dc", F.coalesce("in_pool", F.lit(0)).alias("in_pool"), *alpha_cols
    )


def pair_flags(pairs: DataFrame, members: DataFrame, pool: DataFrame) -> DataFrame:
    """(query_pin, pos_pin, dq, q_in, p_in) per distinct pair: the query's boards (0 when none), and
    1 when the query / the positive is in the pool."""
    dq = _degrees(members, "pin_id", "dq").withColumnRenamed("pin_id", "query_pin")
    pool = pool.select("pin_id")
    df = (
        pairs.select("query_pin", "pos_pin")
        .distinct()
        .join(dq, "query_pin", "left")
        .join(pool.select(F.col("pin_id").alias("query_pin"), F.lit(1).alias("q_in")), "query_pin", "left")
        .join(pool.select(F.col("pin_id").alias("pos_pin"), F.lit(1).alias("p_in")), "pos_pin", "left")
    )
    return df.select(
        "query_pin",
        "pos_pin",
        F.coalesce("dq", F.lit(0)).alias("dq"),
        F.coalesce("q_in", F.lit(0)).alias("q_in"),
        F.coalesce("p_in", F.lit(0)).alias("p_in"),
    )


def score_points(
    points: Sequence[ItemKnn | RP3Beta], alphas: Sequence[float], cands: pd.DataFrame, dq: float
) -> dict[str, np.ndarray]:
    """Per grid point, the scores of one query's co-members (rows of `cooccurrence`)."""
    if cands.empty:  # dq may be 0 then
        return {pt.name: np.zeros(0) for pt in points}
    co = cands["co"].to_numpy(np.float64)
    dc = cands["dc"].to_numpy(np.float64)
    out = {}
    for pt in points:
        if isinstance(pt, ItemKnn):
            s = co / (np.sqrt(dq) * np.sqrt(dc) + pt.shrink)
            out[pt.name] = keep_top(s, pt.neighbors)
        else:
            a = cands[f"a{list(alphas).index(pt.alpha)}"].to_numpy(np.float64)
            out[pt.name] = dq ** (-pt.alpha) * a / dc**pt.beta
    return out


def _query_counts(
    cands: pd.DataFrame,
    pairs: pd.DataFrame,
    points: Sequence[ItemKnn | RP3Beta],
    alphas: Sequence[float],
    pool_size: int,
) -> pd.DataFrame:
    """One query's rows of COUNTS_DDL, for every grid point: `cands` its co-members, `pairs` its
    positives (pair_flags rows)."""
    if pairs.empty:
        return pd.DataFrame({n: pd.Series(dtype=t) for n, t in _COUNT_DTYPES.items()})
    query = pairs["query_pin"].to_numpy(np.int64)
    pos = pairs["pos_pin"].to_numpy(np.int64)
    others = pool_size - pairs["q_in"].to_numpy(np.int64) - pairs["p_in"].to_numpy(np.int64)
    cand = cands["cand"].to_numpy(np.int64)
    in_pool = cands["in_pool"].to_numpy() == 1
    where = {c: i for i, c in enumerate(cand)}
    at = np.array([where.get(p, -1) for p in pos], dtype=np.int64)
    dq = float(pairs["dq"].iloc[0])
    frames = []
    for name, s in score_points(points, alphas, cands, dq).items():
        s_pos = np.where(at >= 0, s[np.maximum(at, 0)] if len(s) else 0.0, 0.0)
        higher, ties = count_against(s[in_pool][None, :], cand[in_pool], query, pos, s_pos, others)
        frames.append(
            pd.DataFrame({"method": name, "query_pin": query, "pos_pin": pos, "higher": higher, "ties": ties})
        )
    return pd.concat(frames, ignore_index=True)


_COUNT_DTYPES = {
    "method": object,
    "query_pin": "int64",
    "pos_pin": "int64",
    "higher": "int64",
    "ties": "int64",
}


def rank_cooccurrence(
    scores: DataFrame,
    flags: DataFrame,
    points: Sequence[ItemKnn | RP3Beta],
    alphas: Sequence[float],
    pool_size: int,
) -> DataFrame:
    """COUNTS_DDL rows for every pair of `flags` (pair_flags) and grid point, from `scores`
    (cooccurrence's rows): one pass grouped by query pin; a query without co-members gets the
    scores 0 of every candidate."""

    def per_query(cands: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
        return _query_counts(cands, pairs, points, alphas, pool_size)

    return (
        scores.groupBy("query_pin").cogroup(flags.groupBy("query_pin")).applyInPandas(per_query, COUNTS_DDL)
    )


# ---- ease on the driver -------------------------------------------------------------------------


@dataclass(frozen=True)
class EaseItems:
    """The membership matrix on the driver: item (pin) ids sorted, and X as (board row, item column)
    pairs."""

    ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    boards: int

    @classmethod
    def from_arrow(cls, table: pa.Table) -> EaseItems:
        pins = table.column("pin_id").to_numpy().astype(np.int64)
        boards = table.column("board_id").to_numpy().astype(np.int64)
        ids, cols = np.unique(pins, return_inverse=True)
        board_ids, rows = np.unique(boards, return_inverse=True)
        return cls(ids, rows.astype(np.int64), cols.astype(np.int64), len(board_ids))


def ease_bytes(items: int) -> int:
    """Bytes of one dense items x items float64 matrix; ease holds about two at its peak."""
    return items * items * _FLOAT64_BYTES


def ease_inverse(items: EaseItems, lam: float) -> np.ndarray:
    """P = (X^T X + lambda I)^-1 as float64 [items, items], by Cholesky: G is built dense from the
    sparse X, factored, then inverted from the factor (at most two dense matrices alive)."""
    n = len(items.ids)
    idx = torch.from_numpy(np.stack([items.rows, items.cols]))
    ones = torch.ones(len(items.rows), dtype=torch.float64)
    with warnings.catch_warnings():  # torch's notes that its sparse tensors are in beta
        warnings.simplefilter("ignore", UserWarning)
        x = torch.sparse_coo_tensor(idx, ones, (items.boards, n), check_invariants=False).coalesce()
        g = torch.sparse.mm(x.t().coalesce(), x).to_dense()
    g.diagonal().add_(lam)
    factor = torch.linalg.cholesky(g)
    del g
    return torch.cholesky_inverse(factor).numpy()


def ease_counts(
    p_inv: np.ndarray,
    items: np.ndarray,
    pool: np.ndarray,
    query: np.ndarray,
    pos: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(higher, ties, candidates) per pair by B[q, c] = -P[q, c] / P[c, c] over the pool (ids,
    unique); `items` are P's ids, sorted. Pool pins that are not items, and every candidate of a
    query that is not an item, score 0."""
    n = len(items)
    diag = np.diagonal(p_inv).copy()

    def index(ids: np.ndarray) -> np.ndarray:
        at = np.searchsorted(items, ids)
        at = np.minimum(at, max(n - 1, 0))
        found = (items[at] == ids) if n else np.zeros(len(ids), dtype=bool)
        return np.where(found, at, -1)

    pool_at = index(pool)
    pool_cols = pool_at[pool_at >= 0]
    pool_ids = items[pool_cols]
    pool_set = set(pool.tolist())
    q_in = np.array([q in pool_set for q in query.tolist()], dtype=np.int64)
    p_in = np.array([p in pool_set for p in pos.tolist()], dtype=np.int64)
    others = len(pool) - q_in - p_in
    q_at, p_at = index(query), index(pos)
    higher = np.zeros(len(query), dtype=np.int64)
    ties = np.zeros(len(query), dtype=np.int64)
    block = max(1, _EASE_BLOCK_ELEMENTS // max(n, 1))
    for lo in range(0, len(query), block):
        sl = slice(lo, lo + block)
        qa, pa_ = q_at[sl], p_at[sl]
        if n:
            rows = -p_inv[np.maximum(qa, 0)] / diag[None, :]
            rows[qa < 0] = 0.0
            s_pos = np.where(pa_ >= 0, rows[np.arange(len(qa)), np.maximum(pa_, 0)], 0.0)
            scores = rows[:, pool_cols]
        else:
            s_pos, scores = np.zeros(len(qa)), np.zeros((len(qa), 0))
        higher[sl], ties[sl] = count_against(scores, pool_ids, query[sl], pos[sl], s_pos, others[sl])
    return higher, ties, others + 1


def ease_ranks(
    items: EaseItems,
    points: Sequence[Ease],
    pool: np.ndarray,
    pair_sets: dict[str, tuple[np.ndarray, np.ndarray]],
    timed: Callable[[str], AbstractContextManager],
) -> dict[str, list[pa.Table]]:
    """Per set of pairs (name: (query, pos)), per grid point, (method, query_pin, pos_pin, higher,
    ties, candidates) as Arrow; each point's inverse is computed once for every set, inside
    `timed(name)`."""
    out: dict[str, list[pa.Table]] = {name: [] for name in pair_sets}
    for pt in points:
        with timed(pt.name):
            log.info("%s: inverting %d x %d", pt.name, len(items.ids), len(items.ids))
            p_inv = ease_inverse(items, pt.lam) if len(items.ids) else np.zeros((0, 0))
            for name, (query, pos) in pair_sets.items():
                higher, ties, cands = ease_counts(p_inv, items.ids, pool, query, pos)
                out[name].append(
                    pa.table(
                        {
                            "method": pa.array([pt.name] * len(query), pa.string()),
                            "query_pin": pa.array(query, pa.int64()),
                            "pos_pin": pa.array(pos, pa.int64()),
                            "higher": pa.array(higher, pa.int64()),
                            "ties": pa.array(ties, pa.int64()),
                            "candidates": pa.array(cands, pa.int64()),
                        }
                    )
                )
            del p_inv
    return out
