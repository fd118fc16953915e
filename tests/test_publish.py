"""jobs/publish.py: a run's embedding tables copied to the current root, one Delta commit per table,
or nothing written at all."""

from __future__ import annotations

import json
import os

import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable

from jobs.lib.io import InputError, write_delta
from jobs.publish import TABLES, main, parse_args, run

PIN_DDL = "pin_id BIGINT, embedding ARRAY<FLOAT>"
BOARD_DDL = "board_id BIGINT, embedding ARRAY<FLOAT>"


def write_run(spark, root: str, run_id: str, scale: float = 1.0, commits: int = 1) -> str:
    """A run's output as the embed job leaves it: both tables, each commit tagged with the run id."""
    metadata = {"run_id": run_id, "checkpoint_sha256": "ab" * 32}
    pins = spark.createDataFrame([(p, [scale * p, 1.0]) for p in range(5)], PIN_DDL)
    boards = spark.createDataFrame([(100 + b, [scale * b, 2.0]) for b in range(3)], BOARD_DDL)
    for _ in range(commits):
        write_delta(pins, f"{root}/pin_embeddings", metadata)
        write_delta(boards, f"{root}/board_embeddings", metadata)
    return root


def last_commit(spark, path: str):
    return DeltaTable.forPath(spark, path).history(1).collect()[0]


def table(spark, path: str):
    return spark.read.format("delta").load(path)


def target_state(spark, target: str) -> dict:
    return {
        name: (
            last_commit(spark, f"{target}/{name}")["version"],
            sorted(table(spark, f"{target}/{name}").collect()),
        )
        for name in TABLES
        if os.path.exists(f"{target}/{name}")
    }


def test_publishes_both_tables_with_the_source_metadata_and_version(spark, tmp_path):
    source = write_run(spark, str(tmp_path / "runs" / "2026-03-01"), "run-a", commits=2)
    target = str(tmp_path / "current")

    report = run(spark, parse_args(["--source", source, "--target", target]))

    for name in TABLES:
        assert_df_equality(
            table(spark, f"{target}/{name}"), table(spark, f"{source}/{name}"), ignore_row_order=True
        )
        commit = last_commit(spark, f"{target}/{name}")
        assert commit["version"] == 0 and commit["operationParameters"]["mode"] == "Overwrite"
        assert json.loads(commit["userMetadata"]) == {
            "run_id": "run-a",
            "checkpoint_sha256": "ab" * 32,
            "published_from": f"file:{source}/{name}",
            "source_version": 1,
        }
    assert report.tables["pin_embeddings"]["rows"] == 5 and report.tables["board_embeddings"]["rows"] == 3


def test_pin_embeddings_are_published_after_board_embeddings(spark, tmp_path):
    source = write_run(spark, str(tmp_path / "run"), "run-a")
    target = str(tmp_path / "current")
    run(spark, parse_args(["--source", source, "--target", target]))
    assert (
        last_commit(spark, f"{target}/board_embeddings")["timestamp"]
        < last_commit(spark, f"{target}/pin_embeddings")["timestamp"]
    )


def test_publishing_another_run_replaces_the_current_tables(spark, tmp_path):
    first = write_run(spark, str(tmp_path / "runs" / "2026-03-01"), "run-a")
    second = write_run(spark, str(tmp_path / "runs" / "2026-03-02"), "run-b", scale=-3.0)
    target = str(tmp_path / "current")
    run(spark, parse_args(["--source", first, "--target", target]))

    run(spark, parse_args(["--source", second, "--target", target]))

    for name in TABLES:
        assert_df_equality(
            table(spark, f"{target}/{name}"), table(spark, f"{second}/{name}"), ignore_row_order=True
        )
        commit = last_commit(spark, f"{target}/{name}")
        assert commit["version"] == 1
        assert json.loads(commit["userMetadata"])["published_from"] == f"file:{second}/{name}"
        assert json.loads(commit["userMetadata"])["run_id"] == "run-b"


def test_the_version_read_is_the_version_recorded(spark, tmp_path):
    source = write_run(spark, str(tmp_path / "run"), "run-a")
    write_delta(
        table(spark, f"{source}/pin_embeddings").limit(2), f"{source}/pin_embeddings", {"run_id": "run-b"}
    )
    target = str(tmp_path / "current")

    run(spark, parse_args(["--source", source, "--target", target]))

    assert table(spark, f"{target}/pin_embeddings").count() == 2
    assert json.loads(last_commit(spark, f"{target}/pin_embeddings")["userMetadata"])["source_version"] == 1


