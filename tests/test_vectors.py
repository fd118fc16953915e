"""Vectors between Arrow columns and numpy matrices."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from jobs.lib.vectors import to_binary, to_list, to_matrix

M = np.arange(12, dtype=np.float32).reshape(4, 3)


def test_binary_round_trip_and_slices():
    col = to_binary(M)
    np.testing.assert_array_equal(to_matrix(col, 3), M)
    np.testing.assert_array_equal(to_matrix(col.slice(1, 2), 3), M[1:3])


def test_list_round_trip_and_slices():
    col = to_list(M)
    assert col.to_pylist()[2] == [6.0, 7.0, 8.0]
    np.testing.assert_array_equal(to_matrix(col.slice(2), 3), M[2:])


def test_null_rows_are_skipped_in_order():
    col = pa.array([M[0].tobytes(), None, M[2].tobytes()], pa.binary())
    np.testing.assert_array_equal(to_matrix(col, 3), M[[0, 2]])
    lists = pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float64()))
    np.testing.assert_array_equal(to_matrix(lists, 2), [[1, 2], [3, 4]])


def test_large_binary_is_read():
    col = pa.array([row.tobytes() for row in M], pa.large_binary())
    np.testing.assert_array_equal(to_matrix(col, 3), M)


def test_wrong_widths_are_rejected():
    with pytest.raises(ValueError, match="bytes per row must be 12"):
        to_matrix(pa.array([M[0].tobytes(), M[1, :2].tobytes()], pa.binary()), 3)
    with pytest.raises(ValueError, match="3 elements each"):
        to_matrix(pa.array([[1.0, 2.0, 3.0], [1.0]], pa.list_(pa.float32())), 3)


def test_zero_width_vectors():
    assert to_matrix(pa.array([None, None], pa.binary()), 0).shape == (0, 0)
    assert to_matrix(to_binary(np.zeros((2, 0))), 0).shape == (2, 0)


def _bfloat16_by_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 rounding written out on the float32 bits: round to nearest, ties to even."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return rounded.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("precision, unit", [("bfloat16", 2.0**-8), ("float16", 2.0**-11)])
def test_half_precision_vectors_take_two_bytes_and_round_to_nearest(precision, unit):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((50, 7)) * np.exp(rng.uniform(-4, 4, (50, 7)))).astype(np.float32)
    x[0, :3] = [0.0, 1.0, 3.0 + 2.0**-9]  # exact, exact, a tie in bfloat16 (rounds to even: 3.0)
    col = to_binary(x, precision)
    assert all(len(v) == 14 for v in col.to_pylist())
    back = to_matrix(col, 7, precision)
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.all(np.abs(back - x) <= unit * np.abs(x))  # the unit roundoff, in the normal range
    np.testing.assert_array_equal(to_matrix(col.slice(10, 5), 7, precision), back[10:15])
    if precision == "bfloat16":
        np.testing.assert_array_equal(back, _bfloat16_by_bits(x))
        assert back[0, 2] == 3.0
    with pytest.raises(ValueError, match=f"{precision} vector bytes per row must be 14"):
        to_matrix(to_binary(x), 7, precision)  # float32 bytes read as half precision


def test_float16_refuses_values_it_cannot_hold():
    with pytest.raises(ValueError, match="magnitude 7e\\+04 does not fit float16"):
        to_binary(np.array([[1.0, -70000.0]], dtype=np.float32), "float16")
    big = np.array([[1.0, -70000.0]], dtype=np.float32)
    assert to_matrix(to_binary(big, "bfloat16"), 2, "bfloat16")[0, 1] == -70144.0  # bfloat16's nearest
