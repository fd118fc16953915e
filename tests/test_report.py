"""The run report base: stages timed (also when they fail), one timing line, JSON-ready fields."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pytest

from jobs.lib.report import LayerReport, Report, RunReport, Stopwatch


@dataclass
class CountReport(Report):
    counts: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"{k}: {v}" for k, v in self.counts.items()]


def test_timed_records_each_stage_in_order():
    report = CountReport({"rows": 3})
    with report.timed("inputs"):
        pass
    with report.timed("publish"):
        pass
    assert list(report.seconds) == ["inputs", "publish"]
    assert all(0 <= s < 1 for s in report.seconds.values())
    assert report.render() == "rows: 3\ntime: inputs 0.0s, publish 0.0s"


def test_a_failing_stage_is_still_timed():
    report = CountReport()
    with pytest.raises(RuntimeError), report.timed("layers"):
        raise RuntimeError("boom")
    assert "layers" in report.seconds


def test_stopwatch_rounds_to_milliseconds():
    seconds = Stopwatch().seconds()
    assert seconds == round(seconds, 3) >= 0


def test_the_base_has_no_lines_of_its_own():
    with pytest.raises(NotImplementedError):
        Report().render()


def test_the_embed_report_lists_layers_and_outputs_and_serialises():
    report = RunReport("r1", "ab" * 32, 2, "importance", "cpu", input_rows={"pins": 1200})
    report.layers.append(LayerReport(1, "board", "pin", 1200, 40, 1500, 2.5, "broadcast"))
    report.outputs["pin_embeddings"] = {"path": "o/pin_embeddings", "version": 3, "rows": 1200}
    report.seconds["layers"] = 2.5
    lines = report.render().splitlines()
    assert lines[0] == "run r1: 2 layers, importance pooling, device cpu, checkpoint sha256 abababababababab"
    assert lines[1] == "inputs: pins 1,200"
    assert lines[4].split() == ["1", "boards", "from", "pins", "1,200", "40", "1,500", "2.5", "broadcast"]
    assert lines[5] == "output pin_embeddings: 1,200 rows, Delta version 3 at o/pin_embeddings"
    assert lines[-1] == "time: layers 2.5s"
    assert json.loads(json.dumps(asdict(report)))["layers"][0]["projections"] == "broadcast"
