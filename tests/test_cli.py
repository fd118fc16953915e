"""The entry points as a user runs them: `python jobs/embed.py ...` in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH = ["--pins", "p", "--edges", "e", "--board-neighbors", "b", "--pin-neighbors", "n"]


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
    result = run_job(*GRAPH, "--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out"))
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
        *GRAPH, "--checkpoint", ckpt, "--checkpoint-sha256", "0" * 64, "--out", str(tmp_path / "out")
    )
    assert result.returncode == 2
    assert "was pinned; not loaded" in result.stderr
    assert not (tmp_path / "out").exists()


# ---- the same flag means the same thing in every job (parsed only, no Spark) ------------------

EMBED = [*GRAPH, "--checkpoint", "c"]
EMBED_NEW = ["--new-pins", "p", "--new-edges", "e", "--base", "o", "--checkpoint", "c"]


def parsers():
    from jobs import embed, embed_new, neighborhoods, publish

    return {
        "embed": (embed.parse_args, [*EMBED, "--out", "o"]),
        "embed_new": (embed_new.parse_args, EMBED_NEW),
        "neighborhoods": (neighborhoods.parse_args, ["--edges", "e", "--out", "o"]),
        "publish": (publish.parse_args, ["--source", "s", "--target", "t"]),
    }


def test_every_job_takes_the_common_flags():
    for name, (parse, argv) in parsers().items():
        args = parse([*argv, "--master", "local[1]", "--conf", "a.b=c", "--report-json", "r.json"])
        assert (args.common.master, args.common.conf, args.common.report_json) == (
            "local[1]",
            {"a.b": "c"},
            "r.json",
        ), name


def test_a_malformed_conf_is_a_usage_error_in_every_job(capsys):

    for parse, argv in parsers().values():
        with pytest.raises(SystemExit) as exit_info:
            parse([*argv, "--conf", "no-equals-sign"])
        assert exit_info.value.code == 2
        assert "--conf expects KEY=VALUE, got 'no-equals-sign'" in capsys.readouterr().err


def test_model_flags_are_checked_the_same_in_embed_and_embed_new(capsys):

    jobs = {k: v for k, v in parsers().items() if k in ("embed", "embed_new")}
    for parse, argv in jobs.values():
        with pytest.raises(SystemExit) as exit_info:
            parse([*argv, "--broadcast-projections-mb", "-1"])
        assert exit_info.value.code == 2
        assert "argument --broadcast-projections-mb: must be at least 0, got -1" in capsys.readouterr().err
        args = parse([*argv, "--projection-precision", "bfloat16", "--broadcast-projections-mb", "0"])
        assert (args.projection_precision, args.broadcast_mb) == ("bfloat16", 0)
        assert parse(argv).broadcast_mb is None, "the default bound is derived from the memory settings"
        assert parse([*argv, "--broadcast-projections-mb", "AUTO"]).broadcast_mb is None
        with pytest.raises(SystemExit):
            parse([*argv, "--broadcast-projections-mb", "1g"])
        assert "expected 'auto' or a whole number of MB, got '1g'" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            parse([*argv, "--projection-precision", "int8"])
        assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_embed_new_walks_per_batch_is_at_least_1(capsys):

    from jobs import embed_new

    with pytest.raises(SystemExit) as exit_info:
        embed_new.parse_args([*EMBED_NEW, "--walks-per-batch", "0"])
    assert exit_info.value.code == 2
    assert "argument --walks-per-batch: must be at least 1, got 0" in capsys.readouterr().err
