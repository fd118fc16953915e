"""Bad input exits with status 2, a message naming the table, column and problem, and leaves the
earlier contents of --out exactly as they were."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
import torch

from jobs.embed import main
from jobs.lib.validate import check_nodes
from tests.graphs import embed_argv, small_graph, write_checkpoint, write_graph, write_parquet

VEC = pa.list_(pa.float32())
ID = pa.int64()


def snapshot(root: str) -> dict[str, tuple[int, int]]:
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            found[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return found


@pytest.fixture
def setup(spark, tmp_path):
    """A valid graph and checkpoint, and an --out that already holds a published table."""
    graph = small_graph(seed=1, board_dim=3)
    paths = write_graph(graph, str(tmp_path / "in"), with_boards=True)
    ckpt = write_checkpoint(str(tmp_path / "model.pt"), board_feature_dim=3)
    out = str(tmp_path / "out")
    spark.createDataFrame([(1, [0.5])], "pin_id bigint, embedding array<float>").write.format("delta").save(
        out + "/pin_embeddings"
    )
    return paths, ckpt, out, tmp_path


def fails_cleanly(paths, ckpt, out, capsys, *expected: str) -> None:
    before = snapshot(out)
    assert main(embed_argv(paths, ckpt, out)) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert snapshot(out) == before, "the failed run changed --out"


def pins_with(tmp_path, ids, features, id_type=ID, vec_type=VEC) -> str:
    return write_parquet(
        str(tmp_path / "bad_pins"),
        {"pin_id": pa.array(ids, id_type), "features": pa.array(features, vec_type)},
    )


GOOD = [0.1] * 6


# Every validator failure is checked on hand-built rows in tests/test_validate.py; these run the
# whole job to check the contract around them: exit status 2, the message, --out untouched.
@pytest.mark.parametrize(
    ("table", "kwargs", "expected"),
    [
        (
            "pins",
            dict(ids=[1, 2], features=[GOOD, GOOD[:5]]),
            ["table 'pins', column 'features'", "(ragged)"],
        ),
        (
            "pins",
            dict(ids=[1, 2], features=[GOOD[:5], GOOD[:5]]),
            ["do not have length 6", "pin_feature_dim"],
        ),
    ],
)
def test_bad_pins(setup, capsys, table, kwargs, expected):
    paths, ckpt, out, tmp_path = setup
    paths = {**paths, table: pins_with(tmp_path, **kwargs)}
    fails_cleanly(paths, ckpt, out, capsys, *expected)


NAN = GOOD[:5] + [float("nan")]


def parts_of_three(source_rows, target_rows, neighbor_rows, hidden_dim, bound_mb, executors):
    return 3, source_rows * hidden_dim * 4 / 2**20


# The pins' feature values are checked where layer 1 first reads them (its projection), in each of
# the ways a layer moves its projections: the failed layer commits nothing and its work is removed.
@pytest.mark.parametrize(
    ("features", "moved", "expected"),
    [
        ([GOOD, NAN], "broadcast", ["table 'pins', column 'features'", "1 rows have NaN or Inf", "pin_id 2"]),
        ([None, GOOD], "broadcast", ["table 'pins', column 'features'", "1 rows have NULL features"]),
        ([GOOD, GOOD[:5] + [None]], "broadcast", ["NULL elements in features", "pin_id 2"]),
        ([NAN, NAN], "shuffled", ["table 'pins', column 'features'", "2 rows have NaN or Inf"]),
        ([GOOD, NAN], "parts", ["table 'pins', column 'features'", "NaN or Inf", "pin_id 2"]),
    ],
)
def test_bad_feature_values_stop_layer_1(setup, capsys, monkeypatch, features, moved, expected):
    import jobs.lib.chain as chain

    paths, ckpt, out, tmp_path = setup
    paths = {**paths, "pins": pins_with(tmp_path, ids=[1, 2], features=features)}
    if moved == "parts":
        monkeypatch.setattr(chain, "projection_parts", parts_of_three)
    argv = embed_argv(paths, ckpt, out) + [
        "--broadcast-projections-mb",
        "0" if moved == "shuffled" else "512",
    ]
    before = snapshot(out)
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert snapshot(out) == before, "the failed run changed --out"
    assert not os.path.exists(os.path.join(out, "_work")), "the failed layer's work was left behind"


@pytest.mark.parametrize(
    ("failure", "full_check"),
    [("an executor was lost", False), ("BadFeaturesError: 1 of 2 rows of an input batch", True)],
)
def test_only_a_failed_feature_check_runs_the_full_one(setup, monkeypatch, failure, full_check):
    """Layer 1 failing for another reason is reported as it is, without a pass over the features; a
    feature check's failure runs the full check, which re-raises the failure when it finds nothing."""
    import jobs.embed as embed

    paths, ckpt, out, _ = setup
    dims = []

    def spy(df, table, id_col, dim, note):
        dims.append((table, dim))
        return check_nodes(df, table, id_col, dim, note)

    def fail(*args, **kwargs):
        raise RuntimeError(failure)

    monkeypatch.setattr(embed, "check_nodes", spy)
    monkeypatch.setattr(embed, "run_layer", fail)
    before = snapshot(out)
    with pytest.raises(RuntimeError) as raised:
        main(embed_argv(paths, ckpt, out))
    assert str(raised.value) == failure
    assert (("pins", 6) in dims) == full_check, dims
    assert ("pins", None) in dims, "the ids are checked before any layer"
    assert snapshot(out) == before


