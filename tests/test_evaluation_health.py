"""jobs/lib/evaluation/health.py: random-pair cosine statistics and histogram against numpy, the PCA
map's axes against an eigendecomposition, and the plots as PNG files."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.lib.evaluation.health import (
    labelled_sample,
    pair_cosines,
    pca_2d,
    plot_histograms,
    plot_map,
    random_pairs,
    similarity_histogram,
    similarity_stats,
)

PNG = b"\x89PNG\r\n\x1a\n"


def vectors_df(spark, vectors: dict):
    return spark.createDataFrame(
        [(k, list(map(float, x))) for k, x in vectors.items()], "pin_id bigint, vec array<float>"
    )


def test_random_pair_similarity_statistics_match_numpy(spark):
    rng = np.random.default_rng(5)
    vectors = {i: (rng.normal(size=4) + [1.0, 0, 0, 0]).tolist() for i in range(60)}
    vectors[60] = [0.0, 0.0, 0.0, 0.0]  # a zero vector scores 0 against everything
    df = vectors_df(spark, vectors)
    drawn = random_pairs(df.select("pin_id"), 40, seed=1)
    pairs = [(r.pin_a, r.pin_b) for r in drawn.collect()]
    assert 30 <= len(pairs) <= 40 and all(a != b for a, b in pairs)
    assert len({a for a, _ in pairs}) == len(pairs) and len({b for _, b in pairs}) == len(pairs)
    assert [
        (r.pin_a, r.pin_b) for r in random_pairs(df.select("pin_id").repartition(3), 40, 1).collect()
    ] == pairs
    cosines = pair_cosines(drawn, df).cache()
    v = {k: np.float64(np.float32(x)) for k, x in vectors.items()}

    def cos(a: int, b: int) -> float:
        return v[a] @ v[b] / (max(np.linalg.norm(v[a]), 1e-12) * max(np.linalg.norm(v[b]), 1e-12))

    x = np.array([cos(a, b) for a, b in pairs])
    got = {(r.pin_a, r.pin_b): r.cosine for r in cosines.collect()}
    assert np.allclose([got[p] for p in pairs], x, atol=1e-12)
    zero = pair_cosines(drawn.sparkSession.createDataFrame([(60, 1)], "pin_a bigint, pin_b bigint"), df)
    assert zero.collect()[0].cosine == 0.0
    stats = similarity_stats(cosines).collect()[0]
    d = x - x.mean()
    assert stats["pairs"] == len(x)
    assert stats["mean"] == pytest.approx(x.mean()) and stats["std"] == pytest.approx(np.sqrt(np.mean(d**2)))
    assert stats["kurtosis"] == pytest.approx(np.mean(d**4) / np.mean(d**2) ** 2 - 3.0, rel=1e-9)
    assert (stats["min"], stats["max"]) == pytest.approx((x.min(), x.max()))
    hist = {r.bin: r["count"] for r in similarity_histogram(cosines, 10).collect()}
    assert [hist.get(i, 0) for i in range(10)] == np.histogram(x, bins=10, range=(-1, 1))[0].tolist()


def test_a_cosine_of_one_falls_in_the_last_histogram_bin(spark):
    cosines = spark.createDataFrame([(1.0,), (-1.0,), (0.0,)], "cosine double")
    assert {r.bin: r["count"] for r in similarity_histogram(cosines, 4).collect()} == {0: 1, 2: 1, 3: 1}


def test_the_labelled_sample_is_seeded_and_keeps_labelled_pins_only(spark):
    vectors = vectors_df(spark, {i: [float(i), 1.0] for i in range(20)})
    labels = spark.createDataFrame([(i, f"l{i % 3}") for i in range(0, 20, 2)], "pin_id bigint, label string")
    sample = [(r.pin_id, r.label) for r in labelled_sample(vectors, labels, 4, seed=2).collect()]
    assert len(sample) == 4 and all(p % 2 == 0 and label == f"l{p % 3}" for p, label in sample)
    assert [
        (r.pin_id, r.label) for r in labelled_sample(vectors.repartition(3), labels, 4, 2).collect()
    ] == sample
    assert len(labelled_sample(vectors, labels, 100, seed=2).collect()) == 10


def test_pca_recovers_the_axes_of_largest_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * [5.0, 2.0, 0.3, 0.2, 0.1] + [10.0, 0, 0, 0, 0]
    coords, ratio = pca_2d(x)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(xn.T, bias=True)))[::-1]
    assert np.allclose(coords.var(axis=0), eigenvalues[:2])
    assert np.allclose(ratio, eigenvalues[:2] / eigenvalues.sum())


def test_the_plots_are_png_files(tmp_path):
    counts = np.arange(20, dtype=np.int64)
    stats = {"pairs": 190, "mean": 0.1, "std": 0.2, "kurtosis": None}
    plot_histograms({"embedding": (counts, stats), "content": (counts[::-1], stats)}, str(tmp_path / "h.png"))
    rng = np.random.default_rng(1)
    labels = [f"label {i % 12}" for i in range(60)]  # more labels than colours: the rest are grey
    plot_map(rng.normal(size=(60, 2)), labels, np.array([0.5, 0.2]), str(tmp_path / "m.png"))
    for name in ("h.png", "m.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