def test_source_metadata_that_is_not_a_json_object_is_kept_verbatim(spark, tmp_path):
    source = write_run(spark, str(tmp_path / "run"), "run-a")
    table(spark, f"{source}/pin_embeddings").write.format("delta").mode("overwrite").option(
        "userMetadata", "nightly rebuild"
    ).save(f"{source}/pin_embeddings")
    target = str(tmp_path / "current")

    run(spark, parse_args(["--source", source, "--target", target]))

    assert json.loads(last_commit(spark, f"{target}/pin_embeddings")["userMetadata"]) == {
        "source_user_metadata": "nightly rebuild",
        "published_from": f"file:{source}/pin_embeddings",
        "source_version": 1,
    }


def break_missing(spark, source: str) -> None:
    import shutil

    shutil.rmtree(f"{source}/pin_embeddings")


def break_parquet(spark, source: str) -> None:
    import shutil

    df = table(spark, f"{source}/board_embeddings").toPandas()
    shutil.rmtree(f"{source}/board_embeddings")
    spark.createDataFrame(df, BOARD_DDL).write.parquet(f"{source}/board_embeddings")


def break_column(spark, source: str) -> None:
    wrong = spark.createDataFrame([(1, [1.0])], "pin_id BIGINT, embedding ARRAY<DOUBLE>")
    write_delta(wrong, f"{source}/pin_embeddings")


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (break_missing, "table 'pin_embeddings': path {source}/pin_embeddings does not exist"),
        (break_parquet, "table 'board_embeddings': {source}/board_embeddings is not a Delta table"),
        (break_column, "table 'pin_embeddings', column 'embedding': is array<double>, expected array<float>"),
    ],
    ids=["missing", "not-delta", "wrong-type"],
)
def test_a_bad_source_table_is_refused_and_the_target_is_untouched(spark, tmp_path, breakage, expected):
    target = str(tmp_path / "current")
    run(
        spark,
        parse_args(["--source", write_run(spark, str(tmp_path / "old"), "run-old"), "--target", target]),
    )
    before = target_state(spark, target)
    source = write_run(spark, str(tmp_path / "new"), "run-new", scale=5.0)
    breakage(spark, source)

    with pytest.raises(InputError) as err:
        run(spark, parse_args(["--source", source, "--target", target]))

    assert str(err.value).startswith(expected.format(source=source))
    assert target_state(spark, target) == before  # board_embeddings was valid, and still not written


def test_the_command_line_exits_2_with_the_table_named_and_writes_nothing(spark, tmp_path, capsys):
    source, target = str(tmp_path / "empty-run"), str(tmp_path / "current")
    os.makedirs(source)
    assert main(["--source", source, "--target", target]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: table 'board_embeddings': path {source}/board_embeddings does not exist: the run has not written it"
    )
    assert not os.path.exists(target)


def test_source_and_target_must_differ(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--source", str(tmp_path), "--target", f"{tmp_path}/"])
    assert exit_.value.code == 2


def test_related_pins_and_their_index_are_published_before_pin_embeddings(spark, tmp_path):
    source = write_run(spark, str(tmp_path / "run"), "run-a")
    related = spark.createDataFrame(
        [(0, 1, 2, 0.5), (2, 1, 0, 0.5)], "pin_id BIGINT, rank INT, related_pin_id BIGINT, score FLOAT"
    )
    write_delta(related, f"{source}/related_pins", {"run_id": "related-a"})
    os.makedirs(f"{source}/related_index/lists")
    for name in ("index.json", "lists/part-0.parquet"):
        with open(f"{source}/related_index/{name}", "w") as f:
            f.write(name)
    target = str(tmp_path / "current")

    report = run(spark, parse_args(["--source", source, "--target", target]))

    assert_df_equality(table(spark, f"{target}/related_pins"), related, ignore_row_order=True)
    assert json.loads(last_commit(spark, f"{target}/related_pins")["userMetadata"])["run_id"] == "related-a"
    for name in ("index.json", "lists/part-0.parquet"):
        with open(f"{target}/related_index/{name}") as f:
            assert f.read() == name
    assert report.tables["related_pins"]["copied"] == "related_index"
    assert (
        last_commit(spark, f"{target}/related_pins")["timestamp"]
        < last_commit(spark, f"{target}/pin_embeddings")["timestamp"]
    )
