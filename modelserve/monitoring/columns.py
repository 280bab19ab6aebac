"""Turn named tensors (a batch of rows) into numbered scalar columns for distribution and drift tracking.

A tensor of shape `[N]` is one column named like the tensor; `[N, C]` gives columns `name[0]` ..
`name[C-1]`; higher ranks are flattened per row. At most `max_per_tensor` columns are kept per tensor
(the first ones), so a wide input (an image, an embedding) costs bounded memory. Tensors that are not
numeric (BYTES) are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MAX_COLUMNS_PER_TENSOR = 32


def tensor_columns(
    tensors: Mapping[str, np.ndarray], *, max_per_tensor: int = MAX_COLUMNS_PER_TENSOR
) -> tuple[tuple[str, ...], np.ndarray] | None:
    """The column names and a float64 (rows x columns) matrix of `tensors`, or None if none is numeric.

    Every tensor kept must have the same number of rows as the first numeric one; others are skipped.
    """
    names: list[str] = []
    blocks: list[np.ndarray] = []
    rows: int | None = None
    for name, tensor in tensors.items():
        array = np.asarray(tensor)
        if array.dtype.kind not in "biuf" or array.ndim == 0:
            continue
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            continue
        if array.ndim == 1:
            names.append(name)
            blocks.append(array.reshape(rows, 1))
            continue
        flat = array.reshape(rows, -1)[:, :max_per_tensor]
        names.extend(f"{name}[{j}]" for j in range(flat.shape[1]))
        blocks.append(flat)
    if not blocks:
        return None
    matrix = np.concatenate(blocks, axis=1).astype(np.float64, copy=False) if len(blocks) > 1 else blocks[0]
    return tuple(names), np.asarray(matrix, dtype=np.float64)


def is_label_tensor(array: np.ndarray) -> bool:
    """Whether a model output holds class labels (integers, booleans, strings) rather than scores."""
    return np.asarray(array).dtype.kind in "biuOSU"
