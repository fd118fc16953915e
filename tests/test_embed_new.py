"""Ad-hoc embedding of new pins against a full run: the same numbers as a full rerun for pins whose
boards did not change, a MERGE that inserts and updates without touching other rows, and refusal
of a base run made with another checkpoint; with --related, the embedded pins' related lists from
the base run's index, merged into its related_pins, and refusal of an index of another run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import embed, embed_new, neighborhoods, related
from jobs.lib.cli import CommonArgs
from jobs.lib.inference import FAULT_ENV
from jobs.lib.io import last_commit, merge_delta, read_delta, write_delta
from jobs.lib.related import RELATED_DDL, replacement_rows
from pinsage_model.checkpoint import read_checkpoint
from tests.graphs import embed_argv, small_graph, vector_type, write_checkpoint, write_graph, write_parquet
from tests.test_evaluate import snapshot as snapshot_files
from tests.test_recovery import ROOT, SAME_AS_FIXTURE

WALK = [
    "--walks-per-node",
    "12",
    "--walk-length",
    "4",
    "--top-t",
    "6",
    "--walks-per-batch",
    "12",
    "--seed",
    "4",
]
NEW_BOARD = 200  # only the new edges name it: no stored representation in the base run
NEW_EDGES = [(30, 100), (30, 101), (31, 102), (31, NEW_BOARD), (32, 100), (32, 103), (32, 104)]


def pins_table(path: str, pins: dict[int, list[float]]) -> str:
    return write_parquet(
        path,
        {
            "pin_id": pa.array(list(pins), pa.int64()),
            "features": pa.array(list(pins.values()), vector_type()),
        },
    )


def edges_table(path: str, edges: list[tuple[int, int]]) -> str:
    return write_parquet(
        path,
        {
            "pin_id": pa.array([p for p, _ in edges], pa.int64()),
            "board_id": pa.array([b for _, b in edges], pa.int64()),
        },
    )


def embeddings(spark, path: str) -> dict[int, np.ndarray]:
    return {r.pin_id: np.array(r.embedding) for r in spark.read.format("delta").load(path).collect()}


def full_run(spark, root: str, pins: str, edges: str, ckpt: str, board_neighbors: str | None = None) -> str:
    """Neighborhoods then embed; `board_neighbors` replaces the walked board neighborhoods."""
    neighborhoods.run(spark, neighborhoods.parse_args(["--edges", edges, "--out", f"{root}/nbrs", *WALK]))
    paths = {
        "pins": pins,
        "edges": edges,
        "pin_neighbors": f"{root}/nbrs/pin_neighbors",
        "board_neighbors": board_neighbors or f"{root}/nbrs/board_neighbors",
    }
    embed.run(spark, embed.parse_args(embed_argv(paths, ckpt, f"{root}/out")), read_checkpoint(ckpt))
    return f"{root}/out"


@pytest.fixture(scope="module")
def base(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    graph = small_graph(seed=21)
    paths = write_graph(graph, str(root / "in"), with_boards=False)
    ckpt = write_checkpoint(str(root / "m.pt"), seed=2)
    out = full_run(spark, str(root / "base"), paths["pins"], paths["edges"], ckpt)
    return graph, paths, ckpt, out, str(root)


def test_new_pins_equal_a_full_rerun_where_their_boards_did_not_change(spark, base, tmp_path):
    graph, _, ckpt, out, root = base
    rng = np.random.default_rng(5)
    new = {p: rng.normal(size=6).round(4).tolist() for p in (30, 31, 32)}
    before = embeddings(spark, f"{out}/pin_embeddings")
    args = [
        "--new-pins",
        pins_table(str(tmp_path / "new_pins"), new),
        "--new-edges",
        edges_table(str(tmp_path / "new_edges"), NEW_EDGES),
        "--base",
        out,
        "--checkpoint",
        ckpt,
        "--walks-per-batch",
        "12",
    ]
    report = embed_new.run(spark, embed_new.parse_args(args), read_checkpoint(ckpt))
    merged = embeddings(spark, f"{out}/pin_embeddings")

    # Full rerun over the grown graph, with the boards' neighborhoods of the base run (their inputs).
    all_pins = pins_table(str(tmp_path / "all_pins"), {**graph.pins, **new})
    all_edges = edges_table(str(tmp_path / "all_edges"), graph.edges + NEW_EDGES)
    full = full_run(
        spark, str(tmp_path / "full"), all_pins, all_edges, ckpt, f"{root}/base/nbrs/board_neighbors"
    )
    rerun = embeddings(spark, f"{full}/pin_embeddings")
    for pin in (30, 32):
        np.testing.assert_allclose(merged[pin], rerun[pin], rtol=0, atol=1e-6)
    assert report.counts["layer 2: neighbor rows naming boards without a stored h_b (dropped)"] >= 1
    assert report.counts["pins with memberships (walked)"] == 3
    assert {p: before[p].tolist() for p in before} == {p: merged[p].tolist() for p in before}
    assert (report.output["inserted"], report.output["updated"]) == (3, 0)
    commit = last_commit(spark, f"{out}/pin_embeddings")
    assert commit["operation"] == "MERGE"
    assert commit["metadata"]["operation"] == "embed_new"
    assert (
        commit["metadata"]["base_run_id"]
        == last_commit(spark, f"{out}/board_embeddings")["metadata"]["run_id"]
    )

    # The same pins again with the board projections shuffled instead of broadcast: updated in
    # place, to the same numbers.
    shuffled = embed_new.run(
        spark, embed_new.parse_args([*args, "--broadcast-projections-mb", "0"]), read_checkpoint(ckpt)
    )
    again = embeddings(spark, f"{out}/pin_embeddings")
    assert (shuffled.output["inserted"], shuffled.output["updated"]) == (0, 3)
    assert (
        shuffled.counts["layer 2: stored boards projected"]
        == report.counts["layer 2: stored boards projected"]
    )
    for pin in new:
        np.testing.assert_allclose(again[pin], merged[pin], rtol=0, atol=1e-7)


def one_new_pin_args(folder: str, base: str, ckpt: str) -> list[str]:
    """embed_new's command line for one new pin, 40, with one membership."""
    return [
        "--new-pins",
        pins_table(f"{folder}/p", {40: [0.5] * 6}),
        "--new-edges",
        edges_table(f"{folder}/e", [(40, 100)]),
        "--base",
        base,
        "--checkpoint",
        ckpt,
    ]


