"""The executor-side functions on hand-built Arrow batches, without Spark."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.lib.inference import (
    NEIGHBOR_ROW,
    OWN_ROW,
    Adjacency,
    BadFeaturesError,
    ModelRef,
    Projections,
    head_batches,
    pool_and_combine_batches,
    pool_local_batches,
    project_batches,
)
from jobs.lib.vectors import PROBLEM_BITS, feature_problems, to_binary, to_matrix
from tests.graphs import write_checkpoint


@dataclass
class FakeBroadcast:
    value: bytes


@pytest.fixture
def ref(tmp_path):
    path = write_checkpoint(
        str(tmp_path / "m.pt"), pin_feature_dim=3, board_feature_dim=2, hidden_dim=4, embed_dim=3
    )
    data = open(path, "rb").read()
    import hashlib

    weights = {k: v.double().numpy() for k, v in torch.load(path, weights_only=True)["state_dict"].items()}
    return ModelRef(FakeBroadcast(data), hashlib.sha256(data).hexdigest(), "cpu"), weights


def relu(x):
    return np.maximum(x, 0)


def normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def node_batch(ids, vectors) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.int64()), to_binary(np.asarray(vectors))], ["node_id", "vec"]
    )


def test_project_matches_the_layer_formula(ref):
    model_ref, w = ref
    x = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [3.0, 1.0, -1.0]], dtype=np.float32)
    (out,) = list(project_batches(iter([node_batch([5, 6, 7], x)]), model_ref, k=1))
    expected = relu(x @ w["convs.0.Q.weight"].T + w["convs.0.Q.bias"])
    assert out.column("src").to_pylist() == [5, 6, 7]
    np.testing.assert_allclose(to_matrix(out.column("proj"), 4), expected, atol=1e-6)


def test_project_handles_empty_iterator_and_empty_batch(ref):
    model_ref, _ = ref
    assert list(project_batches(iter([]), model_ref, k=1)) == []
    (out,) = list(project_batches(iter([node_batch([], np.zeros((0, 3)))]), model_ref, k=1))
    assert out.num_rows == 0 and out.schema.names == ["src", "proj"]


def test_project_checks_input_features_when_asked(ref):
    model_ref, w = ref
    x = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], dtype=np.float32)
    good = pa.RecordBatch.from_arrays(
        [pa.array([5, 6], pa.int64()), pa.array(x.tolist(), pa.list_(pa.float32()))], ["node_id", "vec"]
    )
    (checked,) = list(project_batches(iter([good]), model_ref, k=1, check_dim=3))
    (plain,) = list(project_batches(iter([good]), model_ref, k=1))
    assert checked.equals(plain)
    for bad, problem in [
        ([[1.0, 2.0, float("nan")], [0.0, 0.0, 0.0]], "problem bits 16"),
        ([[1.0, 2.0, 3.0], None], "node 6 has problem bits 2"),
        ([[1.0, 2.0, 3.0], [1.0, 2.0]], "length 2"),
        ([[1.0, 2.0, 3.0], [1.0, None, 2.0]], "node 6 has problem bits 4"),
    ]:
        batch = pa.RecordBatch.from_arrays(
            [pa.array([5, 6], pa.int64()), pa.array(bad, pa.list_(pa.float32()))], ["node_id", "vec"]
        )
        with pytest.raises(BadFeaturesError, match=f"1 of 2 rows .*{problem}"):
            list(project_batches(iter([batch]), model_ref, k=1, check_dim=3))


def test_feature_problems_flags_each_row_with_its_problems():
    good = [0.5, 0.5, 0.5]
    ids = pa.array([1, None, 3, 4, 5, 6, 7], pa.int64())
    features = [good, good, None, [0.5, None, 0.5], [0.5, 0.5], [0.5, float("nan"), 0.5], [float("inf")] * 3]
    problems, lengths = feature_problems(ids, pa.array(features, pa.list_(pa.float32())), 3)
    bits = PROBLEM_BITS
    expected = [0, bits["null_ids"], bits["null_features"], bits["null_elements"], bits["wrong_length"]]
    assert problems.tolist() == [*expected, bits["non_finite"], bits["non_finite"]]
    assert lengths.tolist() == [3, 3, -1, 3, 2, 3, 3]
    clean, _ = feature_problems(ids[:1], pa.array([good], pa.list_(pa.float32())), 3)
    assert clean.tolist() == [0]


def gathered_rows():
    """Targets 10 (3 neighbors), 11 (none), 12 (2 neighbors), sorted by (dst, kind, src)."""
    rng = np.random.default_rng(0)
    rows = []
    for dst, n in ((10, 3), (11, 0), (12, 2)):
        rows.append((dst, OWN_ROW, None, None, rng.normal(size=2).astype(np.float32), None))
        for src in range(n):
            rows.append(
                (dst, NEIGHBOR_ROW, src, float(rng.uniform(0.5, 2)), None, rng.random(4).astype(np.float32))
            )
    return rows


def to_batch(rows) -> pa.RecordBatch:
    def vecs(i):
        return pa.array([None if r[i] is None else r[i].tobytes() for r in rows], pa.binary())

    return pa.RecordBatch.from_arrays(
        [
            pa.array([r[0] for r in rows], pa.int64()),
            pa.array([r[1] for r in rows], pa.int8()),
            pa.array([r[2] for r in rows], pa.int64()),
            pa.array([r[3] for r in rows], pa.float64()),
            vecs(4),
            vecs(5),
        ],
        ["dst", "kind", "src", "weight", "self_vec", "proj"],
    )


def expected_layer_1(rows, w):
    out = {}
    for dst in sorted({r[0] for r in rows}):
        own = next(r[4] for r in rows if r[0] == dst and r[1] == OWN_ROW).astype(np.float64)
        nbrs = [(r[3], r[5].astype(np.float64)) for r in rows if r[0] == dst and r[1] == NEIGHBOR_ROW]
        total = sum(x for x, _ in nbrs)
        pooled = sum(x / total * m for x, m in nbrs) if nbrs else np.zeros(4)
        out[dst] = normalize(
            relu(w["convs.0.W.weight"] @ np.concatenate([own, pooled]) + w["convs.0.W.bias"])
        )
    return out


def collect(batches) -> dict[int, np.ndarray]:
    result = {}
    for b in batches:
        for node, vec in zip(b.column("node_id").to_pylist(), to_matrix(b.column("vec"), 3), strict=True):
            assert node not in result, f"target {node} emitted twice"
            result[node] = vec
    return result


def test_pool_and_combine_matches_the_layer_formula(ref):
    model_ref, w = ref
    rows = gathered_rows()
    got = collect(pool_and_combine_batches(iter([to_batch(rows)]), model_ref, k=1))
    expected = expected_layer_1(rows, w)
    assert sorted(got) == [10, 11, 12]
    for dst, vec in expected.items():
        np.testing.assert_allclose(got[dst], vec, atol=1e-6)


def test_pool_and_combine_with_the_head_gives_the_published_rows(ref):
    model_ref, w = ref
    rows = gathered_rows()
    pieces = [to_batch(rows[i : i + 2]) for i in range(0, len(rows), 2)]  # targets split across batches
    out = pa.Table.from_batches(pool_and_combine_batches(iter(pieces), model_ref, k=1, with_head=True))
    assert out.schema.names == ["pin_id", "embedding"] and out.column("pin_id").to_pylist() == [10, 11, 12]
    for dst, h in expected_layer_1(rows, w).items():
        z = w["head.G2.weight"] @ relu(w["head.G1.weight"] @ h + w["head.G1.bias"])
        got = np.array(out.column("embedding")[out.column("pin_id").to_pylist().index(dst)].as_py())
        np.testing.assert_allclose(got, normalize(z), atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_targets_split_across_batches_give_the_same_result(ref, size):
    model_ref, _ = ref
    rows = gathered_rows()
    whole = collect(pool_and_combine_batches(iter([to_batch(rows)]), model_ref, k=1))
    pieces = [to_batch(rows[i : i + size]) for i in range(0, len(rows), size)]
    pieces.insert(1, to_batch([]))  # an empty batch in the middle of a partition
    split = collect(pool_and_combine_batches(iter(pieces), model_ref, k=1))
    assert sorted(split) == sorted(whole)
    for dst in whole:
        np.testing.assert_allclose(split[dst], whole[dst], atol=1e-7)


def test_broadcast_projections_give_the_same_result_and_drop_unknown_sources(ref):
    model_ref, w = ref
    rows = gathered_rows()
    whole = collect(pool_and_combine_batches(iter([to_batch(rows)]), model_ref, k=1))
    # The same rows without vectors, plus a row naming source 77, which is not a node.
    table = {}
    thin = []
    for r in rows:
        if r[1] == NEIGHBOR_ROW:
            table[(r[0], r[2])] = r[5]
    sources = sorted({src for _, src in table})
    # Each (dst, src) pair has its own vector in gathered_rows; give every row its own source id.
    ids = np.arange(len(table), dtype=np.int64) * 3 + 1
    key_to_id = dict(zip(sorted(table), ids, strict=True))
    matrix = np.stack([table[key] for key in sorted(table)])
    for r in rows:
        thin.append(
            r if r[1] == OWN_ROW else (r[0], NEIGHBOR_ROW, int(key_to_id[(r[0], r[2])]), r[3], None, None)
        )
    thin.insert(2, (10, 1, 77, 5.0, None, None))
    assert sources  # the fixture has neighbor rows
    pooled = Counter()
    for size, projections in (
        (len(thin), FakeBroadcast(Projections(ids, matrix))),  # binary search
        (1, FakeBroadcast(Projections.build(ids[::-1], matrix[::-1]))),  # dense table (asserted below)
        (3, FakeBroadcast(Projections.build(ids, matrix))),
    ):
        assert (projections.value.dense is None) == (size == len(thin))
        batches = [to_batch(thin[i : i + size]) for i in range(0, len(thin), size)]
        got = collect(
            pool_and_combine_batches(iter(batches), model_ref, k=1, pooled=pooled, projections=projections)
        )
        assert sorted(got) == sorted(whole)
        for dst in whole:
            np.testing.assert_allclose(got[dst], whole[dst], atol=1e-7)
    assert pooled.value == 3 * 5, "the row with unknown source 77 is not pooled"


def test_adjacency_gives_each_target_its_rows_in_sorted_order_without_unknown_sources():
    rng = np.random.default_rng(4)
    sources = np.array([3, 9, 4, 20, 7], dtype=np.int64)
    table = Projections.build(sources, rng.random((5, 2), dtype=np.float32))
    dst = rng.choice([10, 11, 13, 15], size=40)
    src = rng.choice([*sources, 99], size=40)  # 99 names no source
    weight = rng.choice([0.5, 1.0, 2.0], size=40)
    adjacency = Adjacency.build(dst, src, weight, table)
    ids = np.array([15, 12, 10, 13, 10], dtype=np.int64)  # any order; 12 has no rows; 10 twice
    segment, index, weights, counts = adjacency.rows_of(ids)
    for i, target in enumerate(ids):
        mine = [(s, w) for d, s, w in zip(dst, src, weight, strict=True) if d == target and s != 99]
        assert counts[i] == len(mine)
        got = list(zip(table.ids[index[segment == i]], weights[segment == i], strict=True))
        assert got == sorted(mine), "a target's rows come together, sorted by (src, weight)"
    assert (np.diff(segment) >= 0).all()
    empty = Adjacency.build(dst[:0], src[:0], weight[:0], table)
    assert [len(x) for x in empty.rows_of(ids)] == [0, 0, 0, len(ids)] and not empty.rows_of(ids)[3].any()


@pytest.mark.parametrize("size", [1, 2, 3])
def test_broadcast_neighbor_rows_give_what_the_shuffled_rows_give(ref, size):
    """The layer as a map over the targets (projections and neighbor rows broadcast) against the
    sorted, gathered rows: the same vectors, the same counts, unknown sources and targets without
    rows handled alike, and targets in any order."""
    model_ref, w = ref
    rows = gathered_rows()
    whole = collect(pool_and_combine_batches(iter([to_batch(rows)]), model_ref, k=1))
    ids = np.array([r[2] * 100 + r[0] for r in rows if r[1] == NEIGHBOR_ROW], dtype=np.int64)
    matrix = np.stack([r[5] for r in rows if r[1] == NEIGHBOR_ROW])
    table = Projections.build(ids, matrix)
    neighbor = [(r[0], r[2] * 100 + r[0], r[3]) for r in rows if r[1] == NEIGHBOR_ROW]
    neighbor += [(10, 77, 5.0), (99, ids[0], 1.0)]  # an unknown source, and a target that is not a node
    dst, src, weight = (np.array(c) for c in zip(*neighbor, strict=True))
    adjacency = FakeBroadcast(Adjacency.build(dst, src.astype(np.int64), weight, table))
    own = [(r[0], r[4]) for r in rows if r[1] == OWN_ROW][::-1]
    batches = [
        node_batch([i for i, _ in own[j : j + size]], [v for _, v in own[j : j + size]])
        for j in range(0, 3, size)
    ]
    written, pooled = Counter(), Counter()
    got = collect(
        pool_local_batches(
            iter(batches), model_ref, 1, FakeBroadcast(table), adjacency, written=written, pooled=pooled
        )
    )
    assert sorted(got) == sorted(whole)
    for dst_id in whole:
        np.testing.assert_allclose(got[dst_id], whole[dst_id], atol=1e-7)
    assert (written.value, pooled.value) == (3, 5), "targets 10, 11 and 12 written; 5 known rows pooled"


@pytest.mark.parametrize(
    "ids",
    [
        np.array([7, 3, 4, 12], dtype=np.int64),  # dense: a direct position table
        np.array([5, -(2**62), 2**62, 0], dtype=np.int64),  # sparse: binary search
        np.array([2**63 - 4, 2**63 - 1, 2**63 - 2], dtype=np.int64),  # dense at the top of int64
    ],
)
def test_projection_lookup_finds_known_ids_and_only_those(ids):
    matrix = np.arange(len(ids) * 2, dtype=np.float32).reshape(len(ids), 2)
    table = Projections.build(ids, matrix)
    assert (table.dense is not None) == (int(ids.max()) - int(ids.min()) < 4 * len(ids))
    extreme = np.iinfo(np.int64)
    queries = np.array([*ids, extreme.min, extreme.max, -1, 6, 2**62 + 1, int(ids.min()) - 1], dtype=np.int64)
    pos, found = table.lookup(queries)
    expected = np.isin(queries, ids)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(table.ids[pos[found]], queries[found])
    # Each found id maps to its own projection row.
    row_of = {int(i): matrix[j] for j, i in enumerate(ids)}
    for q, p in zip(queries[found], pos[found], strict=True):
        np.testing.assert_array_equal(table.matrix[p], row_of[int(q)])
    empty = Projections.build(np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    assert not empty.lookup(queries)[1].any()


def test_pool_and_combine_handles_empty_iterator(ref):
    model_ref, _ = ref
    assert list(pool_and_combine_batches(iter([]), model_ref, k=1)) == []
    assert list(pool_and_combine_batches(iter([to_batch([])]), model_ref, k=1)) == []


def test_neighbor_rows_of_an_unknown_target_are_dropped_and_counted(ref):
    model_ref, w = ref
    rows = gathered_rows()
    orphan = [r for r in rows if not (r[0] == 12 and r[1] == OWN_ROW)]  # target 12 is not a node
    written, pooled = Counter(), Counter()
    for size in (len(orphan), 2):  # whole, and split so the orphan straddles batches
        batches = [to_batch(orphan[i : i + size]) for i in range(0, len(orphan), size)]
        got = collect(pool_and_combine_batches(iter(batches), model_ref, k=1, written=written, pooled=pooled))
        assert sorted(got) == [10, 11]
        expected = expected_layer_1(rows, w)
        np.testing.assert_allclose(got[10], expected[10], atol=1e-6)
    assert written.value == 2 * 2 and pooled.value == 2 * 3, (
        "targets 10, 11 written; target 10's 3 rows pooled"
    )


class Counter:
    """Stands in for a Spark accumulator."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int) -> None:
        self.value += n


def test_head_matches_the_head_formula(ref):
    model_ref, w = ref
    h = normalize(np.random.default_rng(1).normal(size=(4, 3))).astype(np.float32)
    (out,) = list(head_batches(iter([node_batch([1, 2, 3, 4], h)]), model_ref))
    z = relu(h @ w["head.G1.weight"].T + w["head.G1.bias"]) @ w["head.G2.weight"].T
    np.testing.assert_allclose(np.array(out.column("embedding").to_pylist()), normalize(z), atol=1e-6)
    assert list(head_batches(iter([]), model_ref)) == []


def test_device_cuda_without_a_gpu_is_a_clear_error(ref):
    model_ref, _ = ref
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cuda_ref = ModelRef(model_ref.checkpoint, model_ref.sha256, "cuda")
    with pytest.raises(RuntimeError, match="this executor cannot use it: no CUDA device"):
        list(project_batches(iter([node_batch([1], np.zeros((1, 3)))]), cuda_ref, k=1))
