"""The benchmark's in-process limit (benchmarks/embed.py), chunked and with W_2's pooled half moved
before the pooling, computes the model: checked against the naive per-node recursion on the
benchmark's own generated graph."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from benchmarks.embed import limit, load, write_graph
from pinsage_model.checkpoint import build_model, read_checkpoint
from tests.naive import NaivePinSage


def test_chunked_limit_equals_the_naive_recursion(tmp_path):
    root = str(tmp_path)
    write_graph(root, 600, "small")
    g = load(f"{root}/input")
    model = build_model(read_checkpoint(f"{root}/model.pt"))
    z = limit(model, g, chunk=128)  # several chunks in both layers, the last one short

    pins = {int(p): f for p, f in zip(g.pin_ids, g.features.numpy(), strict=True)}
    rows = {
        name: pq.read_table(f"{root}/input/{name}").to_pylist()
        for name in ("board_neighbors", "pin_neighbors")
    }
    board_rows = [(r["board_id"], r["pin_id"], r["weight"]) for r in rows["board_neighbors"]]
    pin_rows = [(r["pin_id"], r["board_id"], r["weight"]) for r in rows["pin_neighbors"]]
    boards = {int(b): np.zeros(0) for b in g.board_ids}
    naive = NaivePinSage(f"{root}/model.pt", pins, boards, board_rows, pin_rows)
    sample = np.random.default_rng(0).choice(len(g.pin_ids), 40, replace=False)
    worst = max(np.abs(z[i].numpy() - naive.pin_embedding(int(g.pin_ids[i]))).max() for i in sample)
    assert worst < 1e-5, worst
    assert torch.isfinite(z).all() and z.shape == (600, model.config.embed_dim)
