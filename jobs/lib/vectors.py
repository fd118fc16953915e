"""Dense float32 vectors in Arrow columns, without per-element Python work.

Inside the pipeline a vector is a BINARY value of `dim * 4` bytes (float32, little-endian); input
features and published embeddings are ARRAY<FLOAT>. Both turn into a [rows, dim] numpy matrix of the
non-null rows, in order.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_matrix(column: pa.Array, dim: int) -> np.ndarray:
    """[non-null rows, dim] float32 matrix from a BINARY or LIST<FLOAT|DOUBLE> Arrow column."""
    rows = len(column) - column.null_count
    if dim == 0:
        return np.zeros((rows, 0), dtype=np.float32)
    t = column.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        offset_type = np.int64 if pa.types.is_large_binary(t) else np.int32
        bufs = column.buffers()
        offsets = np.frombuffer(bufs[1], dtype=offset_type, count=len(column) + 1 + column.offset)
        offsets = offsets[column.offset :]
        lengths = np.diff(offsets)
        if column.null_count:
            lengths = lengths[column.is_valid().to_numpy(zero_copy_only=False)]
        if rows and (lengths.min() != dim * 4 or lengths.max() != dim * 4):
            raise ValueError(f"vector bytes per row must be {dim * 4}, got {lengths.min()}..{lengths.max()}")
        start = int(offsets[0])
        return np.frombuffer(bufs[2], dtype=np.float32, count=rows * dim, offset=start).reshape(rows, dim)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        values = column.flatten()  # skips null lists and honours slicing
        if len(values) != rows * dim:
            raise ValueError(f"vectors must have {dim} elements each, got {len(values)} over {rows} rows")
        flat = values.to_numpy(zero_copy_only=False)
        return flat.astype(np.float32, copy=False).reshape(rows, dim)
    raise TypeError(f"unsupported vector column type {t}")


def to_binary(matrix: np.ndarray) -> pa.BinaryArray:
    """One BINARY value per row of a [rows, dim] matrix, as float32."""
    mat = np.ascontiguousarray(matrix, dtype=np.float32)
    rows, dim = mat.shape
    offsets = np.arange(rows + 1, dtype=np.int32) * (dim * 4)
    return pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(mat)])


def to_list(matrix: np.ndarray) -> pa.ListArray:
    """One LIST<FLOAT> value per row of a [rows, dim] matrix."""
    mat = np.ascontiguousarray(matrix, dtype=np.float32)
    rows, dim = mat.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * dim, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1), type=pa.float32()))
