"""jobs/lib/evaluation/checks.py: every rejected input names the table, the column and the problem,
with examples; accepted labels and vectors come out in the canonical shape."""

from __future__ import annotations

import pytest

from jobs.lib.evaluation.checks import (
    check_covered,
    check_pairs,
    check_vector_table,
    conform_labels,
)
from jobs.lib.io import InputError
from jobs.lib.validate import vector_width


def known(spark, ids):
    return spark.createDataFrame([(i,) for i in ids], "pin_id bigint")


def pairs_df(spark, rows):
    return spark.createDataFrame(rows, "query_pin bigint, pos_pin bigint")


def test_pairs_are_counted_with_and_without_repeats(spark):
    stats = check_pairs(pairs_df(spark, [(0, 1), (0, 1), (1, 2)]), known(spark, range(3)), "pin_embeddings")
    assert (stats.rows, stats.distinct) == (3, 2)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "table 'pairs': has no rows"),
        ([(4, 6), (2, None)], "table 'pairs', column 'pos_pin': 1 rows have a NULL id"),
        (
            [(4, 4), (2, 2), (1, 3)],
            "table 'pairs', column 'pos_pin': 2 rows name the query pin itself as the positive (e.g. query_pin 2, 4)",
        ),
        (
            [(0, 1), (1, 999)],
            "table 'pairs', column 'pos_pin': 1 rows name a pin that is not in pin_embeddings (e.g. pos_pin 999)",
        ),
        (
            [(7, 1), (8, 1), (9, 1), (6, 1)],
            "table 'pairs', column 'query_pin': 4 rows name a pin that is not in pin_embeddings (e.g. query_pin 6, 7, 8)",
        ),
    ],
)
def test_bad_pairs_are_rejected_naming_the_column_and_examples(spark, rows, message):
    with pytest.raises(InputError) as error:
        check_pairs(pairs_df(spark, rows), known(spark, range(5)), "pin_embeddings")
    assert str(error.value) == message


def test_pins_missing_from_a_covering_table_are_named(spark):
    check_covered(known(spark, [1, 2]), known(spark, range(3)), "pins", "pair pins")
    with pytest.raises(InputError) as error:
        check_covered(known(spark, range(12)), known(spark, range(3)), "pins", "candidate or pair pins")
    assert (
        str(error.value)
        == "table 'pins', column 'pin_id': 9 candidate or pair pins have no row (e.g. pin_id 3, 4, 5)"
    )


def test_labels_are_cast_to_strings_and_other_types_rejected(spark):
    ints = spark.createDataFrame([(1, 7), (2, None)], "pin_id int, label bigint")
    assert [tuple(r) for r in conform_labels(ints).collect()] == [(1, "7"), (2, None)]
    assert conform_labels(ints).schema.simpleString() == "struct<pin_id:bigint,label:string>"
    with pytest.raises(InputError) as error:
        conform_labels(spark.createDataFrame([(0, 0.5)], "pin_id bigint, label double"))
    assert (
        str(error.value)
        == "table 'labels', column 'label': has type double, expected string or int or bigint"
    )
    with pytest.raises(InputError) as error:
        conform_labels(spark.createDataFrame([(0,)], "pin_id bigint"))
    assert str(error.value) == "table 'labels', column 'label': missing column (found: pin_id)"


def test_a_vector_table_is_held_to_the_width_of_its_first_vector(spark):
    good = spark.createDataFrame(
        [(0, None), (1, [1.0, 0.0]), (2, [0.5, 0.5])], "pin_id bigint, embedding array<float>"
    )
    assert vector_width(good, "embedding") == 2
    assert vector_width(good.where("pin_id = 0"), "embedding") == 0
    table = check_vector_table(good.where("pin_id > 0"), "pin_embeddings", "embedding")
    assert (table.dim, table.rows, table.vectors.columns) == (2, 2, ["pin_id", "vec"])
    short = spark.createDataFrame([(0, [1.0, 0.0]), (1, [1.0])], "pin_id bigint, embedding array<float>")
    with pytest.raises(InputError) as error:
        check_vector_table(short, "pin_embeddings", "embedding")
    assert str(error.value).startswith(
        "table 'pin_embeddings', column 'embedding': 1 rows do not have length 2"
    )
    empty = spark.createDataFrame([(0, []), (1, [])], "pin_id bigint, features array<float>")
    with pytest.raises(InputError) as error:
        check_vector_table(empty, "pins", "features")
    assert str(error.value) == "table 'pins', column 'features': vectors have length 0"
