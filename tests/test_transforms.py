"""The pure DataFrame transforms on a few hand-built rows, and which layers send their projections
through W_pool."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from jobs.lib import transforms
from jobs.lib.chain import through_w
from jobs.lib.inference import NEIGHBOR_ROW, OWN_ROW
from pinsage_model.config import LayerDims
from schemas import GATHERED, MERGED, NEIGHBORS, PARTIALS, PROJECTIONS


def test_board_set_is_every_board_named_by_a_link_table(spark):
    edges = spark.createDataFrame([(1, 10), (2, 10), (3, None)], "pin_id bigint, board_id bigint")
    bn = spark.createDataFrame([(11, 1, 1.0)], "board_id bigint, pin_id bigint, weight float")
    pn = spark.createDataFrame([(1, 12, 1.0), (2, 10, 1.0)], "pin_id bigint, board_id bigint, weight float")
    expected = spark.createDataFrame([(10,), (11,), (12,)], "board_id bigint")
    assert_df_equality(
        transforms.board_ids_from_links(edges, bn, pn), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_links_rename_and_drop_null_ids(spark):
    table = spark.createDataFrame(
        [(10, 1, 1.0), (10, 9, 2.0), (None, 1, 1.0), (11, None, 1.0)],
        "board_id bigint, pin_id bigint, weight float",
    )
    expected = spark.createDataFrame([(10, 1, 1.0), (10, 9, 2.0)], "dst bigint, src bigint, weight double")
    assert_df_equality(
        transforms.links(table, "board_id", "pin_id"), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_node_table_without_features_has_null_vectors(spark):
    boards = spark.createDataFrame([(10, None)], "board_id bigint, features array<float>")
    got = transforms.node_table(boards, "board_id", with_features=False)
    assert got.columns == ["node_id", "vec"] and got.collect()[0]["vec"] is None


def test_gather_puts_each_target_first_then_its_neighbors_in_order(spark):
    targets = spark.createDataFrame([(10, b"t10"), (11, b"t11")], "node_id bigint, vec binary")
    neighbors = spark.createDataFrame([(10, 2, 0.5), (10, 1, 1.5)], "dst bigint, src bigint, weight double")
    projections = spark.createDataFrame([(1, b"p1"), (2, b"p2"), (3, b"p3")], "src bigint, proj binary")
    rows = transforms.gather(targets, neighbors, projections)
    expected = spark.createDataFrame(
        [
            (10, OWN_ROW, None, None, b"t10", None),
            (10, NEIGHBOR_ROW, 1, 1.5, None, b"p1"),
            (10, NEIGHBOR_ROW, 2, 0.5, None, b"p2"),
            (11, OWN_ROW, None, None, b"t11", None),
        ],
        "dst bigint, kind byte, src bigint, weight double, self_vec binary, proj binary",
    )
    assert_df_equality(rows, expected, ignore_row_order=True, ignore_nullable=True)
    # Within a partition the rows of a target are contiguous and sorted.
    per_partition = rows.withColumn("part", F.spark_partition_id()).collect()
    for part in {r.part for r in per_partition}:
        keys = [(r.dst, r.kind, r.src or -1) for r in per_partition if r.part == part]
        assert keys == sorted(keys)


def test_transforms_produce_the_documented_internal_schemas(spark):
    def shape(df):
        return [(f.name, f.dataType) for f in df.schema.fields]

    table = spark.createDataFrame([(10, 1, 1.0)], "board_id bigint, pin_id bigint, weight float")
    neighbors = transforms.links(table, "board_id", "pin_id")
    assert shape(neighbors) == shape(spark.createDataFrame([], NEIGHBORS))
    targets = spark.createDataFrame([(10, b"t")], "node_id bigint, vec binary")
    projections = spark.createDataFrame([(1, b"p")], PROJECTIONS)
    for gathered in (
        transforms.gather(targets, neighbors, projections),
        transforms.gather(targets, neighbors, None),
    ):
        assert shape(gathered) == shape(spark.createDataFrame([], GATHERED))
    partials = spark.createDataFrame([(10, 0, 1, 1.0, b"a")], PARTIALS)
    merged = transforms.gather_parts(targets, partials)
    assert shape(merged) == shape(spark.createDataFrame([], MERGED))
    assert shape(transforms.part_rows(neighbors, 3, 1)) == shape(neighbors)


def test_memory_strings_read_as_spark_reads_them():
    assert transforms.memory_mb("4g") == 4096
    assert transforms.memory_mb("512m") == 512
    assert transforms.memory_mb("2048") == 2048, "no unit: MiB, as for spark.executor.memory"
    assert transforms.memory_mb("1T") == 2**20
    assert transforms.memory_mb("1536k") == 1.5
    with pytest.raises(ValueError, match="cannot read the memory size 'lots'"):
        transforms.memory_mb("lots")


def test_the_automatic_broadcast_bound_follows_the_memory_settings():
    def conf_of(values):
        return lambda key, default: values.get(key, default)

    # Local mode: the driver is the executor; one Python worker per local core besides the JVM.
    local = {"spark.driver.memory": "4g", "spark.driver.maxResultSize": "2g"}  # the local defaults
    bound, how = transforms.auto_broadcast_mb("local[*]", conf_of(local), 2)
    assert bound == 4096 / 3 and "4096 MB / (1 + 2 local cores)" in how
    bound, _ = transforms.auto_broadcast_mb("local[8]", conf_of({}), 8)
    assert bound == 1024 / 9, "Spark's 1g default driver memory"
    # The collect stays under spark.driver.maxResultSize (Spark's default 1g; 0: unlimited).
    local = {"spark.driver.memory": "8g"}
    bound, how = transforms.auto_broadcast_mb("local[2]", conf_of(local), 2)
    assert bound == 1024 * 0.9 and "90% of spark.driver.maxResultSize 1024 MB" in how
    bound, _ = transforms.auto_broadcast_mb(
        "local[2]", conf_of({**local, "spark.driver.maxResultSize": "0"}), 2
    )
    assert bound == 8192 / 3
    # A cluster: executor memory over its cores and the Python worker of each, or the driver's half.
    cluster = {"spark.driver.memory": "8g", "spark.executor.memory": "16g", "spark.executor.cores": "3"}
    cluster["spark.driver.maxResultSize"] = "8g"
    bound, how = transforms.auto_broadcast_mb("yarn", conf_of(cluster), 48)
    assert bound == 16384 / 4 and "(1 + 3 cores)" in how
    bound, _ = transforms.auto_broadcast_mb("yarn", conf_of({**cluster, "spark.driver.memory": "2g"}), 48)
    assert bound == 1024, "the driver collects the table first"
    # Without spark.executor.cores the job's whole parallelism is assumed: a small, safe bound.
    bound, _ = transforms.auto_broadcast_mb("k8s://x", conf_of({**cluster, "spark.executor.cores": ""}), 15)
    assert bound == 16384 / 16


def test_projections_over_the_bound_are_broadcast_in_parts_while_that_moves_less():
    mb = 2**20 / 4  # sources x hidden 1 x 4 bytes: `mb` sources make one MB
    # Within the bound: one broadcast; unknown counts or a zero bound: shuffled.
    assert transforms.projection_parts(int(10 * mb), 100, 10_000, 1, 10) == (1, 10.0)
    assert transforms.projection_parts(None, 100, 10_000, 1, 10)[0] == 0
    assert transforms.projection_parts(int(30 * mb), None, 10_000, 1, 10)[0] == 0
    assert transforms.projection_parts(int(30 * mb), 100, 10_000, 1, 0)[0] == 0
    # 30 MB against a 10 MB bound: parts of at most 98% of the bound, so 4.
    assert transforms.projection_parts(int(30 * mb), 100, 10**9, 1, 10) == (4, 30.0)
    assert transforms.projection_parts(int(29 * mb), 100, 10**9, 1, 10)[0] == 3
    # Only while a copy of the projections per executor and the parts' partial states (one per part
    # and target) are fewer vectors than the neighbor rows...
    sources = int(30 * mb)
    rows = sources + 4 * 2_500
    assert transforms.projection_parts(sources, 2_500, rows, 1, 10)[0] == 0
    assert transforms.projection_parts(sources, 2_499, rows, 1, 10)[0] == 4
    assert transforms.projection_parts(sources, 2_499, rows, 1, 10, executors=2)[0] == 0
    assert transforms.projection_parts(sources, 2_499, 2 * sources + 10_000, 1, 10, executors=2)[0] == 4
    # ... and the parts are at most MAX_BROADCAST_PARTS.
    most = transforms.MAX_BROADCAST_PARTS
    assert transforms.projection_parts(int(most * 9.8 * mb), 1, 10**12, 1, 10)[0] == most
    assert transforms.projection_parts(int((most * 9.8 + 1) * mb), 1, 10**12, 1, 10)[0] == 0


def test_neighbor_rows_are_broadcast_beside_the_projections_when_targets_have_vectors_and_both_fit():
    six_mb = 6 * 2**20 // transforms.NEIGHBOR_ROW_BYTES  # neighbor rows that make 6 MB on the driver
    assert six_mb * transforms.NEIGHBOR_ROW_BYTES == 6 * 2**20
    assert transforms.neighbors_fit(six_mb, 8, 4.0, 10)
    assert not transforms.neighbors_fit(six_mb + 1, 8, 4.0, 10)
    assert transforms.neighbors_fit(0, 1, 10.0, 10)
    assert not transforms.neighbors_fit(None, 8, 0.0, 10), "an unknown row count never fits"
    assert not transforms.neighbors_fit(0, 0, 0.0, 10), "targets without vectors of their own: rows shuffled"


def test_a_broadcast_reaches_one_executor_in_local_mode_and_cores_over_executor_cores_on_a_cluster():
    def conf_of(values):
        return lambda key, default: values.get(key, default)

    assert transforms.executor_count("local[*]", conf_of({}), 16) == 1
    assert transforms.executor_count("yarn", conf_of({"spark.executor.cores": "4"}), 48) == 12
    assert transforms.executor_count("yarn", conf_of({}), 48) == 48, "unknown cores: one per core"


def test_messages_go_through_w_pool_where_they_get_narrower_or_are_projected_fewer_times():
    narrower, same = LayerDims(8, 8, 6, 4), LayerDims(8, 8, 6, 6)
    assert through_w(True, narrower, None, None)  # narrower messages whatever the counts
    assert through_w(True, narrower, 1000, 10)
    assert not through_w(False, narrower, 10, 1000)  # max pooling
    assert not through_w(True, LayerDims(8, 8, 4, 6), 10, 1000)  # wider messages
    assert through_w(True, same, 10, 1000) and not through_w(True, same, 1000, 10)
    assert not through_w(True, same, None, 1000) and not through_w(True, same, 10, None)
