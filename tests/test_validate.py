"""Input checks on a few hand-built rows: each failure names the table, the column and the problem
(with example ids), and valid input is cast to the canonical schemas."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality

from jobs.lib.io import InputError
from jobs.lib.validate import EXAMPLES, check_links, check_nodes, conform

GOOD = [0.1] * 6


def pins(spark, rows, ddl="pin_id bigint, features array<float>"):
    return conform(spark.createDataFrame(rows, ddl), "pins")


def refused(
    df, *expected, table="pins", id_col="pin_id", dim=6, note="the checkpoint's pin_feature_dim is 6"
):
    with pytest.raises(InputError) as error:
        check_nodes(df, table, id_col, dim, note)
    for text in expected:
        assert text in str(error.value), f"{text!r} not in {error.value}"


def test_conform_casts_to_the_canonical_types_and_drops_extra_columns(spark):
    raw = spark.createDataFrame([(1, [1.0, 2.0], "x")], "pin_id int, features array<double>, extra string")
    expected = spark.createDataFrame([(1, [1.0, 2.0])], "pin_id bigint, features array<float>")
    assert_df_equality(conform(raw, "pins"), expected, ignore_nullable=True)


def test_conform_gives_edges_without_weights_weight_1(spark):
    raw = spark.createDataFrame([(1, 10)], "pin_id bigint, board_id bigint")
    expected = spark.createDataFrame([(1, 10, 1.0)], "pin_id bigint, board_id bigint, weight float")
    assert_df_equality(conform(raw, "edges"), expected, ignore_nullable=True)


def test_conform_names_a_missing_column_and_what_was_found(spark):
    with pytest.raises(
        InputError, match=r"table 'pins', column 'features': missing column \(found: pin_id\)"
    ):
        conform(spark.createDataFrame([(1,)], "pin_id bigint"), "pins")


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        ("pin_id string, features array<float>", "column 'pin_id': has type string, expected bigint or int"),
        ("pin_id bigint, features array<int>", "column 'features': has type array<int>"),
    ],
)
def test_conform_names_a_column_of_the_wrong_type(spark, ddl, expected):
    value = "a" if ddl.startswith("pin_id string") else 1
    features = [1] * 6 if "array<int>" in ddl else GOOD
    with pytest.raises(InputError, match="table 'pins', " + expected.replace("(", r"\(")):
        conform(spark.createDataFrame([(value, features)], ddl), "pins")


def test_valid_nodes_are_counted(spark):
    assert check_nodes(pins(spark, [(1, GOOD), (2, GOOD)]), "pins", "pin_id", 6, "") == 2


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([(1, GOOD), (2, GOOD[:5])], ["table 'pins', column 'features'", "lengths seen: 5..6 (ragged)"]),
        ([(1, GOOD[:5]), (2, GOOD[:5])], ["2 rows do not have length 6", "pin_feature_dim is 6"]),
        ([(1, GOOD), (2, GOOD[:5] + [float("nan")])], ["column 'features'", "NaN or Inf", "pin_id 2"]),
        ([(1, GOOD[:5] + [float("-inf")]), (2, GOOD)], ["NaN or Inf", "pin_id 1"]),
        ([(1, GOOD), (2, None)], ["column 'features'", "1 rows have NULL features"]),
        ([(1, GOOD), (2, GOOD[:5] + [None])], ["NULL elements", "pin_id 2"]),
        ([(1, GOOD), (1, GOOD), (2, GOOD)], ["column 'pin_id'", "duplicate ids, e.g. 1 (2 times)"]),
        ([(1, GOOD), (None, GOOD)], ["column 'pin_id'", "1 rows have a NULL id"]),
    ],
)
def test_bad_nodes_are_refused_with_table_column_and_examples(spark, rows, expected):
    refused(pins(spark, rows), *expected)


def test_an_empty_node_table_is_refused(spark):
    refused(pins(spark, []), "table 'pins': has no rows")


def test_examples_are_capped(spark):
    rows = [(i, GOOD[:5] + [float("nan")]) for i in range(EXAMPLES + 4)]
    with pytest.raises(InputError) as error:
        check_nodes(pins(spark, rows), "pins", "pin_id", 6, "")
    shown = str(error.value).split("e.g. pin_id ")[1].rstrip(")").split(", ")
    assert len(shown) == EXAMPLES


def test_nodes_without_features_check_only_ids(spark):
    boards = conform(
        spark.createDataFrame([(10, None), (10, None)], "board_id bigint, features array<float>"), "boards"
    )
    refused(
        boards, "table 'boards', column 'board_id'", "duplicate", table="boards", id_col="board_id", dim=None
    )


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf"), None])
def test_bad_weights_are_refused_with_an_example(spark, weight):
    df = conform(
        spark.createDataFrame(
            [(100, 1, 1.0), (101, 2, weight)], "board_id bigint, pin_id bigint, weight float"
        ),
        "board_neighbors",
    )
    with pytest.raises(InputError) as error:
        check_links(df, "board_neighbors", ("board_id", "pin_id"))
    text = str(error.value)
    assert "table 'board_neighbors', column 'weight'" in text
    assert "1 rows have a NULL, NaN, infinite or non-positive weight" in text and "(101, 2)" in text


def test_links_with_null_ids_are_counted_not_refused(spark):
    df = conform(
        spark.createDataFrame(
            [(1, 10, 1.0), (None, 10, 1.0), (2, None, 2.0)], "pin_id bigint, board_id bigint, weight float"
        ),
        "edges",
    )
    stats = check_links(df, "edges", ("pin_id", "board_id"))
    assert (stats.rows, stats.null_ids) == (3, 2)


def test_an_empty_link_table_is_valid(spark):
    df = conform(spark.createDataFrame([], "pin_id bigint, board_id bigint, weight float"), "pin_neighbors")
    assert check_links(df, "pin_neighbors", ("pin_id", "board_id")).rows == 0
