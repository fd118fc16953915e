"""What every job's entry point shares: the common flags, size checks, run ids, logging, the exit
contract and the run report's JSON copy.

Exit statuses: 0 success; 2 bad input or a bad checkpoint (`error: table '...', column '...': ...` on
stderr, nothing written, no retry helps); 3 the output root is being written by another run
(`error: OUT is being written by run <id> (started <time>, last seen <time>)`, nothing written; a
retry after that run ends, or after its lease times out, proceeds), also when this run's lease was
taken over while it ran; 1 anything else (a crash, which a retry may cure).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from jobs.lib.io import InputError
from jobs.lib.lease import DEFAULT_TIMEOUT_S, LeaseBusyError, LeaseLostError, held
from jobs.lib.vectors import PRECISIONS
from pinsage_model.checkpoint import CheckpointError, read_checkpoint

T = TypeVar("T")

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_BUSY = 3


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class CommonArgs:
    """The flags every job takes (`add_common_args`)."""

    master: str | None = None
    conf: dict[str, str] = field(default_factory=dict)
    report_json: str | None = None
    keep_work: bool = False
    lease_timeout: float = DEFAULT_TIMEOUT_S
    # The run's id: in its lease, its run report and the records of the tables it writes.
    run_id: str = field(default_factory=new_run_id)


def add_common_args(parser: argparse.ArgumentParser, work_tables: bool = True) -> None:
    """--master, --conf, --report-json, --lease-timeout, and --keep-work for jobs that write work
    tables."""
    parser.add_argument("--master", help="Spark master when run with python (default local[*])")
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf (repeatable)"
    )
    parser.add_argument("--report-json", help="also write the run report as JSON to this local file")
    parser.add_argument(
        "--lease-timeout",
        type=positive,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="take over the output root's lease when its holder has been silent this long "
        f"(default {DEFAULT_TIMEOUT_S:.0f})",
    )
    if work_tables:
        parser.add_argument("--keep-work", action="store_true", help="keep the work tables in OUT/_work")


def broadcast_bound(text: str) -> int | None:
    """--broadcast-projections-mb: `auto` (None: derived from the session's memory settings,
    `transforms.auto_broadcast_mb`) or MB, at least 0."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of MB, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser, broadcast_help: str) -> None:
    """The flags of a job that runs the model's layers (embed, embed_new): the checkpoint, where the
    layers run, and how projections move between stages."""
    parser.add_argument("--checkpoint", required=True, help="format_version 1 checkpoint file")
    parser.add_argument(
        "--checkpoint-sha256",
        metavar="HEX",
        help="refuse the checkpoint unless its SHA-256 is this (checked before it is parsed)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--broadcast-projections-mb",
        type=broadcast_bound,
        default=None,
        dest="broadcast_mb",
        metavar="MB|auto",
        help=broadcast_help + " (0: never; auto, the default: executor memory / (1 + cores per "
        "executor), at most driver memory / 2; in local mode driver memory / (1 + cores))",
    )
    parser.add_argument(
        "--projection-precision",
        choices=tuple(PRECISIONS),
        default="float32",
        help="encoding of the projections moved between stages (shuffled with the neighbor rows, or "
        "collected for the broadcast): bfloat16 or float16 halve those bytes and round each value "
        "to 8 or 11 significant bits (docs: reduced-precision projections)",
    )


def add_walk_args(
    parser: argparse.ArgumentParser,
    walks_per_node: int,
    top_t: int | None = None,
    seed: bool = True,
    walks_per_batch: int = 25,
    starts: str = "each node with memberships",
) -> None:
    """The random walk's flags (jobs.lib.walks.WalkParams), checked the same way in every job that
    walks; --top-t only where the job keeps a top-t (`top_t` its default), --seed unless the job
    declares its own; `starts` says where the walks start, for the help."""
    parser.add_argument(
        "--walks-per-node", type=at_least(1), default=walks_per_node, help=f"walks from {starts}"
    )
    parser.add_argument("--walk-length", type=at_least(1), default=8)
    parser.add_argument("--restart-prob", type=below_one, default=0.3, help="in [0, 1)")
    if top_t is not None:
        parser.add_argument("--top-t", type=at_least(1), default=top_t)
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of every walk")
    add_walks_per_batch(parser, walks_per_batch)


