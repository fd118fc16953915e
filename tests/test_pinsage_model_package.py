"""pinsage_model is torch and numpy only: every module, the training subpackage included, imports and
runs a forward pass and two training steps in a process where importing pyspark or jobs fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib
    import importlib.abc
    import pkgutil
    import sys

    BLOCKED = ("pyspark", "jobs")


    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: pinsage_model must not import it")
            return None


    sys.meta_path.insert(0, Block())

    import numpy as np
    import torch

    import pinsage_model

    names = [m.name for m in pkgutil.walk_packages(pinsage_model.__path__, "pinsage_model.")]
    for name in names:
        importlib.import_module(name)
    assert "pinsage_model.training.loop" in names and "pinsage_model.devices" in names, names

    from pinsage_model.config import ModelConfig
    from pinsage_model.model import random_model
    from pinsage_model.training.graph import build_graph
    from pinsage_model.training.loop import TrainOptions, embed_pins, train

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    pins, boards = np.arange(12), np.arange(100, 104)
    edges = (rng.integers(0, 12, 30), rng.integers(100, 104, 30), np.ones(30, dtype=np.float32))
    rows = (edges[1], edges[0], edges[2])
    graph, _ = build_graph(
        pins, rng.normal(size=(12, 4)), boards, np.zeros((4, 0)), edges, rows, (edges[0], edges[1], edges[2])
    )
    z = random_model(ModelConfig(2, 4, 0, 5, 3), seed=1)(*graph.whole_graph())[0]
    assert z.shape == (12, 3)
    pairs = (np.arange(0, 12, 2), np.arange(1, 12, 2))
    options = TrainOptions(hidden_dim=5, embed_dim=3, epochs=1, batch_size=3, negatives=4, hard_negatives=0, workers=0)
    model, history = train(graph, pairs, options)
    assert history[0].steps == 2 and embed_pins(model, graph).shape == (12, 3)
    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), "a blocked package was imported"
    print("ok")
    """
)


def test_pinsage_model_imports_and_trains_with_pyspark_and_jobs_blocked():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=root, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
