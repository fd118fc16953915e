"""The entry points as a user runs them: `python jobs/embed.py ...` in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "embed.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_the_contract():
    result = run_job("--help")
    assert result.returncode == 0
    for flag in (
        "--pins",
        "--edges",
        "--boards",
        "--board-neighbors",
        "--pin-neighbors",
        "--checkpoint",
        "--out",
        "--device",
    ):
        assert flag in result.stdout


def test_a_bad_checkpoint_exits_2_before_spark_starts(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    result = run_job(
        "--pins", "p", "--edges", "e", "--board-neighbors", "b", "--pin-neighbors", "n",
        "--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: checkpoint {tmp_path}/model.pt: not a readable")
    )
    assert not (tmp_path / "out").exists()


def test_missing_required_arguments_are_a_usage_error():
    result = run_job("--pins", "p")
    assert result.returncode == 2 and "required" in result.stderr


def test_a_checkpoint_that_does_not_match_the_pinned_sha256_is_refused_unread(tmp_path):
    from tests.graphs import write_checkpoint

    ckpt = write_checkpoint(str(tmp_path / "model.pt"))
    result = run_job(
        "--pins", "p", "--edges", "e", "--board-neighbors", "b", "--pin-neighbors", "n",
        "--checkpoint", ckpt, "--checkpoint-sha256", "0" * 64, "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "was pinned; not loaded" in result.stderr
    assert not (tmp_path / "out").exists()