def add_walks_per_batch(parser: argparse.ArgumentParser, default: int = 25) -> None:
    """--walks-per-batch, for every job that walks."""
    parser.add_argument(
        "--walks-per-batch",
        type=at_least(1),
        default=default,
        help="walk indices simulated per Spark job (walking from some nodes only, e.g. new pins: "
        "scaled up by nodes / sources, so a batch holds as many walkers at most)",
    )


def common_args(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> CommonArgs:
    """The common flags of a parsed command line; a malformed --conf is a usage error."""
    return CommonArgs(
        master=parsed.master,
        conf=spark_conf(parser, parsed.conf),
        report_json=parsed.report_json,
        keep_work=getattr(parsed, "keep_work", False),
        lease_timeout=getattr(parsed, "lease_timeout", DEFAULT_TIMEOUT_S),
    )


def job_args(cls: type[T], parser: argparse.ArgumentParser, parsed: argparse.Namespace, **given: Any) -> T:
    """A job's Args dataclass from a parsed command line: each field from the flag of the same name
    (its dest), `common` from `common_args`, and `given` for fields that are not a flag as parsed."""
    values = {f.name: getattr(parsed, f.name) for f in fields(cls) if hasattr(parsed, f.name)}
    return cls(**{**values, **given, "common": common_args(parser, parsed)})


def spark_conf(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """--conf KEY=VALUE items as a dict; anything else is a usage error naming the item."""
    conf = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--conf expects KEY=VALUE, got {item!r}")
        conf[key] = value
    return conf


def at_least(low: float, kind: type = int) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` that is at least `low` (every size and count is checked
    this way, so the same mistake gets the same message in every job)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not value >= low or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse


def fraction(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def below_one(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected float, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def positive(text: str) -> float:
    """An argparse type: a finite number above 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def job_main(run: Callable[[], Any], report_json: str | None) -> int:
    """Run a job; bad input or a bad checkpoint prints `error: ...` and returns EXIT_BAD_INPUT, success
    prints the report (and writes it as JSON to `report_json` when given) and returns EXIT_OK."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run()
    except (InputError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (LeaseBusyError, LeaseLostError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BUSY
    print(report.render())
    if report_json:
        with open(report_json, "w") as f:
            json.dump(asdict(report), f, indent=2, sort_keys=True)
    return EXIT_OK


def spark_job_main(
    app_name: str,
    args: Any,
    run: Callable[..., Any],
    load: Callable[[], Any] | None = None,
    writes: str | None = None,
) -> int:
    """`job_main` for a Spark job: `run(spark, args)` with the session from the one factory,
    configured by the common flags (`args.common`). With `load`, `run(spark, args, load())`, `load`
    running before the session starts, so a bad file it reads (a checkpoint) is refused without
    starting Spark. With `writes` (the output root), `run` holds the lease on that root
    (jobs.lib.lease) under run id `args.common.run_id`."""
    from jobs.lib.session import get_spark

    def job() -> Any:
        loaded = () if load is None else (load(),)
        common = args.common
        spark = get_spark(app_name, common.master, common.conf)
        if writes is None:
            return run(spark, args, *loaded)
        with held(spark, writes, common.run_id, common.lease_timeout):
            return run(spark, args, *loaded)

    return job_main(job, args.common.report_json)


def model_job_main(app_name: str, args: Any, run: Callable[..., Any], writes: str) -> int:
    """`spark_job_main` for a job that runs the model, writing under `writes`: `run(spark, args,
    checkpoint)`. The checkpoint
    (args.checkpoint, pinned to args.checkpoint_sha256 when given) is read before Spark starts, so a
    bad or swapped file fails fast; executors re-check the hash of the broadcast bytes."""
    return spark_job_main(
        app_name,
        args,
        run,
        load=lambda: read_checkpoint(args.checkpoint, args.checkpoint_sha256),
        writes=writes,
    )