def test_a_base_run_of_another_checkpoint_is_refused_and_left_unchanged(spark, base, tmp_path, capsys):
    _, _, _, out, _ = base
    other = write_checkpoint(str(tmp_path / "other.pt"), seed=99)
    version = last_commit(spark, f"{out}/pin_embeddings")["version"]
    args = one_new_pin_args(str(tmp_path), out, other)
    assert embed_new.main(args) == 2
    err = capsys.readouterr().err
    assert "table 'pin_embeddings'" in err and "checkpoint sha256" in err
    assert last_commit(spark, f"{out}/pin_embeddings")["version"] == version


def test_a_recorded_input_that_is_gone_is_reported_missing_with_the_path_tried(spark, base, tmp_path, capsys):
    _, _, ckpt, out, root = base
    recorded = last_commit(spark, f"{out}/pin_embeddings")["metadata"]["inputs"]["pin_neighbors"]["path"]
    assert recorded == f"file:{root}/base/nbrs/pin_neighbors"  # qualified: valid from any directory
    args = one_new_pin_args(str(tmp_path), out, ckpt)
    os.rename(f"{root}/base/nbrs", f"{root}/moved")
    try:
        assert embed_new.main(args) == 2
    finally:
        os.rename(f"{root}/moved", f"{root}/base/nbrs")
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: table 'pin_neighbors': missing: nothing at {recorded}, the path the base run recorded in "
        f"{out}/pin_embeddings"
    )


# ---- --related: lists from the base run's index ------------------------------------------------

RELATED_K = 4


@pytest.fixture(scope="module")
def related_root(spark, base):
    """The base run's related pins by ann, written into its root as the nightly chain does; two
    lists, both probed, so a lookup scores every pin of the index."""
    _, _, _, out, _ = base
    args = related.RelatedArgs(
        f"{out}/pin_embeddings",
        out,
        top_k=RELATED_K,
        method="ann",
        lists=2,
        probes=2,
        sample=10,
        common=CommonArgs(),
    )
    return related.run(spark, args).run_id


