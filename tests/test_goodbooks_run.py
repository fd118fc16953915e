"""jobs/goodbooks/run.py's chain and report: the commands it runs, --resume skipping finished steps, and a
report that carries every method's numbers from the step reports."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from jobs.goodbooks import run as job

METRICS = {"hit@10": 0.25, "hit@100": 0.5, "hit@500": 0.75, "mrr": 0.125, "scaled_mrr": 0.375}


def write_reports(root: str, variants: tuple[str, ...]) -> None:
    rows = {
        "pins": 40,
        "edges": 300,
        "heldout": 30,
        "train_pairs": 20,
        "validation_pairs": 5,
        "test_pairs": 4,
    }
    reports = {"prepare": {"rows": rows}, "neighbors": {}}
    for i, name in enumerate(variants):
        methods = {"embedding": {**METRICS, "hit@10": 0.1 * (i + 1), "pairs": 4}}
        if name == "pinsage":
            methods |= {"content": {**METRICS, "pairs": 4}, "graph": {**METRICS, "mrr": 0.0625, "pairs": 4}}
        reports[f"train-{name}"] = {
            "epochs": [{"epoch": 1, "loss": 0.09, "hit_rate": 0.2, "hard_negatives": 0, "seconds": 3.0}],
            "config": {
                "pooling": "mean" if name == "mean" else "importance",
                "hidden_dim": 8,
                "embed_dim": 4,
            },
            "options": {"loss": "margin" if name == "margin" else "softmax"},
        }
        reports[f"embed-{name}"] = {}
        reports[f"evaluate-{name}"] = {
            "methods": methods,
            "similarity": {"embedding": {"pairs": 10, "mean": 0.1, "std": 0.2, "kurtosis": None}},
            "params": {"k": [10, 100, 500]},
        }
        if name == "pinsage":
            # The co-occurrence grid: lambda 500 wins on validation, so it is the one run on test.
            reports[f"evaluate-{name}"]["methods"] |= {
                "ease[lambda=500]": {**METRICS, "hit@10": 0.05, "pairs": 4}
            }
            reports[f"evaluate-{name}"]["validation"] = {
                "embedding": {**METRICS, "pairs": 5},
                "ease[lambda=100]": {**METRICS, "hit@10": 0.2, "pairs": 5},
                "ease[lambda=500]": {**METRICS, "hit@10": 0.4, "pairs": 5},
            }
            reports[f"evaluate-{name}"]["best"] = {"ease": "ease[lambda=500]"}
            reports["related-exact"] = {"hits": {"pairs": 4, "hit@10": 0.1}}
            reports["related-ann"] = {"hits": {"pairs": 4, "hit@10": 0.05}}
            reports[f"evaluate-{name}"]["paired"] = {
                "graph": {"hit@10": {"embedding_only": 1234, "baseline_only": 56, "p_value": 0.00042}},
                "ease[lambda=500]": {"hit@10": {"embedding_only": 7, "baseline_only": 3, "p_value": 0.34}},
            }
    for r in job.REVEALED:
        reports[f"cold-embed-r{r}"] = {}
        reports[f"cold-evaluate-r{r}"] = {
            "validation": {
                "embedding": {**METRICS, "hit@10": 0.2, "pairs": 7},
                "content": {**METRICS, "hit@10": 0.1, "pairs": 7},
                "ease[lambda=100]": {**METRICS, "hit@10": 0.2, "pairs": 7},
                "ease[lambda=500]": {**METRICS, "hit@10": 0.3, "pairs": 7},
            },
            "methods": {
                "embedding": {**METRICS, "hit@10": 0.2, "pairs": 7},
                "content": {**METRICS, "hit@10": 0.1, "pairs": 7},
                "ease[lambda=500]": {**METRICS, "hit@10": 0.05, "pairs": 7},
            },
            "best": {"ease": "ease[lambda=500]"},
        }
    os.makedirs(f"{root}/reports", exist_ok=True)
    for name, content in reports.items():
        with open(f"{root}/reports/{name}.json", "w") as f:
            json.dump(content, f)


def test_resume_skips_finished_steps_and_the_report_carries_every_method(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "gb")
    write_reports(out, ("pinsage", "mean", "margin"))
    ran = []
    monkeypatch.setattr(job.subprocess, "run", lambda cmd, cwd: ran.append(cmd))
    results = job.run(
        job.parse_args(["--data-dir", "d", "--out", out, "--variants", "pinsage,mean,margin", "--resume"])
    ).results
    assert ran == []
    assert results["variants"]["mean"]["metrics"]["hit@10"] == pytest.approx(0.2)
    assert set(results["baselines"]) == {"content", "graph", "ease[lambda=500]"}
    assert results["warm_chosen"]["best"] == "ease[lambda=500]"
    assert results["warm_chosen"]["test_hit10_ratio"] == pytest.approx(2.0)
    report = open(f"{out}/report.md").read()
    assert "| PinSage (importance pooling, hard-negative curriculum) | 0.1000 | 0.5000 | 0.7500 |" in report
    assert (
        "| graph only (random-walk visit counts) | 0.2500 | 0.5000 | 0.7500 | 0.0625 | 0.3750 | 4 |" in report
    )
    assert "| mean: mean pooling, hard-negative curriculum | 0.2000 |" in report
    assert "**mean** (mean pooling, softmax loss, hidden 8, embedding 4):" in report
    assert "**margin** (importance pooling, margin loss, hidden 8, embedding 4):" in report
    assert "| embedding | 10 | 0.100 | 0.200 | n/a |" in report
    assert "| graph | 10 | 1,234 | 56 | 0.00042 |" in report
    # Only the grid point chosen on validation is shown on the test pairs, marked.
    assert "| ease[lambda=500] * | 0.0500 | 0.5000 |" in report
    assert "| ease[lambda=500] | 10 | 7 | 3 | 0.34 |" in report
    assert "lambda=100" not in report.split("## Ablations")[0]
    assert "| evaluation, exact ranks | 0.1000 | 4 |\n| related_pins, exact | 0.1000 | 4 |" in report
    assert "| related_pins, ann | 0.0500 | 4 |" in report
    # New books: the baseline grid point is chosen on validation, compared on test.
    assert results["cold_chosen"]["r1"]["best"] == "ease[lambda=500]"
    assert results["cold_chosen"]["r1"]["test_hit10_ratio"] == pytest.approx(4.0)
    assert "| ease[lambda=500] * | 3 | 0.0500 | 0.5000 | 0.7500 | 0.1250 | 7 |" in report
    assert (
        "- r = 0: best baseline on validation ease[lambda=500]; PinSage's test hit@10 is 4.00x its." in report
    )


def test_the_chain_runs_each_project_command_in_order_and_stops_at_a_failure(tmp_path, monkeypatch):
    out = str(tmp_path / "gb")
    ran, fail = [], "jobs/embed.py"

    class Done:
        def __init__(self, code):
            self.returncode = code

    def fake(cmd, cwd):
        ran.append(cmd)
        return Done(1 if fail in cmd else 0)

    monkeypatch.setattr(job.subprocess, "run", fake)
    argv = ["--data-dir", "data", "--out", out, "--variants", "pinsage", "--train-flags", "--epochs 2"]
    argv += ["--master", "local[1]", "--conf", "spark.x=1"]
    with pytest.raises(SystemExit, match="step 'embed-pinsage' failed with exit status 1"):
        job.run(job.parse_args(argv))
    assert [cmd[1] for cmd in ran] == [
        "jobs/goodbooks/prepare.py",
        "jobs/neighborhoods.py",
        "jobs/train.py",
        "jobs/embed.py",
    ]
    assert all(os.path.exists(os.path.join(job.ROOT, cmd[1])) for cmd in ran)
    assert ran[1][ran[1].index("--out") + 1] == f"{out}/neighbors"
    train = ran[2]
    assert train[-4:] == ["--epochs", "2", "--report-json", f"{out}/reports/train-pinsage.json"]
    assert ran[0][ran[0].index("--board-features") + 1] == str(job.BOARD_FEATURES)
    assert train[train.index("--boards") + 1] == f"{out}/data/boards"
    assert ["--pooling", "importance"] == train[train.index("--pooling") : train.index("--pooling") + 2]
    # The chain's training defaults come first, so the user's flags (the last of a repeated flag
    # wins in argparse) override them.
    defaults = train.index(job.TRAIN_DEFAULTS[0])
    assert train[defaults : defaults + len(job.TRAIN_DEFAULTS)] == list(job.TRAIN_DEFAULTS)
    assert defaults < len(train) - 4
    assert all(cmd[-2] == "--report-json" for cmd in ran)
    spark_flags = ["--master", "local[1]", *job.QUIET, "--conf", "spark.x=1"]
    for cmd in (ran[0], ran[1], ran[3]):
        assert cmd[-2 - len(spark_flags) : -2] == spark_flags
    # The trainer reads its inputs with Spark: it gets the chain's confs and the quiet progress too.
    assert train[train.index("--master") : train.index("--master") + len(spark_flags)] == spark_flags


def test_board_features_are_prepared_and_given_to_every_job_that_reads_the_graph(tmp_path, monkeypatch):
    out = str(tmp_path / "gb")
    ran = []

    def fake(cmd, cwd):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 1 if "jobs/evaluate.py" in cmd else 0)

    monkeypatch.setattr(job.subprocess, "run", fake)
    argv = ["--data-dir", "data", "--out", out, "--variants", "pinsage", "--board-features", "16"]
    with pytest.raises(SystemExit, match="step 'evaluate-pinsage' failed"):
        job.run(job.parse_args(argv))
    prepare, walks, train, embed = ran[:4]
    assert prepare[prepare.index("--board-features") + 1] == "16"
    assert "--boards" not in walks  # the walks use memberships only
    for cmd in (train, embed):
        assert cmd[cmd.index("--boards") + 1] == f"{out}/data/boards"
    ran.clear()
    with pytest.raises(SystemExit):
        job.run(job.parse_args([*argv, "--board-features", "0"]))
    assert ran[0][ran[0].index("--board-features") + 1] == "0"
    assert all("--boards" not in cmd for cmd in ran), "featureless lists when asked"


def test_new_books_are_embedded_into_a_copy_of_the_run_per_revealed_count_and_evaluated(
    tmp_path, monkeypatch
):
    out = str(tmp_path / "gb")
    write_reports(out, ("pinsage",))
    for name in (
        "prepare",
        "neighbors",
        "evaluate-pinsage",
        "cold-evaluate-r0",
        "cold-embed-r3",
        "cold-evaluate-r3",
    ):
        os.remove(f"{out}/reports/{name}.json")
    os.makedirs(f"{out}/runs/pinsage/pin_embeddings")
    os.makedirs(f"{out}/runs/pinsage/_work/x")
    os.makedirs(f"{out}/cold/r3/stale")
    ran = []

    def fake(cmd, cwd):
        ran.append(cmd)
        if "jobs/embed_new.py" in cmd:  # the copy is in place when embed_new runs
            base = cmd[cmd.index("--base") + 1]
            assert os.path.isdir(f"{base}/pin_embeddings") and not os.path.exists(f"{base}/_work")
            assert not os.path.exists(f"{base}/stale")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(job.subprocess, "run", fake)
    monkeypatch.setattr(job, "collect", lambda args, seconds: {})
    monkeypatch.setattr(job, "render", lambda results: "")
    argv = ["--data-dir", "d", "--out", out, "--variants", "pinsage", "--resume", "--cold-share", "0.2"]
    job.run(job.parse_args(argv))
    names = [cmd[cmd.index("--report-json") + 1].rsplit("/", 1)[1] for cmd in ran]
    assert names == [
        "prepare.json",
        "neighbors.json",
        "evaluate-pinsage.json",
        "cold-evaluate-r0.json",
        "cold-embed-r3.json",
        "cold-evaluate-r3.json",
    ]
    assert ran[0][ran[0].index("--cold-share") + 1] == "0.2"
    data = f"{out}/data"
    # Warm pairs: one run chooses the baselines' grid points on the validation pairs (where PinSage
    # is ranked too) and ranks the test pairs by every method; all see the memberships behind the
    # training pairs.
    warm = ran[2]
    assert warm[warm.index("--pairs") + 1] == f"{data}/test_pairs"
    assert warm[warm.index("--validation-pairs") + 1] == f"{data}/validation_pairs"
    assert warm[warm.index("--methods") + 1] == ",".join(job.WARM_METHODS)
    assert warm[warm.index("--validation-methods") + 1] == ",".join(job.WARM_VALIDATION_METHODS)
    assert warm[warm.index("--extra-edges") + 1] == f"{data}/train_edges"
    assert warm[warm.index("--walks-per-batch") + 1] == str(job.EVALUATION_WALKS_PER_BATCH)
    grid = dict(zip(job.BASELINE_FLAGS[::2], job.BASELINE_FLAGS[1::2], strict=True))
    for flag, values in grid.items():
        assert warm[warm.index(flag) + 1] == values
    # r = 0: no co-occurrence baseline (each scores a book without memberships 0).
    r0 = ran[3]
    assert r0[r0.index("--methods") + 1] == ",".join(job.COLD_METHODS_R0) and "--ease-lambda" not in r0
    assert r0[r0.index("--validation-pairs") + 1] == f"{data}/cold_validation_pairs"
    embed_new, test = ran[4], ran[5]
    assert embed_new[embed_new.index("--new-pins") + 1] == f"{data}/cold_pins_r3"
    assert embed_new[embed_new.index("--new-edges") + 1] == f"{data}/cold_edges_r3"
    assert embed_new[embed_new.index("--checkpoint") + 1] == f"{out}/models/pinsage.pt"
    assert test[test.index("--embeddings") + 1] == f"{out}/cold/r3/pin_embeddings"
    assert test[test.index("--pairs") + 1] == f"{data}/cold_test_pairs"
    assert test[test.index("--validation-pairs") + 1] == f"{data}/cold_validation_pairs"
    assert test[test.index("--out") + 1] == f"{out}/evaluation/cold/r3"
    assert test[test.index("--edges") + 1] == f"{data}/edges"
    assert test[test.index("--extra-edges") + 1] == f"{data}/cold_extra_edges_r3"
    assert test[test.index("--methods") + 1] == ",".join(job.COLD_METHODS)
    assert test[test.index("--ease-lambda") + 1] == grid["--ease-lambda"]
    ran.clear()
    job.run(job.parse_args([*argv, "--no-baselines", "--cold-splits", "test"]))
    test = ran[-1]
    assert [c[c.index("--report-json") + 1].rsplit("/", 1)[1] for c in ran[-2:]] == [
        "cold-embed-r3.json",
        "cold-evaluate-r3.json",
    ]
    assert "--edges" not in test and "--methods" not in test and "--validation-pairs" not in test
    assert test[test.index("--pins") + 1] == f"{data}/content"
    assert test[test.index("--pairs") + 1] == f"{data}/cold_test_pairs"


def test_one_split_alone_is_reported_as_that_split():
    only = {"methods": {"embedding": {**METRICS, "pairs": 3}}, "best": {}}
    assert job.by_split(only, ("validation",)) == {"validation": only["methods"]}
    assert job.by_split(only, ("test",)) == {"test": only["methods"]}
    chosen = job.choose_baselines({"validation": only["methods"]}, {})
    assert chosen == {"per_method": {}, "best": None, "test_hit10_ratio": None}


def test_main_writes_the_chain_report_as_json(tmp_path, monkeypatch):
    out = str(tmp_path / "gb")
    write_reports(out, ("pinsage",))
    monkeypatch.setattr(job.subprocess, "run", lambda cmd, cwd: None)
    argv = ["--data-dir", "d", "--out", out, "--variants", "pinsage", "--resume"]
    assert job.main([*argv, "--report-json", f"{tmp_path}/chain.json"]) == 0
    with open(f"{tmp_path}/chain.json") as f:
        saved = json.load(f)
    with open(f"{out}/report.json") as f:
        assert saved["results"] == json.load(f)


def test_variants_must_include_pinsage_and_be_known():
    with pytest.raises(SystemExit):
        job.parse_args(["--data-dir", "d", "--out", "o", "--variants", "mean"])
    with pytest.raises(SystemExit):
        job.parse_args(["--data-dir", "d", "--out", "o", "--variants", "pinsage,median"])
