"""jobs/lib/evaluation/metrics.py: the metric formulas and the paired comparison on hand-built ranks,
the sign test against the binomial tail, and how p-values are printed."""

from __future__ import annotations

import pytest

from jobs.lib.evaluation.metrics import format_p, metric_names, metrics, paired_hits, sign_test_p
from schemas.tables import PAIR_RANKS


def ranks_df(spark, rows):
    return spark.createDataFrame(rows, PAIR_RANKS)


def test_metrics_follow_their_definitions_on_hand_built_ranks(spark):
    ranks = ranks_df(
        spark, [("m", i, i + 100, r, r - 1, 0, 1000) for i, r in enumerate([1, 5, 100, 101, 250])]
    )
    got = metrics(ranks, (1, 10, 100)).collect()[0].asDict()
    assert set(got) == {"method", "pairs", "mean_candidates", *metric_names((1, 10, 100))}
    assert got["pairs"] == 5 and got["mean_candidates"] == 1000
    assert got["hit@1"] == pytest.approx(1 / 5) and got["hit@10"] == pytest.approx(2 / 5)
    assert got["hit@100"] == pytest.approx(3 / 5)
    assert got["mrr"] == pytest.approx((1 + 1 / 5 + 1 / 100 + 1 / 101 + 1 / 250) / 5)
    # Scaled MRR: 1 / ceil(rank / 100) = 1, 1, 1, 1/2, 1/3.
    assert got["scaled_mrr"] == pytest.approx((1 + 1 + 1 + 1 / 2 + 1 / 3) / 5)


def test_paired_hits_count_the_pairs_only_one_method_ranks_in_the_top_k(spark):
    embedding, graph = [1, 3, 12, 40, 2, 700], [5, 20, 1, 41, 2, 900]
    rows = [("embedding", i, i + 100, r, r - 1, 0, 1000) for i, r in enumerate(embedding)]
    rows += [("graph", i, i + 100, r, r - 1, 0, 1000) for i, r in enumerate(graph)]
    got = {
        (r.method, r.k): (r.reference_only, r.method_only)
        for r in paired_hits(ranks_df(spark, rows), (1, 10, 40)).collect()
    }
    # k=1: embedding hits pair 0, graph pair 2. k=10: embedding 0, 1, 4; graph 0, 2, 4.
    # k=40: embedding 0, 1, 2, 3, 4; graph 0, 1, 2, 4.
    assert got == {("graph", 1): (1, 1), ("graph", 10): (1, 1), ("graph", 40): (1, 0)}


def test_p_values_that_underflow_are_reported_as_a_bound():
    assert sign_test_p(3000, 200) == 0.0
    assert format_p(sign_test_p(3000, 200)) == "< 1e-300"
    assert format_p(0.00042) == "0.00042"


def test_sign_test_is_the_exact_two_sided_binomial_tail():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == pytest.approx(2 * 0.5**5)
    assert sign_test_p(1, 3) == pytest.approx(2 * (1 + 4) / 16)
    assert sign_test_p(4, 4) == 1.0, "capped at 1"
    # 60 against 40 of 100: the exact tail 2 * sum_{i<=40} C(100, i) / 2^100.
    assert sign_test_p(60, 40) == pytest.approx(0.056887, abs=1e-6)
