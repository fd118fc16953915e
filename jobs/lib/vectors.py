"""Dense float32 vectors in Arrow columns, without per-element Python work.

Inside the pipeline a vector is a BINARY value of `dim * 4` bytes (float32, little-endian); input
features and published embeddings are ARRAY<FLOAT>. Both turn into a [rows, dim] numpy matrix of the
non-null rows, in order. Layer projections may travel as `dim * 2` bytes instead (bfloat16 or
float16, opt-in: the embed job's --projection-precision); they are widened back to float32 on read.
`feature_problems` flags the rows of an input vector column that cannot be read as one (the input
checks of jobs/lib/validate.py, and the first projection of the pins' features).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


# The problems a node row can have, as bits of its `problems` flag (0: none), in the order they are
# reported.
PROBLEMS = ("null_ids", "null_features", "null_elements", "wrong_length", "non_finite")
PROBLEM_BITS = {name: 1 << i for i, name in enumerate(PROBLEMS)}


def feature_problems(ids: pa.Array, features: pa.Array, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """([rows] int32 problem bits, [rows] int32 feature lengths, -1 where NULL) of one Arrow batch's
    id and features columns, with numpy instead of per-element SQL."""
    rows = len(ids)
    problems = np.where(ids.is_valid().to_numpy(zero_copy_only=False), 0, PROBLEM_BITS["null_ids"])
    problems = problems.astype(np.int32)
    present = features.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(features), -1).to_numpy(zero_copy_only=False).astype(np.int32)
    values = features.flatten()
    flat = values.to_numpy(zero_copy_only=False)  # NULLs come back as NaN
    problems |= np.where(present, 0, PROBLEM_BITS["null_features"]).astype(np.int32)
    problems |= np.where(present & (lengths != dim), PROBLEM_BITS["wrong_length"], 0).astype(np.int32)
    # One float64 sum answers "all finite, no NULL" for the common batch: NaN and Inf propagate, and
    # float32 values cannot overflow a float64 sum.
    if values.null_count == 0 and np.isfinite(np.sum(flat, dtype=np.float64)):
        return problems, lengths
    owner = np.repeat(np.arange(rows), np.where(present, lengths, 0))
    null_values = ~values.is_valid().to_numpy(zero_copy_only=False)
    finite = np.isfinite(flat)
    null_elements = np.bincount(owner[null_values], minlength=rows) > 0
    non_finite = np.bincount(owner[~finite & ~null_values], minlength=rows) > 0
    problems |= np.where(null_elements, PROBLEM_BITS["null_elements"], 0).astype(np.int32)
    problems |= np.where(non_finite, PROBLEM_BITS["non_finite"], 0).astype(np.int32)
    return problems, lengths
