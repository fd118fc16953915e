"""jobs/retention.py: old table versions vacuumed and old work folders removed under a root, newer
ones kept, and nothing touched while another run holds the root's lease."""

from __future__ import annotations

import glob
import os
import time

import pytest

from jobs.lib.cli import EXIT_BUSY
from jobs.lib.io import LocalFiles, write_delta
from jobs.lib.lease import acquire
from jobs.retention import main

NO_CHECK = ["--conf", "spark.databricks.delta.retentionDurationCheck.enabled=false"]


def age(path: str, days: float) -> None:
    """Set the modification time of `path` and everything under it to `days` ago."""
    when = time.time() - days * 86400
    for folder, _, files in os.walk(path):
        for name in files:
            os.utime(os.path.join(folder, name), (when, when))
    os.utime(path, (when, when))


@pytest.fixture
def root(spark, tmp_path):
    root = str(tmp_path / "out")
    table = f"{root}/board_layers/layer_1"
    write_delta(spark.range(10).toDF("board_id"), table)
    write_delta(spark.range(3).toDF("board_id"), table)  # version 0's files removed now
    for name, days in (("failed-long-ago", 10), ("failed-today", 0)):
        os.makedirs(f"{root}/_work/{name}/layer_1_boards")
        open(f"{root}/_work/{name}/layer_1_boards/part-0.parquet", "w").close()
        age(f"{root}/_work/{name}", days)
    return root


def data_files(table: str) -> list[str]:
    return sorted(glob.glob(f"{table}/*.parquet"))


def test_old_versions_and_old_work_folders_are_removed_and_the_rest_kept(spark, root):
    table = f"{root}/board_layers/layer_1"
    files = data_files(table)
    assert main(["--root", root, "--older-than-days", "2", *NO_CHECK]) == 0
    assert sorted(os.listdir(f"{root}/_work")) == ["failed-today"]
    assert data_files(table) == files  # version 0 was replaced less than 2 days ago: still readable
    assert spark.read.format("delta").option("versionAsOf", 0).load(table).count() == 10

    time.sleep(1)
    assert main(["--root", root, "--older-than-days", "0.00001", *NO_CHECK]) == 0  # under a second
    assert len(data_files(table)) < len(files)  # version 0's files are gone
    assert spark.read.format("delta").load(table).count() == 3  # the latest version reads as before


def test_nothing_is_touched_while_a_run_holds_the_root(spark, root, capsys):
    table = f"{root}/board_layers/layer_1"
    files = data_files(table)
    lease = acquire(LocalFiles(), root, "nightly")
    try:
        assert main(["--root", root, "--older-than-days", "2", *NO_CHECK]) == EXIT_BUSY
        assert os.path.exists(lease.path)  # the live run's lease is left as it was
    finally:
        lease.release()
    assert "is being written by run nightly" in capsys.readouterr().err
    assert data_files(table) == files
    assert sorted(os.listdir(f"{root}/_work")) == ["failed-long-ago", "failed-today"]
