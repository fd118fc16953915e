"""Every job's output rows pinned by hash: a change of code layout must not change one bit of what
the pipeline computes. The chain runs on a small generated graph through each job's command line
(generate, init checkpoint, neighbors, embed, embed_new, train, evaluate); each output table's rows,
sorted by key, are hashed with ids as int64 and vector values as float32 bytes. A deliberate change
of the numbers updates GOLDEN in the same commit, with the reason."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest

from jobs import embed, embed_new, evaluate, neighborhoods, train
from jobs.demo import generate_graph, init_checkpoint
from pinsage_model.checkpoint import read_checkpoint
from tests.graphs import write_parquet

GOLDEN = {
    "board_neighbors": "aa7b14d86510b34d0910b6c671fa0c7038961bb5a6477d950e77f9e8e1561a3b",
    "pin_neighbors": "da8cbe8723022ec592563ef40bd0daf87ed75509d47423bcff54c61ef3e04f81",
    "pin_embeddings": "18230abd9fb8199a46cd2d4ccb7eaacc44d9f88601d7fc23a216f0072a41db4c",
    "board_embeddings": "30cc1d51891890cb7d041a50fc9a00fe4f6dea90661b0c696ee83e0bb541d5e4",
    "board_layers/layer_1": "ec0679aea7bca2543e2486c71e2b61552349a91a9e1d49c57286fffac13d314b",
    "pair_ranks": "01b37cdbff3650543794c7b7f4f8336c04def2edb8050232f2e15cbc05197a25",
    "pin_embeddings after embed_new": "f3773cf08dd98e389cd5505ea91dc99b1f55837bf8947ca360878188f490585c",
    "trained checkpoint": "855d02fd122232dab3a9f3bb4a7680ac96d895073949ac86c22097984bd36ba0",
}

WALK = ["--walks-per-node", "10", "--walk-length", "4", "--top-t", "8", "--walks-per-batch", "10"]


def table_hash(spark, path: str, key: list[str]) -> str:
    """sha256 of a Delta table's rows sorted by `key`: integer columns as int64, floating columns
    and float arrays as float32, strings as UTF-8, column by column in schema order."""
    df = spark.read.format("delta").load(path)
    rows = sorted(df.collect(), key=lambda r: tuple(r[k] for k in key))
    digest = hashlib.sha256()
    for row in rows:
        for field, value in zip(df.schema.fields, row, strict=True):
            kind = field.dataType.typeName()
            if kind == "array":
                digest.update(np.asarray(value, dtype=np.float32).tobytes())
            elif kind in ("float", "double"):
                digest.update(np.float32(value).tobytes())
            elif kind == "string":
                digest.update(value.encode())
            else:
                digest.update(np.int64(value).tobytes())
    return digest.hexdigest()


def state_hash(path: str) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(read_checkpoint(path).state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.to(dtype=tensor.dtype).contiguous().numpy().tobytes())
    return digest.hexdigest()


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
def hashes(spark, tmp_path_factory):
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
        "board_neighbors": table_hash(spark, f"{nbrs}/board_neighbors", ["board_id", "pin_id"]),
        "pin_neighbors": table_hash(spark, f"{nbrs}/pin_neighbors", ["pin_id", "board_id"]),
        "pin_embeddings": table_hash(spark, f"{out}/pin_embeddings", ["pin_id"]),
        "board_embeddings": table_hash(spark, f"{out}/board_embeddings", ["board_id"]),
        "board_layers/layer_1": table_hash(spark, f"{out}/board_layers/layer_1", ["board_id"]),
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
    found["pair_ranks"] = table_hash(spark, f"{root}/eval/pair_ranks", ["method", "query_pin", "pos_pin"])

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
    found["pin_embeddings after embed_new"] = table_hash(spark, f"{out}/pin_embeddings", ["pin_id"])

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
    found["trained checkpoint"] = state_hash(f"{root}/trained.pt")

    return found


def test_every_output_is_bit_identical_to_the_recorded_run(hashes):
    assert hashes == GOLDEN, "now:\n" + json.dumps(hashes, indent=1)
