"""Metrics over PAIR_RANKS rows (definitions in the package docstring) and the paired comparison of
each baseline with the embedding: the pairs only one side hits, weighed by an exact sign test."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# Scaled MRR divides the rank by this before taking its reciprocal (the paper's pool is billions of
# pins, where a rank in the first hundred is as good as the first).
SCALED_MRR_BUCKET = 100.0


def metric_names(ks: Sequence[int]) -> list[str]:
    return [f"hit@{k}" for k in ks] + ["mrr", "scaled_mrr"]


def metrics(ranks: DataFrame, ks: Sequence[int]) -> DataFrame:
    """One row per method: pairs, mean_candidates, hit@k for each k, mrr, scaled_mrr."""
    rank = F.col("rank").cast("double")
    return ranks.groupBy("method").agg(
        F.count(F.lit(1)).alias("pairs"),
        F.avg("candidates").alias("mean_candidates"),
        *(F.avg((F.col("rank") <= k).cast("double")).alias(f"hit@{k}") for k in ks),
        F.avg(1.0 / rank).alias("mrr"),
        F.avg(1.0 / F.ceil(rank / SCALED_MRR_BUCKET)).alias("scaled_mrr"),
    )


def paired_hits(ranks: DataFrame, ks: Sequence[int], reference: str = "embedding") -> DataFrame:
    """Per other method and k, the pairs only one side ranks within the top k: one row (method,
    k, reference_only, method_only). The pairs both or neither hit carry no evidence of which
    method is better; these two counts are what a paired (McNemar) test weighs."""
    ref = ranks.where(F.col("method") == reference).select("query_pin", "pos_pin", F.col("rank").alias("ref"))
    other = ranks.where(F.col("method") != reference).select("method", "query_pin", "pos_pin", "rank")
    both = other.join(ref, ["query_pin", "pos_pin"])
    per_k = [
        F.struct(
            F.lit(k).alias("k"),
            F.sum(((F.col("ref") <= k) & (F.col("rank") > k)).cast("long")).alias("reference_only"),
            F.sum(((F.col("rank") <= k) & (F.col("ref") > k)).cast("long")).alias("method_only"),
        )
        for k in ks
    ]
    return both.groupBy("method").agg(F.array(*per_k).alias("k")).select("method", F.inline("k"))


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test (McNemar's exact test) of `wins` against `losses` discordant
    pairs: 2 P(X <= min) for X ~ Binomial(wins + losses, 1/2), at most 1; 1.0 when there are none."""
    n, low = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    log_half_n = n * math.log(0.5)

    def log_binomial(i: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)

    tail = sum(math.exp(log_binomial(i) + log_half_n) for i in range(low + 1))
    return min(1.0, 2.0 * tail)


def format_p(p: float) -> str:
    """A p-value for reports: two significant digits; one that underflowed to 0 as '< 1e-300'."""
    return f"{p:.2g}" if p > 0 else "< 1e-300"
