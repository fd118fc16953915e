"""Dense float32 vectors in Arrow columns, without per-element Python work.

Inside the pipeline a vector is a BINARY value of `dim * 4` bytes (float32, little-endian); input
features and published embeddings are ARRAY<FLOAT>. Both turn into a [rows, dim] numpy matrix of the
non-null rows, in order. Layer projections may travel as `dim * 2` bytes instead (bfloat16 or
float16, opt-in: the embed job's --projection-precision); they are widened back to float32 on read.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

# Encodings of a BINARY vector: bytes per element.
PRECISIONS = {"float32": 4, "bfloat16": 2, "float16": 2}
FLOAT16_MAX = float(np.finfo(np.float16).max)


def _decode(flat: np.ndarray, precision: str) -> np.ndarray:
    """float32 values of a little-endian byte buffer in `precision`."""
    if precision == "float32":
        return flat.view(np.float32)
    if precision == "float16":
        return flat.view(np.float16).astype(np.float32)
    return torch.from_numpy(flat.view(np.int16).copy()).view(torch.bfloat16).float().numpy()


def _encode(mat: np.ndarray, precision: str) -> np.ndarray:
    """`mat` (float32, C-contiguous) rounded to nearest even in `precision`, as raw bytes."""
    if precision == "float32":
        return mat.view(np.uint8)
    if precision == "float16":
        peak = float(np.abs(mat).max()) if mat.size else 0.0
        if not peak <= FLOAT16_MAX:  # also catches NaN
            raise ValueError(
                f"a vector value of magnitude {peak:.4g} does not fit float16 (max {FLOAT16_MAX:g}); "
                "use bfloat16 or float32"
            )
        return mat.astype(np.float16).view(np.uint8)
    return torch.from_numpy(mat).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)


def to_matrix(column: pa.Array, dim: int, precision: str = "float32") -> np.ndarray:
    """[non-null rows, dim] float32 matrix from a BINARY (of `precision`) or LIST<FLOAT|DOUBLE>
    Arrow column."""
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
        width = dim * PRECISIONS[precision]
        if rows and (lengths.min() != width or lengths.max() != width):
            raise ValueError(
                f"{precision} vector bytes per row must be {width}, got {lengths.min()}..{lengths.max()}"
            )
        flat = np.frombuffer(bufs[2], dtype=np.uint8, count=rows * width, offset=int(offsets[0]))
        return _decode(flat, precision).reshape(rows, dim)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        values = column.flatten()  # skips null lists and honours slicing
        if len(values) != rows * dim:
            raise ValueError(f"vectors must have {dim} elements each, got {len(values)} over {rows} rows")
        flat = values.to_numpy(zero_copy_only=False)
        return flat.astype(np.float32, copy=False).reshape(rows, dim)
    raise TypeError(f"unsupported vector column type {t}")


def to_binary(matrix: np.ndarray, precision: str = "float32") -> pa.BinaryArray:
    """One BINARY value per row of a [rows, dim] matrix, in `precision` (float32 is exact)."""
    mat = np.ascontiguousarray(matrix, dtype=np.float32)
    rows, dim = mat.shape
    offsets = np.arange(rows + 1, dtype=np.int32) * (dim * PRECISIONS[precision])
    data = _encode(mat, precision)
    return pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def to_list(matrix: np.ndarray) -> pa.ListArray:
    """One LIST<FLOAT> value per row of a [rows, dim] matrix."""
    mat = np.ascontiguousarray(matrix, dtype=np.float32)
    rows, dim = mat.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * dim, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1), type=pa.float32()))
