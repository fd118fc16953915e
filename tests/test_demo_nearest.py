"""jobs/demo/nearest.py on hand-built vectors: the top k other pins by cosine similarity, ties by
pin id, topic labels when the pins table has them, and the printed answer."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from jobs.demo.nearest import nearest, parse_args, run, with_topics
from tests.graphs import vector_type, write_parquet

VECTORS = {1: [1.0, 0.0], 2: [2.0, 0.0], 3: [0.0, 1.0], 4: [1.0, 1.0], 5: [-1.0, 0.0]}


@pytest.fixture(scope="module")
def embeddings(spark):
    return spark.createDataFrame(list(VECTORS.items()), "pin_id bigint, embedding array<float>")


def test_nearest_ranks_the_other_pins_by_cosine_ties_by_pin_id(embeddings):
    got = nearest(embeddings, embeddings.where("pin_id = 1"), 3).orderBy("rank").collect()
    assert [(r.query_id, r.pin_id, r.rank) for r in got] == [(1, 2, 1), (1, 4, 2), (1, 3, 3)]
    assert [r.score for r in got] == pytest.approx([1.0, 1 / math.sqrt(2), 0.0])


def test_topic_labels_come_from_the_pins_table_when_it_has_a_topic(spark, embeddings):
    result = nearest(embeddings, embeddings.where("pin_id = 3"), 1)
    topics = spark.createDataFrame([(p, p % 2) for p in VECTORS], "pin_id bigint, topic int")
    row = with_topics(result, topics).first()
    assert (row.pin_id, row.query_label, row.pin_label) == (4, " (topic 1)", " (topic 0)")
    assert with_topics(result, topics.drop("topic")).first().pin_label == ""
    assert with_topics(result, None).first().query_label == ""


def test_the_answer_lists_each_query_then_its_nearest_pins(spark, tmp_path):
    path = str(tmp_path / "emb")
    schema = pa.schema([("pin_id", pa.int64()), ("embedding", vector_type())])
    write_parquet(path, {"pin_id": list(VECTORS), "embedding": list(VECTORS.values())}, schema)
    report = run(spark, parse_args(["--embeddings", path, "--queries", "2", "--top-k", "2"]))
    headings = [line for line in report.answer if line.startswith("pin ")]
    assert len(headings) == 2 and len(report.answer) == 6
    assert report.answer[1].startswith("  1. pin ")
    assert "rank" in report.seconds


def test_top_k_and_queries_must_be_positive():
    with pytest.raises(SystemExit):
        parse_args(["--embeddings", "e", "--top-k", "0"])
    assert parse_args(["--embeddings", "e", "--top-k", "7"]).top_k == 7
