"""jobs/goodbooks/tables.py on small hand-built frames: typed CSV columns and named bad input, held-out
memberships that leave the graph with every list in one split, pairs without leaks across splits,
the scaled log degree, genre labels, and the encoder's empty input."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from jobs.goodbooks.tables import (
    NO_GENRE,
    SPLITS,
    board_features,
    book_text,
    check_references,
    cold_books,
    cold_memberships,
    encode_batches,
    hold_out,
    labels,
    log_degree,
    memberships,
    pairs,
    spectral_board_features,
    typed,
    with_log_degree,
)
from jobs.lib.io import InputError
from schemas.tables import PAIRS

FRACTIONS = (0.5, 0.25, 0.25)
PER_BOARD, MIN_SIZE, SEED = 2, 4, 3


def rows(df, *cols) -> set[tuple]:
    return {tuple(r[c] for c in cols) for r in df.collect()}


def random_lists(seed: int = 0) -> dict[int, list[int]]:
    """60 lists of 1-12 of 40 books."""
    rng = random.Random(seed)
    return {u: rng.sample(range(1, 41), rng.randint(1, 12)) for u in range(1, 61)}


@pytest.fixture(scope="module")
def lists():
    return random_lists()


@pytest.fixture(scope="module")
def members(spark, lists):
    return spark.createDataFrame(
        [(u, b) for u, bs in lists.items() for b in bs], "board_id bigint, pin_id bigint"
    ).cache()


@pytest.fixture(scope="module")
def held(members):
    graph, heldout = hold_out(members, SEED, PER_BOARD, MIN_SIZE, FRACTIONS)
    graph, heldout = graph.cache(), heldout.cache()
    return graph, heldout, {s: df.cache() for s, df in pairs(graph, heldout, SEED).items()}


def test_typed_casts_the_ids_and_keeps_the_text(spark):
    raw = spark.createDataFrame(
        [("1", "1001", "A", "T", "9")],
        "book_id string, goodreads_book_id string, authors string, title string, x string",
    )
    out = typed(raw, "books.csv")
    assert out.columns == ["book_id", "goodreads_book_id", "title", "authors"]
    assert dict(out.dtypes)["book_id"] == "bigint"
    assert out.first().asDict() == {"book_id": 1, "goodreads_book_id": 1001, "title": "T", "authors": "A"}


def test_typed_names_a_missing_column_and_a_value_that_is_not_an_integer(spark):
    with pytest.raises(InputError, match="table 'books.csv', column 'title': missing column"):
        typed(
            spark.createDataFrame(
                [("1", "2", "A")], "book_id string, goodreads_book_id string, authors string"
            ),
            "books.csv",
        )
    bad = spark.createDataFrame([("7", "x"), ("8", None), ("9", "3")], "user_id string, book_id string")
    with pytest.raises(
        InputError, match="table 'to_read.csv', column 'book_id': 2 values are empty or not integers"
    ):
        typed(bad, "to_read.csv")


def test_check_references_names_repeated_books_and_unknown_books(spark):
    books = spark.createDataFrame([(1,), (2,)], "book_id bigint")
    check_references(books, spark.createDataFrame([(5, 1), (6, 2)], "user_id bigint, book_id bigint"))
    with pytest.raises(
        InputError, match=r"table 'books.csv', column 'book_id': ids are not unique \(e.g. 2\)"
    ):
        check_references(books.union(books.where("book_id = 2")), books.withColumn("user_id", F.lit(1)))
    with pytest.raises(
        InputError,
        match=r"table 'to_read.csv', column 'book_id': names books missing from books.csv \(e.g. 999\)",
    ):
        check_references(books, spark.createDataFrame([(5, 1), (5, 999)], "user_id bigint, book_id bigint"))


def test_memberships_are_distinct_list_book_rows(spark):
    to_read = spark.createDataFrame([(1, 10), (1, 10), (2, 10)], "user_id bigint, book_id bigint")
    assert sorted(memberships(to_read).collect()) == [(1, 10), (2, 10)]


def test_held_out_memberships_leave_the_graph_and_every_list_feeds_one_split(lists, held):
    graph, heldout, _ = held
    all_members = {(u, b) for u, bs in lists.items() for b in bs}
    kept = rows(graph, "board_id", "pin_id")
    split_of = {(r.board_id, r.pin_id): r.split for r in heldout.collect()}
    assert kept.isdisjoint(split_of) and kept | set(split_of) == all_members
    for u, bs in lists.items():
        removed = [b for b in bs if (u, b) in split_of]
        assert len(removed) == (PER_BOARD if len(bs) >= MIN_SIZE else 0), (u, bs, removed)
        assert len({split_of[(u, b)] for b in removed}) <= 1
    assert set(split_of.values()) == set(SPLITS)
    assert {r.weight for r in graph.collect()} == {1.0}


def test_every_pair_is_a_held_out_book_and_a_book_left_in_its_list(held):
    graph, heldout, by_split = held
    kept = defaultdict(set)
    for board, pin in rows(graph, "board_id", "pin_id"):
        kept[board].add(pin)
    lists_of = defaultdict(set)
    for r in heldout.collect():
        lists_of[(r.split, r.pin_id)].add(r.board_id)
    for split in SPLITS:
        split_pairs = rows(by_split[split], "query_pin", "pos_pin")
        assert split_pairs, split
        for query, pos in split_pairs:
            assert any(query in kept[board] for board in lists_of[(split, pos)]), (split, query, pos)


def test_no_test_pair_reaches_validation_or_training_and_no_validation_pair_training(held):
    by_split = held[2]
    test, validation, train = (
        {frozenset(p) for p in rows(by_split[s], "query_pin", "pos_pin")}
        for s in ("test", "validation", "train")
    )
    assert test.isdisjoint(validation) and test.isdisjoint(train) and validation.isdisjoint(train)


def test_the_pairs_have_the_pairs_schema_and_never_pair_a_book_with_itself(held):
    for df in held[2].values():
        assert [(f.name, f.dataType) for f in df.schema.fields] == [
            (f.name, f.dataType) for f in PAIRS.fields
        ]
        assert df.where(F.col("query_pin") == F.col("pos_pin")).count() == 0


def test_the_same_seed_gives_the_same_split_whatever_the_partitioning(members):
    def split(df, seed):
        graph, heldout = hold_out(df, seed, PER_BOARD, MIN_SIZE, FRACTIONS)
        by_split = pairs(graph, heldout, seed)
        return rows(heldout, "board_id", "pin_id", "split"), {
            s: rows(p, "query_pin", "pos_pin") for s, p in by_split.items()
        }

    first = split(members, SEED)
    assert split(members.repartition(7, "pin_id"), SEED) == first
    assert split(members, SEED + 1)[0] != first[0]


def test_log_degree_is_log1p_of_the_memberships_over_the_largest(spark):
    pins = spark.createDataFrame([(1,), (2,), (3,)], "pin_id bigint")
    graph = spark.createDataFrame([(1, 10), (1, 11), (1, 12), (2, 10)], "pin_id bigint, board_id bigint")
    got = dict(rows(log_degree(pins, graph), "pin_id", "log_degree"))
    assert got[1] == pytest.approx(1.0)
    assert got[2] == pytest.approx(math.log1p(1) / math.log1p(3), abs=1e-6)
    assert got[3] == 0.0
    content = spark.createDataFrame(
        [(1, [0.5, 0.25]), (2, [1.0, 0.0]), (4, [0.0, 1.0])], "pin_id bigint, features array<float>"
    )
    degree = log_degree(pins, graph)
    with_degree = {r.pin_id: r.features for r in with_log_degree(content, degree).collect()}
    assert with_degree[1] == pytest.approx([0.5, 0.25, 1.0]) and set(with_degree) == {1, 2}
    text_only = {r.pin_id: r.features for r in with_log_degree(content, degree, include=False).collect()}
    assert text_only == {1: [0.5, 0.25], 2: [1.0, 0.0]}


def test_labels_are_the_most_used_genre_shelf(spark):
    books = spark.createDataFrame(
        [(b, 1000 + b) for b in range(1, 7)], "book_id bigint, goodreads_book_id bigint"
    )
    tags = spark.createDataFrame(
        [(0, "to-read"), (1, "fantasy"), (2, "ya"), (3, "young-adult"), (4, "horror"), (5, "owned")],
        "tag_id bigint, tag_name string",
    )
    counts = {
        1001: [(0, 900), (1, 50), (2, 30), (3, 30)],  # young-adult 60 beats fantasy 50
        1002: [(1, 40), (4, 40)],  # a tie goes to the genre listed first: fantasy
        1003: [(4, -100), (1, 3)],  # a negative count is dropped
        1004: [(4, 5), (4, 7), (1, 6)],  # a (book, tag) listed twice counts once, at 7
        1005: [(0, 500), (5, 80)],  # only bookkeeping shelves: other
    }
    book_tags = spark.createDataFrame(
        [(book, tag, count) for book, shelves in counts.items() for tag, count in shelves],
        "goodreads_book_id bigint, tag_id bigint, count bigint",
    )
    got = dict(rows(labels(books, book_tags, tags), "pin_id", "label"))
    assert [got[b] for b in range(1, 7)] == [
        "young-adult",
        "fantasy",
        "fantasy",
        "horror",
        NO_GENRE,
        NO_GENRE,
    ]


def test_book_text_is_title_by_authors(spark):
    books = spark.createDataFrame(
        [(1, "Dune", "Frank Herbert"), (2, None, "Anon")], "book_id bigint, title string, authors string"
    )
    assert rows(book_text(books), "pin_id", "text") == {(1, "Dune by Frank Herbert"), (2, " by Anon")}


def test_the_encoder_is_not_loaded_for_an_empty_partition_or_batch(monkeypatch):
    def no_encoder(device):
        raise AssertionError("loaded the encoder")

    monkeypatch.setattr("jobs.goodbooks.tables.load_encoder", no_encoder)
    empty = pa.RecordBatch.from_pydict(
        {
            "pin_id": pa.array([], pa.int64()),
            "text": pa.array([], pa.string()),
            "log_degree": pa.array([], pa.float32()),
        }
    )
    assert list(encode_batches(iter([]), "cpu", 8)) == []
    assert list(encode_batches(iter([empty]), "cpu", 8)) == []


def test_new_books_and_their_revealed_order_are_seeded_whatever_the_partitioning(members):
    def chosen(df, seed):
        cold = cold_memberships(df, cold_books(df, seed, 0.3), seed, FRACTIONS)
        return rows(cold, "board_id", "pin_id", "split", "reveal_rank")

    first = chosen(members, SEED)
    assert first and chosen(members.repartition(5, "board_id"), SEED) == first
    assert chosen(members, SEED + 1) != first
    # reveal_rank numbers each book's training-split memberships 1..n, and only those.
    ranks = defaultdict(list)
    for _, pin, split, rank in first:
        assert (rank is None) == (split != "train")
        if rank is not None:
            ranks[pin].append(rank)
    assert all(sorted(r) == list(range(1, len(r) + 1)) for r in ranks.values())


def naive_board_vectors(lists: dict[int, list[int]], dim: int) -> tuple[list[int], np.ndarray]:
    """The lists' rows of a dense SVD's U S for A[b, p] = 1 / sqrt(deg b deg p), unit length."""
    boards = sorted(lists)
    books = sorted({p for ps in lists.values() for p in ps})
    degree = {p: sum(p in ps for ps in lists.values()) for p in books}
    a = np.zeros((len(boards), len(books)))
    for i, b in enumerate(boards):
        for p in lists[b]:
            a[i, books.index(p)] = 1 / math.sqrt(len(lists[b]) * degree[p])
    u, s, _ = np.linalg.svd(a)
    x = u[:, :dim] * s[:dim]
    return boards, x / np.linalg.norm(x, axis=1, keepdims=True)


def test_spectral_board_features_match_a_dense_svd_and_repeat_for_the_seed(lists):
    b, p = zip(*[(u, bk) for u, bs in lists.items() for bk in bs], strict=True)
    boards, got = spectral_board_features(np.array(b), np.array(p), 6, seed=1)
    want_boards, want = naive_board_vectors(lists, 6)
    assert boards.tolist() == want_boards and got.dtype == np.float32 and got.shape == (60, 6)
    # A singular vector's sign is arbitrary: compare the lists' cosines, which do not depend on it.
    np.testing.assert_allclose(got @ got.T, want @ want.T, atol=1e-4)
    _, again = spectral_board_features(np.array(b), np.array(p), 6, seed=1)
    np.testing.assert_array_equal(got, again)
    with pytest.raises(ValueError, match="dim must be in"):
        spectral_board_features(np.array(b), np.array(p), 61, seed=1)


def test_board_features_is_a_boards_table_of_every_list(spark, members, lists):
    table = board_features(members, 4, seed=0)
    assert table.columns == ["board_id", "features"]
    got = {r["board_id"]: r["features"] for r in table.collect()}
    assert sorted(got) == sorted(lists)
    assert all(len(v) == 4 and abs(np.linalg.norm(v) - 1) < 1e-5 for v in got.values())
