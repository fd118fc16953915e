"""Every job's output rows pinned against a recorded run: a change of code layout must not change
what the pipeline computes. The chain runs on a small generated graph through each job's command
line (generate, init checkpoint, neighbors, embed, embed_new, train, evaluate). Each output table's
rows, sorted by key, are split into their discrete part (ids, counts, strings: hashed, and pinned bit
for bit in GOLDEN) and their floating part (vectors, scores, the trained weights: compared with
tests/golden.npz within FLOAT_TOLERANCE). The floating values cannot be pinned bit for bit across
machines: PyTorch and MKL pick their kernels by CPU (AVX2, AVX-512), and their sums differ in the last
bits from one to the other; on one machine the same inputs give the same bits (test_determinism).
A deliberate change of the numbers updates GOLDEN and golden.npz in the same commit, with the
reason: `PINSAGE_GOLDEN_UPDATE=1 pytest tests/test_golden.py` rewrites golden.npz and prints the
hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs import embed, embed_new, evaluate, neighborhoods, train
from jobs.demo import generate_graph, init_checkpoint
from pinsage_model.checkpoint import read_checkpoint
from tests.graphs import write_parquet

GOLDEN_VALUES = Path(__file__).with_name("golden.npz")
# The same code on AVX-512 and on AVX2 kernels (ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2) gave
# embeddings within 9.6e-7 and trained weights within 2.4e-7 of each other.
FLOAT_TOLERANCE = 1e-5
GOLDEN = {
    "board_neighbors": "da2d4ec77c323ebaf326aee6dc93d5ed72535f7ed1613bf815807ff62d0f8fe2",
    "pin_neighbors": "edeb66ff6f2a8a0c3be372281592f541048b4610b76486d00acca302683bfb8d",
    "pin_embeddings": "5cf2d3e547c17fde4db568fce157cbc9331a3e0dc2c09b17c221af64abdaa79c",
    "board_embeddings": "f7fdbb684fb505de335a1b999355a627a1733b41bea9a36b55011394ef06304b",
    "board_layers/layer_1": "f7fdbb684fb505de335a1b999355a627a1733b41bea9a36b55011394ef06304b",
    "pair_ranks": "01b37cdbff3650543794c7b7f4f8336c04def2edb8050232f2e15cbc05197a25",
    "pin_embeddings after embed_new": "3e5f3ae03a7fbc1d17f99be4fb23a0f2eeb4cdc579b115baaf77d68af73469e4",
    "trained checkpoint": "f4a533b2f7e9d7670043f0f765ea051fff3f003e595fd8631352d4cc8073a7d4",
}

WALK = ["--walks-per-node", "10", "--walk-length", "4", "--top-t", "8", "--walks-per-batch", "10"]


def table_values(spark, path: str, key: list[str]) -> tuple[str, np.ndarray]:
    """A Delta table's rows sorted by `key`: (sha256 of the discrete columns, integers as int64 and
    strings as UTF-8; the floating columns and float arrays as one float64 vector), column by column
    in schema order."""
    df = spark.read.format("delta").load(path)
    rows = sorted(df.collect(), key=lambda r: tuple(r[k] for k in key))
    digest = hashlib.sha256()
    floats: list[np.ndarray] = []
    for row in rows:
        for field, value in zip(df.schema.fields, row, strict=True):
            kind = field.dataType.typeName()
            if kind == "array":
                floats.append(np.asarray(value, dtype=np.float64))
                digest.update(np.int64(len(value)).tobytes())
            elif kind in ("float", "double"):
                floats.append(np.array([value], dtype=np.float64))
            elif kind == "string":
                digest.update(value.encode())
            else:
                digest.update(np.int64(value).tobytes())
    return digest.hexdigest(), np.concatenate(floats) if floats else np.zeros(0)


def state_values(path: str) -> tuple[str, np.ndarray]:
    """A checkpoint's tensors in name order: (sha256 of the names and shapes, the values as one
    float64 vector)."""
    digest = hashlib.sha256()
    values = []
    for name, tensor in sorted(read_checkpoint(path).state_dict.items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        values.append(tensor.double().flatten().numpy())
    return digest.hexdigest(), np.concatenate(values)


def co_member_pairs(root: str, out: str) -> str:
    """(query_pin, pos_pin): for each board, its first member paired with each other member."""
    import pyarrow.parquet as pq

    edges = pq.read_table(f"{root}/edges").to_pandas().sort_values(["board_id", "pin_id"])
    query, pos = [], []
    for _, members in edges.groupby("board_id")["pin_id"]:
        ids = members.to_numpy()
        query += [int(ids[0])] * (len(ids) - 1)
        pos += [int(i) for i in ids[1:]]
    return write_parquet(
        out, {"query_pin": pa.array(query, pa.int64()), "pos_pin": pa.array(pos, pa.int64())}
    )


@pytest.fixture(scope="module")
def outputs(spark, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("golden"))
    inp, nbrs, out = f"{root}/input", f"{root}/neighbors", f"{root}/out"
    generate_graph.main(
        [
            "--out",
            inp,
            "--pins",
            "240",
            "--boards",
            "40",
            "--feature-dim",
            "8",
            "--board-feature-dim",
            "3",
            "--mean-board-size",
            "9",
        ]
    )
    init_checkpoint.main(
        [
            "--out",
            f"{root}/model.pt",
            "--pin-feature-dim",
            "8",
            "--board-feature-dim",
            "3",
            "--hidden-dim",
            "12",
            "--embed-dim",
            "6",
            "--num-layers",
            "4",
            "--seed",
            "3",
        ]
    )
    assert neighborhoods.main(["--edges", f"{inp}/edges", "--pins", f"{inp}/pins", "--out", nbrs, *WALK]) == 0
    graph = [
        "--pins",
        f"{inp}/pins",
        "--edges",
        f"{inp}/edges",
        "--boards",
        f"{inp}/boards",
        "--board-neighbors",
        f"{nbrs}/board_neighbors",
        "--pin-neighbors",
        f"{nbrs}/pin_neighbors",
    ]
    assert embed.main([*graph, "--checkpoint", f"{root}/model.pt", "--out", out]) == 0

    found = {
        "board_neighbors": table_values(spark, f"{nbrs}/board_neighbors", ["board_id", "pin_id"]),
        "pin_neighbors": table_values(spark, f"{nbrs}/pin_neighbors", ["pin_id", "board_id"]),
        "pin_embeddings": table_values(spark, f"{out}/pin_embeddings", ["pin_id"]),
        "board_embeddings": table_values(spark, f"{out}/board_embeddings", ["board_id"]),
        "board_layers/layer_1": table_values(spark, f"{out}/board_layers/layer_1", ["board_id"]),
    }

    pairs = co_member_pairs(inp, f"{root}/pairs")
    assert (
        evaluate.main(
            [
                "--embeddings",
                f"{out}/pin_embeddings",
                "--pairs",
                pairs,
                "--out",
                f"{root}/eval",
                "--pins",
                f"{inp}/pins",
                "--edges",
                f"{inp}/edges",
                "--walks-per-node",
                "20",
                "--walks-per-batch",
                "20",
                "--similarity-pairs",
                "0",
            ]
        )
        == 0
    )
    found["pair_ranks"] = table_values(spark, f"{root}/eval/pair_ranks", ["method", "query_pin", "pos_pin"])

    rng = np.random.default_rng(5)
    new = {240 + i: rng.normal(size=8).astype(np.float32).tolist() for i in range(4)}
    new[3] = rng.normal(size=8).astype(np.float32).tolist()  # an existing pin, re-embedded
    write_parquet(
        f"{root}/new_pins",
        {
            "pin_id": pa.array(list(new), pa.int64()),
            "features": pa.array(list(new.values()), pa.list_(pa.float32())),
        },
    )
    new_edges = [
        (240, 1_000_001),
        (240, 1_000_002),
        (241, 1_000_003),
        (242, 1_000_001),
        (243, 1_000_039),
        (3, 1_000_010),
    ]
    write_parquet(
        f"{root}/new_edges",
        {
            "pin_id": pa.array([p for p, _ in new_edges], pa.int64()),
            "board_id": pa.array([b for _, b in new_edges], pa.int64()),
        },
    )
    assert (
        embed_new.main(
            [
                "--new-pins",
                f"{root}/new_pins",
                "--new-edges",
                f"{root}/new_edges",
                "--base",
                out,
                "--checkpoint",
                f"{root}/model.pt",
            ]
        )
        == 0
    )
    found["pin_embeddings after embed_new"] = table_values(spark, f"{out}/pin_embeddings", ["pin_id"])

    assert (
        train.main(
            [
                *graph,
                "--pairs",
                pairs,
                "--out",
                f"{root}/trained.pt",
                "--epochs",
                "2",
                "--batch-size",
                "64",
                "--negatives",
                "20",
                "--hard-negatives",
                "1",
                "--hidden-dim",
                "12",
                "--embed-dim",
                "6",
                "--workers",
                "0",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    found["trained checkpoint"] = state_values(f"{root}/trained.pt")

    return found


def test_every_output_equals_the_recorded_run(outputs):
    if os.environ.get("PINSAGE_GOLDEN_UPDATE"):
        np.savez_compressed(GOLDEN_VALUES, **{name: values for name, (_, values) in outputs.items()})
        print(json.dumps({name: digest for name, (digest, _) in outputs.items()}, indent=1))
    hashes = {name: digest for name, (digest, _) in outputs.items()}
    assert hashes == GOLDEN, "now:\n" + json.dumps(hashes, indent=1)
    recorded = np.load(GOLDEN_VALUES)
    assert sorted(recorded.files) == sorted(outputs)
    for name, (_, values) in outputs.items():
        np.testing.assert_allclose(values, recorded[name], rtol=0, atol=FLOAT_TOLERANCE, err_msg=name)
