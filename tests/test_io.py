"""Storage calls on small tables: one commit per write, metadata and versions recorded, reads back
what was written, and input paths that are missing or unreadable named as bad input."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality

from jobs.lib import io
from tests.graphs import write_parquet


@pytest.fixture
def rows(spark):
    return spark.createDataFrame([(1, 0.5), (2, 1.5)], "pin_id bigint, weight double")


def test_write_and_reload_returns_the_table_and_records_the_metadata(spark, rows, tmp_path):
    path = str(tmp_path / "t")
    back = io.write_and_reload(rows, path, {"run_id": "r1", "layer": 2})
    assert_df_equality(back, rows, ignore_row_order=True)
    commit = io.last_commit(spark, path)
    assert commit["metadata"] == {"run_id": "r1", "layer": 2}
    assert (commit["version"], io.table_version(spark, path)) == (0, 0)


def test_write_delta_replaces_the_table_in_one_new_version(spark, rows, tmp_path):
    path = str(tmp_path / "t")
    io.write_delta(rows, path)
    commit = io.write_delta_commit(rows.limit(1), path)
    assert commit["version"] == 1 and io.committed_rows(spark, path, commit) == 1
    assert io.read_delta(spark, path).count() == 1
    assert io.read_delta(spark, path, version=0).count() == 2


def test_committed_rows_counts_the_version_when_delta_keeps_no_metrics(spark, rows, tmp_path):
    path = str(tmp_path / "t")
    commit = io.write_delta_commit(rows, path)
    assert io.committed_rows(spark, path, {**commit, "metrics": {}}) == 2


def test_committed_rows_counts_a_real_commit_written_without_metrics(spark, rows, tmp_path):
    key = "spark.databricks.delta.history.metricsEnabled"
    spark.conf.set(key, "false")
    try:
        path = str(tmp_path / "t")
        commit = io.write_delta_commit(rows, path)
    finally:
        spark.conf.unset(key)
    assert "numOutputRows" not in commit["metrics"]  # the commit really carries no row count to read
    assert io.committed_rows(spark, path, commit) == 2


def test_append_delta_starts_over_on_the_first_batch(spark, rows, tmp_path):
    path = str(tmp_path / "t")
    io.write_delta(rows, path)
    io.append_delta(rows.limit(1), path, first=True)
    io.append_delta(rows, path, first=False)
    assert io.read_delta(spark, path).count() == 3


def test_merge_delta_updates_matching_keys_and_inserts_the_rest(spark, rows, tmp_path):
    path = str(tmp_path / "t")
    io.write_delta(rows, path)
    new = spark.createDataFrame([(2, 9.0), (3, 3.0)], "pin_id bigint, weight double")
    commit = io.merge_delta(new, path, "pin_id", {"operation": "embed_new"})
    assert commit["operation"] == "MERGE" and commit["metadata"] == {"operation": "embed_new"}
    assert (commit["metrics"]["numTargetRowsInserted"], commit["metrics"]["numTargetRowsUpdated"]) == (
        "1",
        "1",
    )
    expected = spark.createDataFrame([(1, 0.5), (2, 9.0), (3, 3.0)], "pin_id bigint, weight double")
    assert_df_equality(io.read_delta(spark, path), expected, ignore_row_order=True)
    assert "spark.databricks.delta.commitInfo.userMetadata" not in dict(spark.conf.getAll)


def test_user_metadata_that_is_not_a_json_object_is_kept_raw(spark, rows, tmp_path):
    path = str(tmp_path / "t")
    rows.write.format("delta").option("userMetadata", "nightly copy").save(path)
    commit = io.last_commit(spark, path)
    assert (commit["metadata"], commit["user_metadata"]) == ({}, "nightly copy")
    assert io.json_object("nightly copy") is None and io.json_object("[1]") is None
    assert io.json_object('{"a": 1}') == {"a": 1}


def test_read_table_reads_delta_at_a_version_or_parquet(spark, rows, tmp_path):
    delta, parquet = str(tmp_path / "d"), str(tmp_path / "p")
    io.write_delta(rows, delta)
    io.write_delta(rows.limit(1), delta)
    rows.write.parquet(parquet)
    assert io.read_table(spark, "pins", delta).count() == 1
    assert io.read_table(spark, "pins", delta, version=0).count() == 2
    assert io.read_table(spark, "pins", parquet).count() == 2


def test_missing_or_unreadable_inputs_are_input_errors(spark, tmp_path):
    with pytest.raises(io.InputError, match=r"table 'edges': path .*nowhere does not exist"):
        io.read_table(spark, "edges", str(tmp_path / "nowhere"))
    with pytest.raises(io.InputError, match="table 'edges'"):
        io.snapshot(spark, "edges", str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(
        io.InputError, match=r"table 'edges': \S+empty is neither a Delta table nor a folder of Parquet"
    ):
        io.read_table(spark, "edges", str(tmp_path / "empty"))


def test_a_file_that_is_not_parquet_is_bad_input_naming_the_file(spark, tmp_path):
    os.makedirs(tmp_path / "csv")
    (tmp_path / "csv" / "edges.csv").write_text("pin_id,board_id\n1,2\n")
    with pytest.raises(
        io.InputError, match=r"table 'edges': cannot read \S+/csv/edges.csv: not a Parquet file"
    ):
        io.read_table(spark, "edges", str(tmp_path / "csv"))


def test_a_delta_log_without_commits_is_bad_input(spark, tmp_path):
    os.makedirs(tmp_path / "t" / "_delta_log")
    with pytest.raises(io.InputError, match=r"table 'pins': \S+/t/_delta_log holds no commit"):
        io.read_table(spark, "pins", str(tmp_path / "t"))


def test_a_parquet_file_damaged_past_its_footer_is_bad_input_when_scanned(spark, tmp_path):
    folder = tmp_path / "pins"
    folder.mkdir()
    path = folder / "part-0.parquet"
    values = pa.array(range(0, 20000, 7), pa.int64())
    pq.write_table(pa.table({"pin_id": values}), path, compression="none", use_dictionary=False)
    data = bytearray(path.read_bytes())
    data[4:64] = b"\xff" * 60  # the first page's header; the footer at the end is intact
    path.write_bytes(bytes(data))
    df = io.read_table(spark, "pins", str(folder))
    with pytest.raises(io.InputError, match=r"table 'pins': cannot read \S+part-0.parquet"):
        with io.reading("pins"):
            df.agg({"pin_id": "sum"}).collect()


def test_snapshot_identifies_a_delta_version_or_the_parquet_files(spark, rows, tmp_path):
    delta = str(tmp_path / "d")
    io.write_delta(rows, delta)
    assert io.snapshot(spark, "pins", delta) == {"path": f"file:{delta}", "format": "delta", "version": 0}
    parquet = write_parquet(str(tmp_path / "p"), {"pin_id": pa.array([1, 2], pa.int64())})
    snap = io.snapshot(spark, "pins", parquet)
    size = os.path.getsize(f"{parquet}/part-00000.parquet")
    assert (snap["format"], snap["files"], snap["bytes"]) == ("parquet", 1, size)
    assert io.read_snapshot(spark, "pins", snap).count() == 2


def test_delete_work_removes_the_work_root_once_empty(spark, rows, tmp_path):
    root = tmp_path / "out" / "_work"
    io.write_delta(rows, str(root / "a" / "t"))
    io.write_delta(rows, str(root / "b" / "t"))
    io.delete_work(spark, str(root / "a"))
    assert not (root / "a").exists() and (root / "b").exists()
    io.delete_work(spark, str(root / "b"))
    assert not root.exists() and (tmp_path / "out").exists()
    assert io.is_delta(spark, str(root / "b" / "t")) is False


def test_put_file_copies_a_local_file(spark, tmp_path):
    (tmp_path / "local.txt").write_text("x")
    io.put_file(spark, str(tmp_path / "local.txt"), str(tmp_path / "dest" / "copy.txt"))
    assert (tmp_path / "dest" / "copy.txt").read_text() == "x"
