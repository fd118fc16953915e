"""jobs/related.py on Spark: the exact table against a numpy brute force, the inverted file's recall,
tables that do not depend on partitioning, the index that lookups read, and bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import related
from jobs.demo.generate_graph import GraphSpec, generate
from jobs.lib.cli import CommonArgs
from jobs.lib.io import last_commit, read_delta
from jobs.lib.vectors import to_list
from pinsage_model.related import related_for
from tests.test_evaluate import snapshot


def write_embeddings(path: str, ids, vectors, files: int = 1) -> str:
    """pin_embeddings as Parquet, split into `files` files (a different input partitioning)."""
    os.makedirs(path)
    ids, vectors = np.asarray(ids), np.asarray(vectors, dtype=np.float32)
    for f, part in enumerate(np.array_split(np.arange(len(ids)), files)):
        table = pa.table({"pin_id": pa.array(ids[part], pa.int64()), "embedding": to_list(vectors[part])})
        pq.write_table(table, f"{path}/part-{f:05d}.parquet")
    return path


def expected(ids, vectors, k):
    """{pin_id: [(related_pin_id, score), ...]} by sorting every other pin on (-stored score, id),
    the stored score being the float64 cosine rounded to a multiple of 2**-24."""
    v = np.asarray(vectors, dtype=np.float64)
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    out = {}
    for i, pin in enumerate(ids):
        scored = sorted(
            (-round(float(unit[i] @ unit[j]) * 2**24), int(other)) for j, other in enumerate(ids) if j != i
        )[:k]
        out[int(pin)] = [(other, -step / 2**24) for step, other in scored]
    return out


def table_lists(spark, path):
    rows = read_delta(spark, path).orderBy("pin_id", "rank").collect()
    lists = {}
    for r in rows:
        lists.setdefault(r["pin_id"], []).append((r["related_pin_id"], r["score"]))
        assert r["rank"] == len(lists[r["pin_id"]])
    return lists


def run_job(spark, embeddings, out, shuffle_partitions="4", **params):
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", shuffle_partitions)
    try:
        return related.run(spark, related.RelatedArgs(embeddings, out, common=CommonArgs(), **params))
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)


def test_exact_matches_a_brute_force_with_ties_zero_vectors_and_a_short_catalogue(spark, tmp_path):
    # 12 has 10's vector and 13 twice it (ties, broken by the smaller id); 14 is a zero vector (it
    # scores 0 against everything); 15 is orthogonal to 10.
    ids = [10, 11, 12, 13, 14, 15, 16]
    vectors = [[1, 0, 0], [0.6, 0.8, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0], [0, 1, 0], [-1, 0.5, 0.5]]
    one_file = write_embeddings(str(tmp_path / "one"), ids, vectors)
    three_files = write_embeddings(str(tmp_path / "three"), ids, vectors, files=3)
    # K beyond the catalogue: every other pin; two query blocks of four pins.
    run_job(spark, three_files, str(tmp_path / "blocks"), "3", top_k=10, query_block_mb=0.0001)
    got = table_lists(spark, str(tmp_path / "blocks/related_pins"))
    want = expected(ids, vectors, 10)
    assert {p: [r for r, _ in rows] for p, rows in got.items()} == {
        p: [r for r, _ in w] for p, w in want.items()
    }
    for pin, rows in got.items():
        assert [s for _, s in rows] == pytest.approx([s for _, s in want[pin]], abs=1e-7)
    assert got[10][:3] == [(12, 1.0), (13, 1.0), (11, pytest.approx(0.6))]
    # One block, another partitioning, K = 3: the first three of the same lists.
    report = run_job(spark, one_file, str(tmp_path / "single"), "5", top_k=3, show=2)
    assert table_lists(spark, str(tmp_path / "single/related_pins")) == {
        p: rows[:3] for p, rows in got.items()
    }
    assert report.shown == {10: got[10][:3], 11: got[11][:3]}


def test_ann_recall_lookups_index_and_partitioning(spark, tmp_path):
    pins = generate(GraphSpec(pins=1500, boards=10, topics=15, seed=4))["pins"]
    ids = pins.column("pin_id").to_numpy()
    vectors = np.array(pins.column("features").to_pylist(), dtype=np.float32)
    params = {"method": "ann", "top_k": 10, "lists": 16, "probes": 3, "sample": 800, "seed": 1}
    report = run_job(
        spark, write_embeddings(str(tmp_path / "e1"), ids, vectors), str(tmp_path / "a"), **params
    )
    run_job(
        spark,
        write_embeddings(str(tmp_path / "e5"), ids, vectors, files=5),
        str(tmp_path / "b"),
        "3",
        **params,
    )
    got = table_lists(spark, str(tmp_path / "a/related_pins"))
    assert got == table_lists(spark, str(tmp_path / "b/related_pins"))

    want = expected(ids, vectors, 10)
    recall = np.mean([len({r for r, _ in got[p]} & {r for r, _ in want[p]}) / 10 for p in want])
    assert recall >= 0.95, recall
    assert report.index["pairs_scored"] * 3 < 1500 * 1499  # well under the exact pairs

    index = str(tmp_path / "a/related_index")
    found, scores = related_for(index, vectors[:50], 10, exclude=ids[:50])
    for i in range(50):
        assert list(zip(found[i].tolist(), scores[i].tolist(), strict=True)) == got[int(ids[i])]
    with open(f"{index}/index.json") as f:
        meta = json.load(f)
    record = last_commit(spark, str(tmp_path / "a/related_pins"))["metadata"]
    assert meta["run_id"] == record["run_id"] == report.run_id
    assert (meta["lists"], meta["probes"], meta["dim"], meta["faiss_version"]) == (16, 3, 32, "1.15.1")
    assert record["inputs"]["pin_embeddings"]["format"] == "parquet" and record["method"] == "ann"

    # --queries: only those pins get lists, each the one the full run gives it (every pin a candidate).
    chosen = ids[::7]
    queries = str(tmp_path / "queries")
    os.makedirs(queries)
    pq.write_table(pa.table({"pin_id": np.r_[chosen, chosen[:5]].astype(np.int32)}), f"{queries}/q.parquet")
    e1 = str(tmp_path / "e1")
    subset = run_job(spark, e1, str(tmp_path / "qa"), "3", queries=queries, **params)
    assert table_lists(spark, str(tmp_path / "qa/related_pins")) == {int(p): got[int(p)] for p in chosen}
    assert subset.inputs["queries"] == len(chosen)
    assert subset.index["exact_pairs"] == len(chosen) * 1499
    assert subset.index["pairs_scored"] < report.index["pairs_scored"] / 5
    run_job(spark, e1, str(tmp_path / "qe"), top_k=10, queries=queries, query_block_mb=0.001)
    exact = table_lists(spark, str(tmp_path / "qe/related_pins"))
    assert {p: [r for r, _ in rows] for p, rows in exact.items()} == {
        int(p): [r for r, _ in want[int(p)]] for p in chosen
    }


NULL_VECTOR = ([1, 2], [[1.0, 0.0], None], "table 'pin_embeddings', column 'embedding': 1 rows have NULL")
RAGGED = ([1, 2], [[1.0, 0.0], [1.0]], "column 'embedding': 1 rows do not have length 2")
NAN = ([1, 2], [[1.0, 0.0], [float("nan"), 1.0]], "column 'embedding': 1 rows have NaN or Inf")
DUPLICATE = ([1, 1], [[1.0, 0.0], [0.0, 1.0]], "table 'pin_embeddings', column 'pin_id': duplicate ids")
FEW_PINS = ([1, 2], [[1.0, 0.0], [0.0, 1.0]], "table 'pin_embeddings': has 2 pins, fewer than --lists 3")


@pytest.mark.parametrize(("ids", "vectors", "message"), [NULL_VECTOR, RAGGED, NAN, DUPLICATE, FEW_PINS])
def test_bad_input_exits_2_naming_table_and_column_and_writes_nothing(
    spark, tmp_path, capsys, ids, vectors, message
):
    path = str(tmp_path / "emb")
    os.makedirs(path)
    table = pa.table(
        {"pin_id": pa.array(ids, pa.int64()), "embedding": pa.array(vectors, pa.list_(pa.float32()))}
    )
    pq.write_table(table, f"{path}/part-0.parquet")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier output")
    before = snapshot(str(out))
    argv = ["--embeddings", path, "--out", str(out), "--method", "ann", "--lists", "3", "--sample", "3"]
    assert related.main([*argv, "--probes", "1"]) == 2
    assert message in capsys.readouterr().err
    assert snapshot(str(out)) == before


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([1, 5, 6], "table 'queries', column 'pin_id': 2 ids are not pins of pin_embeddings (e.g. 5, 6)"),
        ([1, None], "table 'queries', column 'pin_id': 1 rows have a NULL id"),
        ([], "table 'queries': has no rows"),
    ],
)
def test_bad_queries_exit_2_and_write_nothing(spark, tmp_path, capsys, ids, message):
    embeddings = write_embeddings(str(tmp_path / "emb"), [1, 2, 3], [[1, 0], [0, 1], [1, 1]])
    queries = str(tmp_path / "queries")
    os.makedirs(queries)
    pq.write_table(pa.table({"pin_id": pa.array(ids, pa.int64())}), f"{queries}/q.parquet")
    out = tmp_path / "out"
    assert related.main(["--embeddings", embeddings, "--out", str(out), "--queries", queries]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", "0"], "argument --top-k: must be at least 1, got 0"),
        (["--lists", "4", "--probes", "5"], "--probes (5) must not exceed --lists (4)"),
        (["--lists", "10", "--probes", "1", "--sample", "9"], "--sample (9) must be at least --lists (10)"),
        (["--method", "lsh"], "argument --method: invalid choice: 'lsh'"),
    ],
)
def test_bad_parameters_are_usage_errors_naming_the_flag(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        related.parse_args(["--embeddings", "e", "--out", "o", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_exact_lists_hold_the_pairs_the_evaluation_ranks_within_k_wherever_no_score_ties_the_kth(
    spark, tmp_path
):
    from jobs.lib.evaluation.ranking import rank_by_similarity

    # Small integer vectors tie often (equal and parallel ones); normal ones almost never.
    rng = np.random.default_rng(7)
    vectors = np.vstack([rng.integers(-2, 3, size=(20, 3)), rng.normal(size=(20, 3))]).astype(np.float32)
    ids = np.arange(100, 140)
    k = 5
    pair_list = [(int(q), int(p)) for q in ids for p in ids if q != p]
    pairs_path = str(tmp_path / "pairs")
    os.makedirs(pairs_path)
    pq.write_table(
        pa.table({"query_pin": [q for q, _ in pair_list], "pos_pin": [p for _, p in pair_list]}),
        f"{pairs_path}/p.parquet",
    )
    embeddings = write_embeddings(str(tmp_path / "e"), ids, vectors)
    report = run_job(spark, embeddings, str(tmp_path / "r"), top_k=k, pairs=pairs_path)
    # Every pin has k other pins listed: k of its 39 pairs are hits.
    assert report.hits == {"pairs": 40 * 39, f"hit@{k}": pytest.approx(k / 39)}
    lists = {
        p: {r for r, _ in rows} for p, rows in table_lists(spark, str(tmp_path / "r/related_pins")).items()
    }

    table = spark.createDataFrame(pa.table({"pin_id": pa.array(ids), "vec": to_list(vectors)}))
    pairs = spark.createDataFrame(pair_list, "query_pin long, pos_pin long")
    ranks = rank_by_similarity("embedding", table, 3, table, pairs, pairs.count(), 1.0)
    rank = {(r["query_pin"], r["pos_pin"]): r["rank"] for r in ranks.collect()}

    # Tie-free at the K-th: the K-th and (K+1)-th best float64 cosines of the query differ by more
    # than the related order's score step (2**-24), so both orders agree on which pins are the top K.
    unit = vectors.astype(np.float64) / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    checked = {True: 0, False: 0}
    for i, q in enumerate(ids):
        others = np.sort(np.delete(unit @ unit[i], i))[::-1]
        if others[k - 1] - others[k] <= 2.0**-24:
            continue
        for p in ids:
            if p != q:
                in_list = int(p) in lists[int(q)]
                assert in_list == (rank[(int(q), int(p))] <= k), (q, p, rank[(int(q), int(p))])
                checked[in_list] += 1
    # Enough of both kinds to fail on a wrong list or a wrong rank; some queries were skipped for ties.
    assert checked[True] >= 5 * k and checked[False] >= 100, checked
    assert sum(checked.values()) < len(rank)


def test_related_hits_count_a_pair_whose_positive_is_listed_within_k(spark):
    from jobs.lib.related import RELATED_DDL, related_hits

    rows = [(1, 1, 2, 0.9), (1, 2, 3, 0.8), (1, 3, 4, 0.7), (2, 1, 1, 0.9), (2, 2, 4, 0.5)]
    related_table = spark.createDataFrame(rows, RELATED_DDL)
    # (1, 3) at rank 2, (1, 4) at rank 3, (2, 3) not listed, (9, 1): no list; (1, 3) twice is one pair.
    pairs = spark.createDataFrame([(1, 3), (1, 3), (1, 4), (2, 3), (9, 1)], "query_pin long, pos_pin long")
    assert related_hits(related_table, pairs, [2, 3]) == {"pairs": 4, "hit@2": 0.25, "hit@3": 0.5}
