"""The embedding space's health (the paper's Figure 4): cosine similarity of seeded random pairs
(statistics and histogram) and a 2-D PCA map of labelled pins, with their matplotlib plots. The
Spark transforms keep the pairs on the executors; the numpy and plotting helpers run on the driver
over bounded samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.lib.seeded import MAP_SAMPLE, PAIR_LEFT, PAIR_RIGHT, seeded_hash
from pinsage_model.similarity import NORM_EPS, normalise

# Every plot's resolution; the Agg canvas draws PNGs without a display.
_DPI = 100
_BAR_COLOUR = "#4c72b0"
_OTHER_COLOUR = "#bbbbbb"
# tab10 without its grey, which marks the labels beyond the most frequent ones.
_COLOURS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9"]


def random_pairs(ids: DataFrame, count: int, seed: int) -> DataFrame:
    """(pin_a, pin_b): up to `count` seeded random pairs of distinct pins. Two independent seeded
    orders of the ids each give their first `count` pins; the i-th of one is paired with the i-th of
    the other, and the few pairs of a pin with itself are dropped."""

    def first(purpose: int, name: str) -> DataFrame:
        h = seeded_hash(seed, purpose, "pin_id")
        top = ids.select(F.col("pin_id").alias(name), h.alias("h")).orderBy("h", name).limit(count)
        return top.select(name, F.row_number().over(Window.orderBy("h", name)).alias("i"))

    joined = first(PAIR_LEFT, "pin_a").join(first(PAIR_RIGHT, "pin_b"), "i")
    return joined.where(F.col("pin_a") != F.col("pin_b")).select("pin_a", "pin_b")


def _dot(a: Column, b: Column) -> Column:
    zero = F.lit(0.0).cast("double")
    return F.aggregate(F.zip_with(a, b, lambda x, y: x.cast("double") * y), zero, lambda s, v: s + v)


def cosine(a: Column, b: Column) -> Column:
    """The cosine similarity of two ARRAY<FLOAT> columns in float64, each norm floored at NORM_EPS
    as in the ranking (a zero vector scores 0 against everything)."""

    def norm(v: Column) -> Column:
        return F.greatest(F.sqrt(_dot(v, v)), F.lit(NORM_EPS))

    return _dot(a, b) / (norm(a) * norm(b))


def pair_cosines(pairs: DataFrame, vectors: DataFrame) -> DataFrame:
    """(pin_a, pin_b, cosine) of the (pin_a, pin_b) pairs' (pin_id, vec) vectors."""
    v = vectors.select("pin_id", "vec")
    a = v.select(F.col("pin_id").alias("pin_a"), F.col("vec").alias("va"))
    b = v.select(F.col("pin_id").alias("pin_b"), F.col("vec").alias("vb"))
    scores = cosine(F.col("va"), F.col("vb")).alias("cosine")
    return pairs.join(a, "pin_a").join(b, "pin_b").select("pin_a", "pin_b", scores)


def similarity_stats(cosines: DataFrame) -> DataFrame:
    """One row: pairs, mean, std, kurtosis (excess, population: m4 / m2^2 - 3), min, max."""
    c = F.col("cosine")
    return cosines.agg(
        F.count(c).alias("pairs"),
        F.avg(c).alias("mean"),
        F.stddev_pop(c).alias("std"),
        F.kurtosis(c).alias("kurtosis"),
        F.min(c).alias("min"),
        F.max(c).alias("max"),
    )


def similarity_histogram(cosines: DataFrame, bins: int) -> DataFrame:
    """(bin, count) over `bins` equal bins of [-1, 1]; cosine 1 falls in the last bin."""
    b = F.floor((F.col("cosine") + 1.0) / 2.0 * bins).cast("int")
    b = F.least(F.greatest(b, F.lit(0)), F.lit(bins - 1))
    return cosines.groupBy(b.alias("bin")).agg(F.count(F.lit(1)).alias("count"))


def labelled_sample(vectors: DataFrame, labels: DataFrame, size: int, seed: int) -> DataFrame:
    """(pin_id, label, vec) for up to `size` labelled pins, a seeded sample."""
    joined = vectors.select("pin_id", "vec").join(labels, "pin_id")
    return (
        joined.orderBy(seeded_hash(seed, MAP_SAMPLE, "pin_id"), "pin_id")
        .limit(size)
        .select("pin_id", "label", "vec")
    )


def pca_2d(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([n, 2] coordinates, [2] explained variance ratios) of the normalised, centred rows on their
    first two principal axes (numpy SVD)."""
    x = normalise(matrix)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    coords = np.zeros((len(x), 2))
    axes = min(2, vt.shape[0])
    coords[:, :axes] = x @ vt[:axes].T
    var = s**2
    ratio = np.zeros(2)
    ratio[:axes] = var[:axes] / var.sum() if var.sum() > 0 else 0.0
    return coords, ratio


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)  # the Agg canvas: PNG without a display or pyplot's global state
    return fig


def plot_histograms(panels: dict[str, tuple[np.ndarray, dict]], path: str) -> None:
    """One bar chart per vector table of its random-pair cosine histogram over [-1, 1] (bin counts),
    annotated with the summary statistics."""
    fig = _figure(7, 3.2 * len(panels))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
    for ax, (name, (counts, stats)) in zip(axes, panels.items(), strict=True):
        bins = len(counts)
        edges = np.linspace(-1.0, 1.0, bins + 1)
        shares = counts / max(counts.sum(), 1)
        ax.bar(edges[:-1], shares, width=2.0 / bins, align="edge", color=_BAR_COLOUR)
        ax.set_xlim(-1, 1)
        ax.set_ylabel("share of pairs")
        ax.set_title(f"{name}: cosine similarity of random pairs")
        shown = [(k, stats.get(k)) for k in ("pairs", "mean", "std", "kurtosis") if stats.get(k) is not None]
        text = "\n".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.3f}" for k, v in shown)
        text = text.replace("kurtosis", "excess kurtosis")
        ax.text(0.02, 0.95, text, transform=ax.transAxes, va="top", family="monospace", fontsize=9)
    axes[-1].set_xlabel("cosine similarity")
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_map(coords: np.ndarray, labels: Sequence[str], ratio: np.ndarray, path: str) -> None:
    """Scatter of the 2-D map; the most frequent labels get a colour each, the rest are grey."""
    top = len(_COLOURS)
    labels = np.asarray(labels, dtype=object)
    names, freq = np.unique(labels.astype(str), return_counts=True)
    shown = [str(n) for n in names[np.argsort(-freq, kind="stable")][:top]]
    fig = _figure(7, 6)
    ax = fig.subplots()
    rest = ~np.isin(labels.astype(str), shown)
    if rest.any():
        ax.scatter(coords[rest, 0], coords[rest, 1], s=6, c=_OTHER_COLOUR, label="other", alpha=0.6)
    for colour, name in zip(_COLOURS, shown, strict=False):
        mask = labels.astype(str) == name
        ax.scatter(coords[mask, 0], coords[mask, 1], s=8, c=colour, label=name, alpha=0.8)
    ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
    ax.set_title(f"PCA of {len(coords):,} normalised embeddings by label")
    ax.legend(fontsize=8, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
