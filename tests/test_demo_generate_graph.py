"""jobs/demo/generate_graph.py: board ids apart from pin ids, the uniform neighbor tables are the
memberships with weight 1, the same seed gives the same graph, and the command line reaches the spec."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from jobs.demo.generate_graph import BOARD_ID_OFFSET, GraphSpec, generate, main

SMALL = GraphSpec(pins=60, boards=8, feature_dim=4, board_feature_dim=2, topics=3, mean_board_size=6.0)


def test_board_ids_start_at_the_offset_and_every_edge_names_a_pin():
    tables = generate(SMALL)
    boards = tables["edges"].column("board_id").to_numpy()
    assert boards.min() >= BOARD_ID_OFFSET and boards.max() < BOARD_ID_OFFSET + SMALL.boards
    assert set(tables["edges"].column("pin_id").to_numpy()) <= set(range(SMALL.pins))
    np.testing.assert_array_equal(
        tables["boards"].column("board_id").to_numpy(), np.arange(SMALL.boards) + BOARD_ID_OFFSET
    )
    assert "board_neighbors" not in tables


def test_board_ids_stay_above_every_pin_id_when_the_pins_outnumber_the_offset():
    pins = BOARD_ID_OFFSET + 5
    tables = generate(GraphSpec(pins=pins, boards=2, feature_dim=1, topics=1, mean_board_size=3.0))
    boards = tables["edges"].column("board_id").to_numpy()
    assert boards.min() == 10 * BOARD_ID_OFFSET and boards.max() <= 10 * BOARD_ID_OFFSET + 1
    assert tables["pins"].column("pin_id").to_numpy().max() == pins - 1


def test_uniform_neighbors_are_the_memberships_with_weight_one_and_the_seed_fixes_the_graph():
    tables = generate(GraphSpec(**{**SMALL.__dict__, "uniform_neighbors": True}))
    edges = tables["edges"].to_pydict()
    members = set(zip(edges["pin_id"], edges["board_id"], strict=True))
    board_nbrs, pin_nbrs = tables["board_neighbors"].to_pydict(), tables["pin_neighbors"].to_pydict()
    assert set(zip(board_nbrs["pin_id"], board_nbrs["board_id"], strict=True)) == members
    assert set(zip(pin_nbrs["pin_id"], pin_nbrs["board_id"], strict=True)) == members
    assert set(board_nbrs["weight"]) == set(pin_nbrs["weight"]) == {1.0}
    assert generate(SMALL)["edges"].equals(tables["edges"])
    assert not generate(GraphSpec(**{**SMALL.__dict__, "seed": 8}))["edges"].equals(tables["edges"])


def test_the_command_line_writes_each_table_as_parquet(tmp_path, capsys):
    main(
        ["--out", str(tmp_path), "--pins", "30", "--boards", "4", "--feature-dim", "3", "--uniform-neighbors"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board_neighbors", "edges", "pin_neighbors", "pins"]
    pins = pq.read_table(tmp_path / "pins")
    assert pins.num_rows == 30 and len(pins.column("features")[0]) == 3
    assert "pins 30 rows" in capsys.readouterr().out
