"""Run reports: what a job did and how long each stage took, printed and optionally saved as JSON.

Every job's report derives from `Report`, which times stages and ends the printed report with the
one timing line; the embed job's report also lists its layers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


class Stopwatch:
    """Seconds since it was made, rounded to milliseconds as the reports print them."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)


@dataclass
class Report:
    """Base of every job's report: `seconds` per stage, filled by `timed`; subclasses give `lines`."""

    seconds: dict[str, float] = field(default_factory=dict, kw_only=True)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time the block as `stage` (also when it raises, so a partial report still says where)."""
        clock = Stopwatch()
        try:
            yield
        finally:
            self.seconds[stage] = clock.seconds()

    def lines(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        timing = "time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return "\n".join([*self.lines(), timing])


@dataclass
class LayerReport:
    k: int
    targets: str  # "board" or "pin"
    sources: str
    sources_projected: int
    targets_written: int
    neighbor_rows: int
    seconds: float
    projections: str = (
        "shuffled"  # or "broadcast[ as <precision>][, with the neighbor rows]", "broadcast in <p> parts"
    )
    message_dim: int = 0  # the width pooled: hidden_dim, or out_dim through W_pool (chain.through_w)


@dataclass
class RunReport(Report):
    """The embed job's report."""

    run_id: str
    checkpoint_sha256: str
    num_layers: int
    pooling: str
    device: str
    input_rows: dict[str, int] = field(default_factory=dict)
    dropped_rows: dict[str, int] = field(default_factory=dict)
    layers: list[LayerReport] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)

    def lines(self) -> list[str]:
        lines = [
            f"run {self.run_id}: {self.num_layers} layers, {self.pooling} pooling, device {self.device}, "
            f"checkpoint sha256 {self.checkpoint_sha256[:16]}",
            "inputs: " + ", ".join(f"{k} {v:,}" for k, v in self.input_rows.items()),
            "dropped (dangling or NULL references): "
            + ", ".join(f"{k} {v:,}" for k, v in self.dropped_rows.items()),
            f"{'layer':<6}{'computes':<18}{'projected':>12}{'written':>12}{'nbr rows':>12}{'seconds':>10}"
            "  projections",
        ]
        for layer in self.layers:
            lines.append(
                f"{layer.k:<6}{layer.targets + 's from ' + layer.sources + 's':<18}"
                f"{layer.sources_projected:>12,}{layer.targets_written:>12,}"
                f"{layer.neighbor_rows:>12,}{layer.seconds:>10.1f}  {layer.projections}"
            )
        for name, out in self.outputs.items():
            lines.append(
                f"output {name}: {out['rows']:,} rows, Delta version {out['version']} at {out['path']}"
            )
        return lines