def brute_force(ids: np.ndarray, vectors: np.ndarray, query_id: int, query: np.ndarray, k: int):
    """[(related_pin_id, score)]: every pin of the index but the query itself, by stored cosine
    (rounded to 2**-24) descending, then id."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    q = query / max(np.linalg.norm(query), 1e-12)
    scored = sorted(
        (-round(float(u @ q) * 2**24), int(i)) for i, u in zip(ids, unit, strict=True) if i != query_id
    )
    return [(i, -step / 2**24) for step, i in scored[:k]]


def related_rows(spark, path: str) -> list[tuple]:
    return sorted(tuple(r) for r in read_delta(spark, path).collect())


def test_a_listed_pin_is_updated_in_place_and_embedded_pins_get_related_lists_from_the_base_index(
    spark, base, related_root, tmp_path
):
    graph, _, ckpt, out, _ = base
    before = related_rows(spark, f"{out}/related_pins")
    # 60 is new; 3 is in the index (with its old vector) and is re-embedded with new features.
    new = {60: [0.3, -0.2, 0.5, 0.1, -0.4, 0.2], 3: [x * -1.0 for x in graph.pins[3]]}
    args = [
        "--new-pins",
        pins_table(str(tmp_path / "p"), new),
        "--new-edges",
        edges_table(str(tmp_path / "e"), [(60, 100), (60, 101), (3, 102)]),
        "--base",
        out,
        "--checkpoint",
        ckpt,
        "--related",
        out,
    ]
    pins_before = embeddings(spark, f"{out}/pin_embeddings")
    report = embed_new.run(spark, embed_new.parse_args(args), read_checkpoint(ckpt))

    # pin_embeddings: the existing pin updated in place, the new one inserted, no other row changed.
    stored = embeddings(spark, f"{out}/pin_embeddings")
    assert (report.output["inserted"], report.output["updated"]) == (1, 1)
    assert not np.allclose(stored[3], pins_before[3])
    assert stored.keys() == pins_before.keys() | {60}
    assert all(np.array_equal(stored[p], pins_before[p]) for p in pins_before if p != 3)

    lists = pq.read_table(f"{out}/related_index/lists")
    ids = lists.column("pin_id").to_numpy()
    vectors = np.array(lists.column("embedding").to_pylist(), dtype=np.float64)
    after = related_rows(spark, f"{out}/related_pins")
    for pin in new:
        got = [(r[2], r[3]) for r in after if r[0] == pin]
        assert [r[1] for r in after if r[0] == pin] == list(range(1, RELATED_K + 1))
        want = brute_force(ids, vectors, pin, stored[pin].astype(np.float64), RELATED_K)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-7)
    assert [r for r in after if r[0] not in new] == [r for r in before if r[0] not in new]
    assert [r for r in before if r[0] == 3] != [r for r in after if r[0] == 3]  # replaced
    r = report.related
    assert (r["inserted"], r["updated"], r["deleted"]) == (RELATED_K, RELATED_K, 0)
    commit = last_commit(spark, f"{out}/related_pins")
    assert commit["operation"] == "MERGE"
    meta = commit["metadata"]
    assert (meta["run_id"], meta["related_run_id"], meta["operation"]) == (
        report.run_id,
        related_root,
        "embed_new",
    )
    assert meta["pin_embeddings"]["version"] == report.output["version"]


def test_a_run_killed_in_or_between_its_merges_leaves_consistent_tables_and_a_rerun_the_undisturbed_result(
    spark, base, related_root, tmp_path
):
    from deltalake import DeltaTable

    _, _, ckpt, out, _ = base
    undisturbed, killed_root = str(tmp_path / "undisturbed"), str(tmp_path / "killed")
    for root in (undisturbed, killed_root):
        shutil.copytree(out, root)
    new = {
        "--new-pins": pins_table(str(tmp_path / "p"), {70: [0.1, 0.4, -0.3, 0.2, 0.0, 0.5], 71: [-0.5] * 6}),
        "--new-edges": edges_table(str(tmp_path / "e"), [(70, 100), (70, 102), (71, 101)]),
        "--checkpoint": ckpt,
        "--lease-timeout": "1",
    }
    argv = [item for pair in new.items() for item in pair]
    assert embed_new.main([*argv, "--base", undisturbed, "--related", undisturbed]) == 0

    def sorted_table(name: str):  # delta-rs, an independent reader
        table = DeltaTable(f"{killed_root}/{name}")
        keys = [("pin_id", "ascending")] + ([("rank", "ascending")] if name == "related_pins" else [])
        return table.version(), table.to_pyarrow_table().sort_by(keys)

    before = {name: sorted_table(name) for name in ("pin_embeddings", "related_pins")}
    cmd = [sys.executable, "jobs/embed_new.py", *argv, "--base", killed_root, "--related", killed_root]
    cmd += ["--master", "local[2]", *SAME_AS_FIXTURE]

    def killed_at(point: str) -> None:
        env = {**os.environ, FAULT_ENV: f"{point}:kill"}
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, start_new_session=True
        )
        assert done.returncode == -9, done.stderr[-3000:]

    # Killed in the output head, which the first MERGE's source runs: both tables as they were.
    killed_at("head:0")
    assert {name: sorted_table(name) for name in before} == before
    # Killed between the two merges: the embeddings merged, related_pins as it was.
    time.sleep(2)  # the killed run's lease (timeout 1 s) goes stale
    killed_at("merge:1")
    pins_version, pins_after = sorted_table("pin_embeddings")
    assert pins_version == before["pin_embeddings"][0] + 1
    assert {70, 71} <= set(pins_after.column("pin_id").to_pylist())
    assert sorted_table("related_pins") == before["related_pins"]

    time.sleep(2)  # the rerun takes the killed run's lease over
    assert embed_new.main([*argv, "--base", killed_root, "--related", killed_root]) == 0
    for name in ("pin_embeddings", "related_pins"):
        rerun, want = (related_rows(spark, f"{root}/{name}") for root in (killed_root, undisturbed))
        assert rerun == want, name  # bit-identical
    assert any(r[0] == 70 for r in related_rows(spark, f"{killed_root}/related_pins"))


def test_a_replaced_list_drops_the_old_rows_its_new_list_has_no_rank_for(spark, tmp_path):
    path = str(tmp_path / "related_pins")
    old = [(1, 1, 7, 0.9), (1, 2, 8, 0.8), (1, 3, 9, 0.7), (2, 1, 1, 0.5), (2, 2, 9, 0.4), (6, 1, 2, 0.1)]
    write_delta(spark.createDataFrame(old, RELATED_DDL), path)
    # Pin 1's new list is shorter, 5 is new, 6 was looked up and found nothing; 2 is not listed.
    new = spark.createDataFrame([(1, 1, 9, 0.95), (1, 2, 2, 0.6), (5, 1, 1, 0.3)], RELATED_DDL)
    pins = spark.createDataFrame([(1,), (5,), (6,)], "pin_id bigint")
    source = replacement_rows(new, pins, read_delta(spark, path))
    commit = merge_delta(source, path, ("pin_id", "rank"), {"run_id": "r"}, drop="drop")
    assert related_rows(spark, path) == [
        (1, 1, 9, pytest.approx(0.95)),
        (1, 2, 2, pytest.approx(0.6)),
        (2, 1, 1, 0.5),
        (2, 2, 9, pytest.approx(0.4)),
        (5, 1, 1, pytest.approx(0.3)),
    ]
    assert commit["operation"] == "MERGE" and commit["metadata"] == {"run_id": "r"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("missing", "table 'related_index': {R}/related_index/index.json is missing"),
        (
            "run_id",
            "table 'related_pins': holds the lists of run {run}, but {R}/related_index is the index of",
        ),
        ("inputs", "table 'related_index': was built from pin_embeddings of run "),
    ],
)
def test_an_index_missing_or_of_another_run_exits_2_and_nothing_is_written(
    spark, base, related_root, tmp_path, capsys, edit, message
):
    _, _, ckpt, out, _ = base
    root = str(tmp_path / "R")
    for name in ("related_index", "related_pins"):
        shutil.copytree(f"{out}/{name}", f"{root}/{name}")
    meta_path = f"{root}/related_index/index.json"
    if edit == "missing":
        os.remove(meta_path)
    else:
        with open(meta_path) as f:
            meta = json.load(f)
        if edit == "run_id":
            meta["run_id"] = "another-run"
        else:  # a Delta table of another run: the neighborhoods the base run read
            neighbors = f"file:{os.path.dirname(out)}/nbrs/pin_neighbors"
            meta["inputs"]["pin_embeddings"] = {"path": neighbors, "format": "delta", "version": 0}
        with open(meta_path, "w") as f:
            json.dump(meta, f)
    version = last_commit(spark, f"{out}/pin_embeddings")["version"]
    files = snapshot_files(root)
    assert embed_new.main([*one_new_pin_args(str(tmp_path), out, ckpt), "--related", root]) == 2
    err = capsys.readouterr().err
    assert message.format(R=root, run=related_root) in err
    assert last_commit(spark, f"{out}/pin_embeddings")["version"] == version
    assert snapshot_files(root) == files


def test_a_new_pin_without_memberships_is_embedded_from_its_features_alone(spark, base, tmp_path):
    """A new book that arrives with no membership: no neighbors, so its layers pool nothing (the
    zero vector), exactly as the trainer's neighbor dropout presents a pin."""
    import torch

    from pinsage_model.checkpoint import build_model
    from pinsage_model.training.graph import build_graph

    _, _, ckpt, out, _ = base
    features = [0.25, -0.5, 1.0, 0.0, 0.75, -1.0]
    args = [
        "--new-pins",
        pins_table(str(tmp_path / "p"), {41: features}),
        "--new-edges",
        edges_table(str(tmp_path / "e"), []),
        "--base",
        out,
        "--checkpoint",
        ckpt,
    ]
    report = embed_new.run(spark, embed_new.parse_args(args), read_checkpoint(ckpt))
    assert (report.output["inserted"], report.counts["neighbor rows"]) == (1, 0)
    assert report.counts["pins with memberships (walked)"] == 0  # no walk graph built
    got = embeddings(spark, f"{out}/pin_embeddings")[41]
    no_rows = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    alone, _ = build_graph(
        np.array([41]),
        np.array([features], np.float32),
        np.array([100]),
        np.zeros((1, 0), np.float32),
        no_rows,
        no_rows,
        no_rows,
    )
    model = build_model(read_checkpoint(ckpt))
    with torch.no_grad():
        expected = model(*alone.whole_graph())[0][0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
