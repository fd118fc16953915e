"""The walk transforms and runner on hand-built graphs: deduplicated memberships, both directions,
bounded buckets for hubs, each walker on exactly one node, top-t with ties to the smaller id, and a
walk from a subset of sources equal to the same walk from all."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality

from jobs.lib import walks

MEMBERSHIPS = "pin_id bigint, board_id bigint, weight double"


def test_memberships_drop_null_ids_and_keep_the_largest_weight_of_a_repeated_pair(spark):
    edges = spark.createDataFrame(
        [(1, 10, 1.0), (1, 10, 3.0), (2, 10, 1.0), (None, 10, 1.0), (3, None, 1.0)], MEMBERSHIPS
    )
    expected = spark.createDataFrame([(1, 10, 3.0), (2, 10, 1.0)], MEMBERSHIPS)
    assert_df_equality(walks.memberships(edges), expected, ignore_row_order=True, ignore_nullable=True)


def test_undirected_lists_each_membership_from_both_ends(spark):
    edges = spark.createDataFrame([(1, 10, 2.0)], MEMBERSHIPS)
    expected = spark.createDataFrame(
        [(walks.PIN, 1, walks.BOARD, 10, 2.0), (walks.BOARD, 10, walks.PIN, 1, 2.0)],
        "node_t int, node bigint, nbr_t int, nbr bigint, weight double",
    )
    assert_df_equality(walks.undirected(edges), expected, ignore_row_order=True, ignore_nullable=True)


def test_node_stats_give_degree_and_total_weight(spark):
    edges = spark.createDataFrame([(1, 10, 2.0), (2, 10, 0.5)], MEMBERSHIPS)
    got = {(r.node_t, r.node): (r.deg, r.total) for r in walks.node_stats(walks.undirected(edges)).collect()}
    assert got == {(walks.PIN, 1): (1, 2.0), (walks.PIN, 2): (1, 0.5), (walks.BOARD, 10): (2, 2.5)}


def test_bucket_intervals_split_the_unit_range_by_weight(spark):
    edges = spark.createDataFrame([(1, 10, 1.0), (2, 10, 3.0)], MEMBERSHIPS)
    adjacency = walks.undirected(edges)
    table = walks.buckets(adjacency, walks.node_stats(adjacency))
    board = sorted(
        (r.bucket, r.nbr, r.lo, r.hi) for r in table.where(f"node_t = {walks.BOARD} AND node = 10").collect()
    )
    # pin 1 holds [0, 0.25), pin 2 [0.25, 1) (its hi is 2.0: the last interval is open above);
    # two buckets of width 0.5: bucket 0 meets both intervals, bucket 1 only pin 2's.
    assert board == [(0, 1, 0.0, 0.25), (0, 2, 0.25, 2.0), (1, 2, 0.25, 2.0)]


def test_hub_adjacency_is_bucketed_and_each_walker_meets_one_row(spark):
    edges = walks.memberships(
        spark.createDataFrame(
            [(p, 1000, 1.0) for p in range(1, 3000)] + [(0, 1000, 5000.0), (1, 2000, 1.0), (2, 2000, 1.0)],
            MEMBERSHIPS,
        )
    )
    adjacency = walks.undirected(edges)
    stats = walks.node_stats(adjacency).cache()
    table = walks.buckets(adjacency, stats).cache()
    hub_rows = table.where(f"node_t = {walks.BOARD} AND node = 1000").count()
    assert hub_rows <= 2 * 3000, "a node lists at most 2 * degree bucket rows"
    walkers = walks.start_walkers(stats, range(0, 3))
    for s in range(1, 4):
        walkers = walks.step(walkers, table, walks.WalkParams(restart_prob=0.3), s)
    assert walkers.count() == stats.count() * 3, "a step must move each walker to exactly one node"
    assert walkers.where("cur IS NULL").count() == 0


def test_visits_record_only_nodes_of_the_other_type_or_with_same_type_the_own_type(spark):
    edges = spark.createDataFrame([(1, 10, 1.0), (2, 10, 1.0)], MEMBERSHIPS)
    adjacency = walks.undirected(edges)
    stats = walks.node_stats(adjacency)
    table = walks.buckets(adjacency, stats)
    params = walks.WalkParams(restart_prob=0.0)
    for same_type in (False, True):
        walkers = walks.start_walkers(stats, range(0, 2))
        for s in range(1, 3):
            walkers = walks.step(walkers, table, params, s, same_type)
        for r in walkers.collect():
            for visited in r.visits:
                if same_type:  # two steps from a pin land on a pin, never the source itself
                    assert r.src_t == walks.PIN and visited != r.src
                else:
                    assert (r.src_t, visited) in ((walks.PIN, 10), (walks.BOARD, 1), (walks.BOARD, 2))


def test_top_neighbors_keep_the_top_t_with_ties_to_the_smaller_id(spark):
    counts = spark.createDataFrame(
        [(walks.BOARD, 10, 5, 4), (walks.BOARD, 10, 3, 2), (walks.BOARD, 10, 1, 2), (walks.PIN, 1, 10, 7)],
        "src_t int, src bigint, visited bigint, count bigint",
    )
    tables = walks.top_neighbor_tables(counts, top_t=2)
    board = spark.createDataFrame(
        [(10, 5, 4 / 6), (10, 1, 2 / 6)], "board_id bigint, pin_id bigint, weight float"
    )
    pin = spark.createDataFrame([(1, 10, 1.0)], "pin_id bigint, board_id bigint, weight float")
    assert_df_equality(tables["board_neighbors"], board, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(tables["pin_neighbors"], pin, ignore_row_order=True, ignore_nullable=True)


def test_walking_from_a_subset_of_sources_gives_them_what_walking_from_all_gives(spark, tmp_path):
    edges = spark.createDataFrame(
        [(1, 10, 1.0), (2, 10, 2.0), (2, 11, 1.0), (3, 11, 1.0), (3, 12, 0.5), (4, 12, 1.0)], MEMBERSHIPS
    )
    graph = walks.build_walk_graph(edges, str(tmp_path / "graph"))
    params = walks.WalkParams(walks_per_node=4, walk_length=2, seed=7)
    every = walks.run_walks(graph, params, 1, str(tmp_path / "all"))  # four batches
    sources = spark.createDataFrame([(walks.PIN, 2), (walks.BOARD, 12)], "node_t int, node bigint")
    # batch_walks gives 3 walk indices a batch: batches of 3 and 1
    some = walks.run_walks(graph, params, 1, str(tmp_path / "some"), sources)
    wanted = every.where(f"(src_t = {walks.PIN} AND src = 2) OR (src_t = {walks.BOARD} AND src = 12)")
    assert_df_equality(some, wanted, ignore_row_order=True, ignore_nullable=True)
    assert {(r.src_t, r.src) for r in some.select("src_t", "src").distinct().collect()} == {
        (walks.PIN, 2),
        (walks.BOARD, 12),
    }


@pytest.mark.parametrize(
    ("walks_per_node", "per_batch", "nodes", "sources", "expected"),
    [
        (100, 25, 57_000, 1_000, 100),  # a few new pins: every walk in one batch
        (100, 25, 1_000, 400, 62),  # scaled by nodes / sources, rounded down
        (100, 25, 1_000, 1_000, 25),  # every node: as given
        (100, 25, 1_000, 0, 100),  # no source: a single (empty) batch
        (10, 25, 1_000, 10, 25),  # never below the given count
    ],
)
def test_walks_from_a_subset_batch_as_many_walkers_as_a_full_batch(
    walks_per_node, per_batch, nodes, sources, expected
):
    assert walks.batch_walks(walks_per_node, per_batch, nodes, sources) == expected
