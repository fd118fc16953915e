"""Hostile input tables, generated: the validators either accept a table that an independent check
finds valid, or reject it with an InputError naming the table and a column that really is at fault;
and the embed job turns every rejection into exit status 2 without changing anything under --out.

The independent check (`problems`) is plain Python over the rows written, read from the rules the
schemas document: ids present and unique in node tables, features of the model's width and finite as
float32, weights finite and > 0 as float32, stored types among those each column may arrive as.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import zlib
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from jobs.embed import main
from jobs.lib.io import InputError, read_table
from jobs.lib.validate import check_links, check_nodes, conform
from tests.graphs import embed_argv, small_graph, write_checkpoint, write_graph

DIM = 6  # pin_feature_dim of the model tests.graphs.write_checkpoint writes
COLUMNS = {
    "pins": ("pin_id", "features"),
    "edges": ("pin_id", "board_id", "weight"),
    "board_neighbors": ("board_id", "pin_id", "weight"),
    "pin_neighbors": ("pin_id", "board_id", "weight"),
}
OPTIONAL = {"edges": {"weight"}}  # 1.0 for every row when the column is absent
ROLE = {"pin_id": "id", "board_id": "id", "features": "vector", "weight": "weight"}
TABLES = tuple(COLUMNS)

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
EDGE_IDS = (0, -1, 2**31 - 1, -(2**31), 2**31, 2**53 + 1, INT64_MAX, INT64_MIN)
# Values at the edges of float32: those that are not valid features or weights, and those that are
NON_FINITE = (math.nan, math.inf, -math.inf, 1e300, -1e300, 3.5e38)  # 3.5e38 overflows float32
EXTREME = (3.4028235e38, -3.4028235e38, 1.17549435e-38, 1e-45, 1e-320, 5e-324, 0.0, -0.0)
NOT_POSITIVE = (0.0, -0.0, -1.0, -3.5e38, 1e-50, 1e-320)  # the last two round to 0 in float32
POSITIVE_EXTREME = (1e-45, 1.17549435e-38, 3.4028235e38)  # a float32 subnormal, the smallest normal, the max
# Extra columns, also named like a canonical column that is absent (names match exactly, not ignoring case)
EXTRA_NAMES = ("note", "", "a.b", "weight", "features", "board_id", "pin_id", "PIN_ID", "Features", "WEIGHT")


def _wrap(v: int | None, bits: int) -> int | None:
    """`v` wrapped into a signed `bits`-bit integer, as a narrower writer would store it."""
    return None if v is None else (v + 2 ** (bits - 1)) % 2**bits - 2 ** (bits - 1)


def _small_int(x: float | None) -> int | None:
    return int(x) if x is not None and math.isfinite(x) and abs(x) < 2**31 else None


def _fixed(rows: list) -> pa.Array:
    """Rows padded or cut to one length (the first row's), as a fixed-size list column."""
    width = next((len(r) for r in rows if r), DIM)
    return pa.array(
        [None if r is None else (r + [0.0] * width)[:width] for r in rows], pa.list_(pa.float32(), width)
    )


# How each kind of stored column is built from the generated Python values. GOOD kinds are those the
# schemas accept for the column's role (Spark reads them as bigint/int, float/double, array<float|double>).
BUILD = {
    "id": {
        "int64": lambda vs: pa.array(vs, pa.int64()),
        "int32": lambda vs: pa.array([_wrap(v, 32) for v in vs], pa.int32()),
        "int64_dictionary": lambda vs: pa.array(vs, pa.int64()).dictionary_encode(),
        "int16": lambda vs: pa.array([_wrap(v, 16) for v in vs], pa.int16()),
        "float64": lambda vs: pa.array([None if v is None else float(v) for v in vs], pa.float64()),
        "string": lambda vs: pa.array([None if v is None else str(v) for v in vs], pa.string()),
        "bool": lambda vs: pa.array([None if v is None else v % 2 == 0 for v in vs], pa.bool_()),
        "struct": lambda vs: pa.array(
            [None if v is None else {"id": v} for v in vs], pa.struct([("id", pa.int64())])
        ),
        "list_int64": lambda vs: pa.array([None if v is None else [v] for v in vs], pa.list_(pa.int64())),
    },
    "vector": {
        "list_float32": lambda rs: pa.array(rs, pa.list_(pa.float32())),
        "list_float64": lambda rs: pa.array(rs, pa.list_(pa.float64())),
        "large_list_float32": lambda rs: pa.array(rs, pa.large_list(pa.float32())),
        "fixed_size_list_float32": _fixed,
        "list_int32": lambda rs: pa.array(
            [None if r is None else [_small_int(x) for x in r] for r in rs], pa.list_(pa.int32())
        ),
        "list_string": lambda rs: pa.array(
            [None if r is None else [str(x) for x in r] for r in rs], pa.list_(pa.string())
        ),
        "list_list_float32": lambda rs: pa.array(
            [None if r is None else [r] for r in rs], pa.list_(pa.list_(pa.float32()))
        ),
        "string": lambda rs: pa.array([None if r is None else str(r) for r in rs], pa.string()),
        "float64": lambda rs: pa.array([r[0] if r else None for r in rs], pa.float64()),
        "struct": lambda rs: pa.array(
            [None if r is None else {"v": r} for r in rs], pa.struct([("v", pa.list_(pa.float32()))])
        ),
    },
    "weight": {
        "float32": lambda ws: pa.array(ws, pa.float32()),
        "float64": lambda ws: pa.array(ws, pa.float64()),
        "int64": lambda ws: pa.array([_small_int(w) for w in ws], pa.int64()),
        "string": lambda ws: pa.array([None if w is None else str(w) for w in ws], pa.string()),
        "bool": lambda ws: pa.array([None if w is None or math.isnan(w) else w > 0 for w in ws], pa.bool_()),
        "decimal": lambda ws: pa.array(
            [
                Decimal(f"{w:.3f}") if w is not None and math.isfinite(w) and abs(w) < 1e6 else None
                for w in ws
            ],
            pa.decimal128(12, 3),
        ),
        "list_float32": lambda ws: pa.array([None if w is None else [w] for w in ws], pa.list_(pa.float32())),
    },
}
GOOD = {
    "id": ("int64", "int32", "int64_dictionary"),
    "vector": ("list_float32", "list_float64", "large_list_float32", "fixed_size_list_float32"),
    "weight": ("float32", "float64"),
}


@dataclass(frozen=True)
class Column:
    name: str
    role: str
    kind: str
    values: tuple

    def arrow(self) -> pa.Array:
        return BUILD[self.role][self.kind](list(self.values))


@dataclass(frozen=True)
class Hostile:
    table: str
    rows: int
    columns: tuple[Column, ...]
    plan: tuple[str, ...] = ()  # the faults drawn, for reading a failing example

    def arrow(self) -> pa.Table:
        # from_arrays, not a dict: a file may carry two columns of one name
        return pa.Table.from_arrays([c.arrow() for c in self.columns], names=[c.name for c in self.columns])

    def write(self, folder: str) -> str:
        os.makedirs(folder, exist_ok=True)
        pq.write_table(self.arrow(), f"{folder}/part-00000.parquet")
        return folder


# ---- the independent check -------------------------------------------------------------------------


def _as_float32(x: float) -> np.float32:
    with np.errstate(over="ignore"):  # a double beyond float32's range becomes Inf, as Spark's cast does
        return np.float32(x)


def valid_vector(row: list | None) -> bool:
    return (
        row is not None
        and len(row) == DIM
        and all(x is not None and np.isfinite(_as_float32(x)) for x in row)
    )


def valid_weight(w: float | None) -> bool:
    return w is not None and bool(np.isfinite(_as_float32(w))) and _as_float32(w) > 0


def problems(hostile: Hostile) -> set[str | None]:
    """The columns at fault in `hostile`, and None for a fault of the whole table; empty when valid."""
    names = [c.name for c in hostile.columns]
    if len({n.lower() for n in names}) < len(names):
        return {None}  # Spark matches column names ignoring case: two columns collide on reading
    stored = {c.name: c for c in hostile.columns}
    found: set[str | None] = set()
    for name in COLUMNS[hostile.table]:
        column = stored.get(name)
        if column is None and name not in OPTIONAL.get(hostile.table, ()):
            found.add(name)
        elif column is not None and column.kind not in GOOD[column.role]:
            found.add(name)
    table = hostile.arrow()

    def values(name: str) -> list | None:
        return table.column(name).to_pylist() if name in stored and name not in found else None

    if hostile.table == "pins":
        if hostile.rows == 0:
            found.add(None)
        ids = values("pin_id")
        if ids is not None and (None in ids or len(set(ids)) < len(ids)):
            found.add("pin_id")
        features = values("features")
        if features is not None and not all(valid_vector(f) for f in features):
            found.add("features")
    else:  # neighbor and membership rows may name NULL or unknown ids: they are dropped, not refused
        weights = values("weight")
        if weights is not None and not all(valid_weight(w) for w in weights):
            found.add("weight")
    return found


# ---- generators ------------------------------------------------------------------------------------

any_id = st.one_of(st.integers(0, 40), st.sampled_from(EDGE_IDS), st.integers(INT64_MIN, INT64_MAX))
link_id = st.one_of(st.none(), st.integers(0, 3), any_id)
plain_float = st.floats(-1e3, 1e3, width=32)
any_float = st.one_of(plain_float, st.sampled_from(NON_FINITE + EXTREME), st.none(), st.floats())
any_row = st.one_of(
    st.none(), st.lists(any_float, min_size=DIM, max_size=DIM), st.lists(plain_float, max_size=DIM + 2)
)
good_weight = st.floats(2.0**-10, 2.0**10, width=32)
any_weight = st.one_of(good_weight, st.sampled_from(NON_FINITE + NOT_POSITIVE), st.none(), st.floats())
ANYTHING = {"id": link_id, "vector": any_row, "weight": any_weight}
# One kind of defect in some rows of a column; a tuple: one of these values in each of those rows.
DEFECTS = {
    "id": {"NULL": None, "duplicate": None},
    "vector": {
        "NULL": None,
        "NULL element": None,
        "wrong length": None,
        "non-finite": NON_FINITE,
        "extreme": EXTREME,
    },
    "weight": {
        "NULL": None,
        "non-finite": NON_FINITE,
        "not positive": NOT_POSITIVE,
        "positive extreme": POSITIVE_EXTREME,
    },
}


@st.composite
def column_values(draw, role: str, rows: int, defect: str | None = None, node_ids: bool = False) -> list:
    """Valid values for the role but for one `defect` (a key of DEFECTS, or "anything") in some rows.
    Ids in a link table may be NULL or repeat, so they are always drawn that way."""
    if role == "id" and not node_ids:
        return draw(st.lists(link_id, min_size=rows, max_size=rows))
    if role == "id":
        values = draw(st.lists(any_id, min_size=rows, max_size=rows, unique=True))
    elif role == "vector":
        values = draw(
            st.lists(st.lists(plain_float, min_size=DIM, max_size=DIM), min_size=rows, max_size=rows)
        )
    else:
        values = draw(st.lists(good_weight, min_size=rows, max_size=rows))
    if defect is None or not rows:
        return values
    special = DEFECTS[role].get(defect)
    value = draw(st.sampled_from(special)) if special else None  # the same one in every defective row
    for i in draw(st.sets(st.integers(0, rows - 1), min_size=1)):
        j = draw(st.integers(0, DIM - 1))
        if defect == "anything":
            values[i] = draw(ANYTHING[role])
        elif defect == "duplicate":
            values[i] = values[draw(st.integers(0, rows - 1))]
        elif defect == "wrong length":
            values[i] = draw(st.lists(plain_float, max_size=DIM + 2).filter(lambda v: len(v) != DIM))
        elif defect == "NULL element" or (special and role == "vector"):
            values[i][j] = value
        else:
            values[i] = value
    return values


def value_columns(table: str) -> list[str]:
    """The columns whose values can be wrong: not link-table ids (NULL and unknown ids are dropped)."""
    return [name for name in COLUMNS[table] if table == "pins" or ROLE[name] != "id"]


def schema_faults(table: str) -> list[str]:
    menu = [f"{fault} {name}" for name in COLUMNS[table] for fault in ("type", "missing")]
    return menu + ["extra columns", "no rows", "colliding column"]


def strata(table: str) -> list[str]:
    """What the tables of one test case have wrong: one kind of defect in one column's values ("COLUMN:
    DEFECT"), their schema only, or anything mixed. Drawn apart, so that every check meets its defect
    alone, where no earlier check can hide it, and not only mixed with others."""
    own = [f"{name}: {defect}" for name in value_columns(table) for defect in DEFECTS[ROLE[name]]]
    return own + ["schema", "mixed"]


@st.composite
def hostile_tables(draw, table: str, stratum: str = "mixed") -> Hostile:
    """A table for `table`, hostile as `stratum` says, columns in any order. A defect is what is drawn,
    not what is checked: some defects (extreme values, extra columns) leave the table valid."""
    if stratum == "mixed":
        defects = {
            name: draw(st.sampled_from([*DEFECTS[ROLE[name]], "anything"]))
            for name in draw(st.sets(st.sampled_from(value_columns(table))))
        }
        count = draw(st.integers(0, 2))
    elif stratum == "schema":
        defects, count = {}, draw(st.integers(1, 2))
    else:
        column, defect = stratum.split(": ")
        defects, count = {column: defect}, 0
    faults = draw(st.sets(st.sampled_from(schema_faults(table)), min_size=count, max_size=count))
    rows = 0 if "no rows" in faults else draw(st.integers(1, 6))
    columns = []
    for name in COLUMNS[table]:
        if f"missing {name}" in faults:
            continue
        role = ROLE[name]
        wrong = f"type {name}" in faults
        kind = draw(st.sampled_from([k for k in BUILD[role] if (k in GOOD[role]) != wrong]))
        values = draw(column_values(role, rows, defects.get(name), node_ids=table == "pins"))
        columns.append(Column(name, role, kind, tuple(values)))
    present = {c.name.lower() for c in columns}
    names = []
    if "extra columns" in faults:
        free = [n for n in EXTRA_NAMES if n.lower() not in present]
        names += draw(st.lists(st.sampled_from(free), min_size=1, max_size=2, unique=True))
    if "colliding column" in faults and columns:
        name = draw(st.sampled_from([c.name for c in columns]))
        names.append(draw(st.sampled_from([name, name.upper(), name.title()])))
    for name in names:
        kind = draw(st.sampled_from(list(BUILD["id"])))
        columns.append(Column(name, "id", kind, tuple(draw(column_values("id", rows)))))
    plan = sorted(faults) + [f"values {name}: {defect}" for name, defect in defects.items()]
    return Hostile(table, rows, tuple(draw(st.permutations(columns))), tuple(plan))


# ---- property 1: the validators -------------------------------------------------------------------

LINK_IDS = {
    "edges": ("pin_id", "board_id"),
    "board_neighbors": ("board_id", "pin_id"),
    "pin_neighbors": ("pin_id", "board_id"),
}


def validate(spark, table: str, path: str):
    """What jobs.embed.load_graph runs on one input table."""
    df = conform(read_table(spark, table, path), table)
    if table == "pins":
        return check_nodes(df, "pins", "pin_id", DIM, f"the checkpoint's pin_feature_dim is {DIM}")
    return check_links(df, table, LINK_IDS[table])


def assert_names_a_fault(exc: InputError, table: str, faults: set[str | None]) -> None:
    assert faults, f"rejected a valid table: {exc}"
    assert exc.table == table, f"blamed table {exc.table!r}, not {table!r}: {exc}"
    assert exc.column in faults, f"blamed column {exc.column!r}, but the faults are in {faults}: {exc}"
    where = f"table '{table}'" + (f", column '{exc.column}'" if exc.column else "")
    assert str(exc).startswith(where + ": "), str(exc)
    assert not exc.problem.startswith("An error occurred while calling"), f"states no problem: {exc}"


# Node tables take two Spark jobs to check, link tables one.
EXAMPLES = {"pins": 5, "edges": 4, "board_neighbors": 4, "pin_neighbors": 4}


@pytest.mark.parametrize(("table", "stratum"), [(t, s) for t in TABLES for s in strata(t)])
def test_validators_accept_only_valid_tables_and_blame_a_faulty_column(
    spark, tmp_path_factory, table, stratum
):
    @seed(zlib.crc32(f"{table} {stratum}".encode()))  # fixed, and not the same for every case
    @settings(max_examples=EXAMPLES[table], deadline=None, database=None)
    @given(hostile=hostile_tables(table, stratum))
    def check(hostile: Hostile) -> None:
        path = hostile.write(str(tmp_path_factory.mktemp(table)))
        faults = problems(hostile)
        try:
            result = validate(spark, table, path)
        except InputError as exc:
            event(f"rejected: column {exc.column}")
            assert_names_a_fault(exc, table, faults)
            return
        event("accepted")
        assert not faults, f"accepted a table with faults in {faults}"
        rows = hostile.arrow().to_pylist()
        if table == "pins":
            assert result == len(rows)
        else:
            first, second = LINK_IDS[table]
            assert result.rows == len(rows)
            assert result.null_ids == sum(r[first] is None or r[second] is None for r in rows)

    check()


# Found by the property above.


def test_a_null_id_beside_an_id_near_the_int64_maximum_is_reported_as_a_null_id(spark, tmp_path):
    # With a NULL present the ids went through float64, and 2**63 - 1 came back as 2**63.
    hostile = Hostile(
        "pins",
        2,
        (
            Column("pin_id", "id", "int64", (None, INT64_MAX)),
            Column("features", "vector", "list_float32", ([0.5] * DIM, [0.5] * (DIM - 1))),
        ),
    )
    with pytest.raises(InputError, match=r"table 'pins', column 'pin_id': 1 rows have a NULL id"):
        validate(spark, "pins", hostile.write(str(tmp_path / "pins")))


@pytest.mark.parametrize("table", ["edges", "board_neighbors", "pin_neighbors"])
def test_an_empty_link_table_is_accepted_with_no_rows(spark, tmp_path, table):
    # The aggregate's sums over no rows were NULL.
    columns = tuple(Column(name, ROLE[name], GOOD[ROLE[name]][0], ()) for name in COLUMNS[table])
    stats = validate(spark, table, Hostile(table, 0, columns).write(str(tmp_path / table)))
    assert (stats.rows, stats.null_ids) == (0, 0)


def test_two_columns_of_one_name_and_different_types_are_reported_with_the_clash(spark, tmp_path):
    # Spark fails a job reading the footer, and the message used to be py4j's "An error occurred while
    # calling oNN.load."
    hostile = Hostile(
        "edges",
        1,
        (
            Column("pin_id", "id", "int64", (1,)),
            Column("board_id", "id", "int64", (2,)),
            Column("pin_id", "id", "string", (3,)),
        ),
    )
    with pytest.raises(
        InputError, match=r"^table 'edges': cannot read \S+ as parquet: [^:]*incompatible types: [^:]*pin_id$"
    ):
        validate(spark, "edges", hostile.write(str(tmp_path / "edges")))


def test_a_table_whose_parquet_files_disagree_on_a_column_type_is_bad_input(spark, tmp_path):
    folder = tmp_path / "pins"
    folder.mkdir()
    for i, ids in enumerate([pa.array([1], pa.int64()), pa.array(["2"], pa.string())]):
        pq.write_table(
            pa.table({"pin_id": ids, "features": pa.array([[0.5] * DIM], pa.list_(pa.float32()))}),
            folder / f"part-{i}.parquet",
        )
    with pytest.raises(
        InputError,
        match=r"table 'pins', column 'pin_id': its Parquet files under \S+ disagree on the type: "
        r"bigint in part-0.parquet, string in part-1.parquet",
    ):
        validate(spark, "pins", str(folder))


# ---- property 2: the embed job ---------------------------------------------------------------------


def snapshot(root: str) -> dict[str, str]:
    """Every folder and file under `root`, files by size and SHA-256."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.join(folder, name)] = "folder"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[path] = f"{os.path.getsize(path)} {hashlib.sha256(f.read()).hexdigest()}"
    return found


@pytest.fixture(scope="module")
def published(spark, tmp_path_factory):
    """Input paths and a checkpoint for a valid graph, and an --out holding a successful run's output."""
    root = tmp_path_factory.mktemp("fuzz_job")
    paths = write_graph(small_graph(seed=1), str(root / "in"), with_boards=False)
    checkpoint = write_checkpoint(str(root / "model.pt"))
    out = str(root / "out")
    assert main(embed_argv(paths, checkpoint, out)) == 0
    assert os.path.isdir(f"{out}/pin_embeddings/_delta_log")
    return paths, checkpoint, out, str(root)


ERROR_LINE = re.compile(r"error: table '(?P<table>[^']*)'(?:, column '(?P<column>[^']*)')?: .+")


# A valid table would cost a whole embed run here; the validator property covers acceptance.
invalid_input = (
    st.sampled_from([(t, s) for t in TABLES for s in strata(t)])
    .flatmap(lambda case: hostile_tables(*case))
    .filter(lambda h: bool(problems(h)))
)


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # capsys: read, so emptied, per example
)
@given(hostile=invalid_input)
def test_embed_job_refuses_a_bad_table_with_status_2_and_leaves_out_unchanged(published, capsys, hostile):
    paths, checkpoint, out, root = published
    bad = hostile.write(tempfile.mkdtemp(prefix=f"{hostile.table}-", dir=root))
    before = snapshot(out)
    capsys.readouterr()
    status = main(embed_argv({**paths, hostile.table: bad}, checkpoint, out))
    err = capsys.readouterr().err
    assert status == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    said = ERROR_LINE.fullmatch(errors[0])
    assert said and said["table"] == hostile.table, errors[0]
    event(f"refused: table {said['table']}, column {said['column']}")
    assert said["column"] in problems(hostile), errors[0]
    assert snapshot(out) == before, "the refused run changed --out"
