"""Write a randomly initialised format_version 1 checkpoint (for demos, tests and benchmarks).

python jobs/demo/init_checkpoint.py --out model.pt --pin-feature-dim 32 [--num-layers 2 ...]
"""

from __future__ import annotations

import argparse

from pinsage_model.checkpoint import save_checkpoint
from pinsage_model.config import POOLINGS, ModelConfig
from pinsage_model.model import random_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--pin-feature-dim", type=int, required=True)
    parser.add_argument("--board-feature-dim", type=int, default=0)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--embed-dim", type=int, default=32)
    parser.add_argument("--pooling", choices=POOLINGS, default="importance")
    parser.add_argument("--no-normalize-output", dest="normalize_output", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = ModelConfig(
        num_layers=args.num_layers,
        pin_feature_dim=args.pin_feature_dim,
        board_feature_dim=args.board_feature_dim,
        hidden_dim=args.hidden_dim,
        embed_dim=args.embed_dim,
        pooling=args.pooling,
        normalize_output=args.normalize_output,
    )
    sha = save_checkpoint(random_model(config, args.seed), args.out)
    print(f"wrote {args.out} (sha256 {sha})")


if __name__ == "__main__":
    main()
