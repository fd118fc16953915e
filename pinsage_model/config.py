"""The model's hyper-parameters and the dimensions they imply for every layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass

POOLINGS = ("importance", "mean", "max")
# Poolings that are weighted means of the messages, so they commute with a linear map of them.
LINEAR_POOLINGS = ("importance", "mean")


@dataclass(frozen=True)
class LayerDims:
    """Dimensions of convolution layer k (1-based).

    in_dim: width of the neighbor representations that Q_k projects.
    self_dim: width of the target's own representation h_u(k-2) that W_k concatenates first.
    hidden_dim: width of Q_k's output and of the pooled neighborhood vector.
    out_dim: width of h_u(k).
    """

    in_dim: int
    self_dim: int
    hidden_dim: int
    out_dim: int

    def message_dim(self, through_w: bool) -> int:
        """The width of what a source sends its targets (`PinSageConv.message`): out_dim when its
        projection goes through W_pool, else hidden_dim."""
        return self.out_dim if through_w else self.hidden_dim


def layer_types(k: int) -> tuple[str, str]:
    """(target, source) node types of layer k: odd layers compute boards from pins, even layers pins
    from boards (paper, section 3.4)."""
    return ("board", "pin") if k % 2 else ("pin", "board")


@dataclass(frozen=True)
class Layer:
    """One step of the layer schedule (paper, section 3.4): layer k computes h(k) of every `target`
    node from h(k-1) of its `source` neighbors and the target's own h(k-2).

    Odd layers compute boards from pins, even layers pins from boards; h_p(0) is the pin features and
    h_b(-1) the board features (width 0 when there are none). The whole-graph model, the minibatch
    subgraphs, the Spark chain and embed_new all walk this one schedule."""

    k: int
    target: str  # "board" (odd k) or "pin" (even k)
    source: str
    dims: LayerDims

    @property
    def own(self) -> int:
        """The earlier layer whose target-type representation is the own term: k - 2."""
        return self.k - 2


@dataclass(frozen=True)
class ModelConfig:
    """The `config` block of a format_version 1 checkpoint."""

    num_layers: int
    pin_feature_dim: int
    board_feature_dim: int
    hidden_dim: int
    embed_dim: int
    pooling: str = "importance"
    normalize_output: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("num_layers", "pin_feature_dim", "board_feature_dim", "hidden_dim", "embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{name} must be an integer, got {value!r}")
        if not problems:
            if self.num_layers < 2 or self.num_layers % 2:
                problems.append(f"num_layers must be even and at least 2, got {self.num_layers}")
            for name in ("pin_feature_dim", "hidden_dim", "embed_dim"):
                if getattr(self, name) < 1:
                    problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
            if self.board_feature_dim < 0:
                problems.append(f"board_feature_dim must be 0 or more, got {self.board_feature_dim}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not isinstance(self.normalize_output, bool):
            problems.append(f"normalize_output must be a bool, got {self.normalize_output!r}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        expected = set(cls.__dataclass_fields__)
        missing = sorted(expected - set(raw))
        unknown = sorted(set(raw) - expected)
        if missing or unknown:
            raise ValueError(f"invalid model config: missing keys {missing}, unknown keys {unknown}")
        return cls(**raw)

    def to_dict(self) -> dict:
        return asdict(self)

    def layer(self, k: int) -> LayerDims:
        """Dimensions of layer k, for k = 1..num_layers."""
        if not 1 <= k <= self.num_layers:
            raise ValueError(f"layer {k} outside 1..{self.num_layers}")
        in_dim = self.pin_feature_dim if k == 1 else self.embed_dim
        self_dim = {1: self.board_feature_dim, 2: self.pin_feature_dim}.get(k, self.embed_dim)
        return LayerDims(in_dim, self_dim, self.hidden_dim, self.embed_dim)

    def schedule(self) -> tuple[Layer, ...]:
        """Layers 1..num_layers in order (see `Layer`)."""
        return tuple(Layer(k, *layer_types(k), self.layer(k)) for k in range(1, self.num_layers + 1))