def test_missing_column(setup, capsys):
    paths, ckpt, out, tmp_path = setup
    paths = {**paths, "pins": write_parquet(str(tmp_path / "p"), {"pin_id": pa.array([1], pa.int64())})}
    fails_cleanly(paths, ckpt, out, capsys, "table 'pins', column 'features': missing column (found: pin_id)")


def test_missing_path(setup, capsys):
    paths, ckpt, out, tmp_path = setup
    fails_cleanly(
        {**paths, "edges": str(tmp_path / "nowhere")}, ckpt, out, capsys, "table 'edges'", "does not exist"
    )


def test_bad_neighbor_weights(setup, capsys):
    weight = -1.0
    paths, ckpt, out, tmp_path = setup
    bad = write_parquet(
        str(tmp_path / "bn"),
        {
            "board_id": pa.array([100, 101], pa.int64()),
            "pin_id": pa.array([1, 2], pa.int64()),
            "weight": pa.array([1.0, weight], pa.float32()),
        },
    )
    fails_cleanly(
        {**paths, "board_neighbors": bad},
        ckpt,
        out,
        capsys,
        "table 'board_neighbors', column 'weight'",
        "non-positive weight",
        "(101, 2)",
    )


def test_board_features_of_the_wrong_width(setup, capsys):
    paths, _, out, tmp_path = setup
    ckpt = write_checkpoint(str(tmp_path / "m4.pt"), board_feature_dim=4)
    fails_cleanly(paths, ckpt, out, capsys, "table 'boards', column 'features'", "board_feature_dim is 4")


def test_board_features_expected_but_no_boards_table(setup, capsys):
    paths, ckpt, out, _ = setup
    paths = {k: v for k, v in paths.items() if k != "boards"}
    fails_cleanly(paths, ckpt, out, capsys, "table 'boards'", "no --boards table was given")


def test_checkpoint_of_another_format_version(setup, capsys):
    paths, ckpt, out, tmp_path = setup
    raw = torch.load(ckpt, weights_only=True)
    raw["format_version"] = 2
    torch.save(raw, tmp_path / "v2.pt")
    fails_cleanly(paths, str(tmp_path / "v2.pt"), out, capsys, "format_version must be 1, got 2")


def test_checkpoint_shapes_that_disagree_with_config(setup, capsys):
    paths, ckpt, out, tmp_path = setup
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"]["convs.1.Q.weight"] = torch.zeros(5, 7)
    torch.save(raw, tmp_path / "bad.pt")
    fails_cleanly(
        paths,
        str(tmp_path / "bad.pt"),
        out,
        capsys,
        "state_dict['convs.1.Q.weight'] has shape [5, 7]",
        "[5, 4]",
    )


def test_checkpoint_dims_that_disagree_with_the_pins_table(setup, capsys):
    paths, _, out, tmp_path = setup
    ckpt = write_checkpoint(str(tmp_path / "m8.pt"), pin_feature_dim=8, board_feature_dim=3)
    fails_cleanly(paths, ckpt, out, capsys, "table 'pins', column 'features'", "do not have length 8")
