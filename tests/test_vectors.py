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
