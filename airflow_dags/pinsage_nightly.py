"""
### pinsage_nightly

Every pin and board of the graph embedded with the current PinSage checkpoint, once a day:

`settings` >> `neighbors` >> `embed` >> `evaluate` >> `publish` (and `embed` >> `related` >>
`publish`)

- **settings** resolves this run's settings (each param left null takes the Airflow Variable
  `pinsage_<param>`, else the built-in default), checks them, and derives every path and command
  line from them; nothing else reads a Variable.
- **neighbors** (`jobs/neighborhoods.py`) writes `{output_root}/runs/{date}/neighbors`. This task
  was called `neighbourhoods` (writing `runs/{date}/neighbourhoods`) before: the renamed task starts
  a new task history, and runs of earlier dates keep their tables under the old folder.
- **embed** (`jobs/embed.py`) writes `{output_root}/runs/{date}/pin_embeddings` and
  `board_embeddings`.
- **evaluate** (`jobs/evaluate.py`) writes `{output_root}/runs/{date}/evaluation`; it is skipped
  when no `pairs` table is set.
- **related** (`jobs/related.py`) writes `{output_root}/runs/{date}/related_pins` (and, with
  `{"method": "ann"}` in the `related` setting, `related_index`).
- **publish** (`jobs/publish.py`) copies the run's tables to `{output_root}/current`, one Delta
  commit each, `related_pins` (with its index) before `pin_embeddings`, which is last.

`{date}` is the run's logical date (`ds`), so a rerun of a date overwrites that date's tables (each
as a new Delta version) and no other date's, then publishes them as current. A job that exits
with status 2 (bad input or a bad checkpoint) fails its task without retries; one that exits with
status 3 (its output root is being written by another run, e.g. an ad-hoc run beside this one) is
retried like any other failure: each job holds a lease on the root it writes, and a lease whose
holder was killed times out (`--lease-timeout`, 120 s) before the retry delay (5 minutes) ends.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param, TriggerRule, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

# The Delta Lake package matching setup.py's pyspark 4.2.0 and delta-spark 4.4.0 (the test checks
# it against jobs.lib.session.delta_package(); importing that here would load pyspark at parse time).
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"

# When the DAG file sits in this repository, next to the jobs it submits.
REPO_JOBS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs")

# name: (built-in default, description). A param left null takes the Variable pinsage_<name>.
SETTINGS: dict[str, tuple[Any, str]] = {
    "pins": (None, "pins table (Delta or Parquet): pin_id, features"),
    "edges": (None, "memberships table: pin_id, board_id[, weight]"),
    "boards": ("", "optional boards table: board_id[, features]; empty for none"),
    "checkpoint": (None, "PinSage checkpoint file (format_version 1)"),
    "checkpoint_sha256": ("", "refuse the checkpoint unless its SHA-256 is this; empty to skip"),
    "output_root": (None, "root of runs/{date}/... and current/..."),
    "pairs": ("", "evaluation pairs table for jobs/evaluate.py; empty skips evaluation"),
    "walks": ({}, 'random-walk options of jobs/neighborhoods.py, e.g. {"walks_per_node": 100, "top_t": 50}'),
    "related": ({}, 'options of jobs/related.py, e.g. {"method": "ann", "lists": 1024, "probes": 16}'),
    "spark_conf": ({}, "extra Spark conf, a JSON object of strings (Variable: JSON)"),
    "spark_conn_id": ("spark_default", "Airflow connection of the Spark master"),
    "spark_packages": (DELTA_PACKAGE, "spark-submit --packages; empty for none"),
    "spark_jars": ("", "spark-submit --jars (comma-separated); empty for none"),
    "py_files": ("", "spark-submit --py-files: the project zip from `make package`; empty for none"),
    "jobs_dir": (REPO_JOBS_DIR, "folder holding the job files (embed.py, related.py, ...)"),
}
REQUIRED = ("pins", "edges", "checkpoint", "output_root")
JSON_SETTINGS = ("spark_conf", "walks", "related")
WALK_OPTIONS = ("walks_per_node", "walk_length", "restart_prob", "top_t", "seed", "walks_per_batch")
RELATED_OPTIONS = ("top_k", "method", "lists", "probes", "sample", "seed")


def flags(**values: str) -> list[str]:
    """Keyword arguments as command-line flags, in order (table_path="x" -> --table-path x); one whose
    value is empty is left out."""
    return [
        item for name, value in values.items() if value for item in ("--" + name.replace("_", "-"), value)
    ]


def plan_run(settings: dict[str, Any], date: str) -> dict[str, Any]:
    """Every path and command line of one run, from its resolved settings and its date (YYYY-MM-DD).

    Raises ValueError naming the setting when one is missing or malformed."""
    for name in REQUIRED:
        if not settings.get(name):
            raise ValueError(f"setting {name!r} is not set: pass the param or set Variable pinsage_{name}")
    sha = settings.get("checkpoint_sha256") or ""
    if sha and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise ValueError("setting 'checkpoint_sha256' must be 64 hex digits")
    conf = settings.get("spark_conf") or {}
    if not isinstance(conf, dict):
        raise ValueError("setting 'spark_conf' must be a JSON object of Spark conf keys to values")
    walks = settings.get("walks") or {}
    if not isinstance(walks, dict) or set(walks) - set(WALK_OPTIONS):
        raise ValueError(f"setting 'walks' must be a JSON object with keys among {', '.join(WALK_OPTIONS)}")
    walk_flags = flags(**{k: str(walks[k]) for k in WALK_OPTIONS if k in walks})
    related = settings.get("related") or {}
    if not isinstance(related, dict) or set(related) - set(RELATED_OPTIONS):
        raise ValueError(
            f"setting 'related' must be a JSON object with keys among {', '.join(RELATED_OPTIONS)}"
        )
    related_flags = flags(**{k: str(related[k]) for k in RELATED_OPTIONS if k in related})

    root = str(settings["output_root"]).rstrip("/")
    run_dir, current = f"{root}/runs/{date}", f"{root}/current"
    jobs_dir = str(settings["jobs_dir"]).rstrip("/")
    boards = flags(boards=settings.get("boards") or "")
    pairs = settings.get("pairs") or ""
    graph = flags(edges=settings["edges"], pins=settings["pins"])
    neighbors = f"{run_dir}/neighbors"
    return {
        "date": date,
        "run_dir": run_dir,
        "current_dir": current,
        "conn_id": settings.get("spark_conn_id") or "spark_default",
        "conf": {str(k): str(v) for k, v in conf.items()},
        "packages": settings.get("spark_packages") or None,
        "jars": settings.get("spark_jars") or None,
        "py_files": settings.get("py_files") or None,
        "neighbors_application": f"{jobs_dir}/neighborhoods.py",
        "neighbors_args": [*graph, *boards, *walk_flags, "--out", neighbors],
        "embed_application": f"{jobs_dir}/embed.py",
        "embed_args": [
            *flags(pins=settings["pins"], edges=settings["edges"]),
            *boards,
            *flags(
                board_neighbors=f"{neighbors}/board_neighbors", pin_neighbors=f"{neighbors}/pin_neighbors"
            ),
            *flags(checkpoint=settings["checkpoint"], checkpoint_sha256=sha),
            # A retry picks up the layers its failed try completed (same checkpoint and inputs only).
            *flags(out=run_dir),
            "--resume",
        ],
        "evaluate_application": f"{jobs_dir}/evaluate.py",
        # Empty when there are no pairs: the evaluate task then skips itself.
        "evaluate_args": (
            flags(embeddings=f"{run_dir}/pin_embeddings", pairs=pairs, out=f"{run_dir}/evaluation")
            if pairs
            else []
        ),
        "related_application": f"{jobs_dir}/related.py",
        "related_args": [*flags(embeddings=f"{run_dir}/pin_embeddings", out=run_dir), *related_flags],
        "publish_application": f"{jobs_dir}/publish.py",
        "publish_args": flags(source=run_dir, target=current),
    }


class PinSageSubmit(SparkSubmitOperator):
    """spark-submit of one job file. Unlike SparkSubmitOperator, its connection id is templated (so a
    run's params can choose it), exit status 2 (the jobs' bad-input status, which no retry can fix)
    fails the task without retries (status 3, output root busy, is retried), and with
    `skip_without_args` it skips when its arguments are empty."""

    template_fields = (*SparkSubmitOperator.template_fields, "conn_id")

    def __init__(self, *, conn_id: Any, skip_without_args: bool = False, **kwargs: Any) -> None:
        super().__init__(conn_id="spark_default", **kwargs)
        self.conn_id = conn_id
        self.skip_without_args = skip_without_args

    def execute(self, context: Any) -> None:
        if self.skip_without_args and not self.application_args:
            raise AirflowSkipException(f"{self.task_id}: nothing to do for this run")
        self._conn_id = self.conn_id
        self._hook = None  # one left by an earlier execute() would submit that execution's arguments
        try:
            super().execute(context)
        except AirflowException as exc:
            process = getattr(self._hook, "_submit_sp", None)
            if process is not None and process.returncode == 2:
                raise AirflowFailException(f"{self.task_id}: rejected its input (exit status 2)") from exc
            raise


def spark_job(task_id: str, plan: Any, **kwargs: Any) -> PinSageSubmit:
    return PinSageSubmit(
        task_id=task_id,
        name=f"pinsage-{task_id}",
        application=plan[f"{task_id}_application"],
        application_args=plan[f"{task_id}_args"],
        conn_id=plan["conn_id"],
        conf=plan["conf"],
        packages=plan["packages"],
        jars=plan["jars"],
        py_files=plan["py_files"],
        **kwargs,
    )


with DAG(
    dag_id="pinsage_nightly",
    description="PinSage embeddings for every pin and board, published as Delta tables",
    doc_md=__doc__,
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # Runs of different dates share OUT/current: one at a time, so publishes cannot interleave.
    max_active_runs=1,
    default_args={"owner": "pinsage", "retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        name: Param(None, type=["null", "object" if name in JSON_SETTINGS else "string"], description=text)
        for name, (_, text) in SETTINGS.items()
    },
    tags=["pinsage", "spark"],
) as dag:

    @task(multiple_outputs=True)
    def settings(**context: Any) -> dict[str, Any]:
        """Param, else Variable pinsage_<name>, else the built-in default; then the run's plan."""
        from airflow.sdk import Variable

        resolved = {}
        for name, (default, _) in SETTINGS.items():
            value = context["params"].get(name)
            if value is None:
                is_json = name in JSON_SETTINGS
                value = Variable.get(f"pinsage_{name}", default=default, deserialize_json=is_json)
            resolved[name] = value
        # A manual run may have no logical date; it then writes under the day it was triggered for.
        when = context.get("logical_date") or context["dag_run"].run_after
        try:
            return plan_run(resolved, when.strftime("%Y-%m-%d"))
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None

    plan = settings()
    neighbors = spark_job("neighbors", plan)
    embed = spark_job("embed", plan)
    evaluate = spark_job("evaluate", plan, skip_without_args=True)
    related = spark_job("related", plan)
    # Runs after a skipped evaluation, not after a failed one.
    publish = spark_job("publish", plan, trigger_rule=TriggerRule.NONE_FAILED)

    neighbors >> embed >> evaluate >> publish
    embed >> related >> publish
