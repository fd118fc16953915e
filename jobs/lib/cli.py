"""What every job's main() shares: logging, run ids, the error contract and the run report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from jobs.lib.io import InputError
from pinsage_model.checkpoint import CheckpointError


def spark_conf(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """--conf KEY=VALUE items as a dict; anything else is a usage error naming the item."""
    conf = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--conf expects KEY=VALUE, got {item!r}")
        conf[key] = value
    return conf


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def job_main(run: Callable[[], Any], report_json: str | None) -> int:
    """Run a job; bad input or a bad checkpoint prints `error: ...` and returns 2, success prints the
    report (and writes it as JSON to `report_json` when given) and returns 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run()
    except (InputError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.render())
    if report_json:
        with open(report_json, "w") as f:
            json.dump(asdict(report), f, indent=2, sort_keys=True)
    return 0
