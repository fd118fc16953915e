"""The run report: what each layer computed and how long it took, printed and optionally saved."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LayerReport:
    k: int
    targets: str  # "board" or "pin"
    sources: str
    sources_projected: int
    targets_written: int
    neighbour_rows: int
    seconds: float
    projections: str = "shuffled"  # or "broadcast"


@dataclass
class RunReport:
    run_id: str
    checkpoint_sha256: str
    num_layers: int
    pooling: str
    device: str
    input_rows: dict[str, int] = field(default_factory=dict)
    dropped_rows: dict[str, int] = field(default_factory=dict)
    layers: list[LayerReport] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
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
                f"{layer.neighbour_rows:>12,}{layer.seconds:>10.1f}  {layer.projections}"
            )
        for name, out in self.outputs.items():
            lines.append(
                f"output {name}: {out['rows']:,} rows, Delta version {out['version']} at {out['path']}"
            )
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)
