"""Load a drift reference from a JSONL file: one JSON object per line, one key per tensor.

Each line holds the rows of one request as `{"<input name>": [values of one row], ...}` (extra keys
such as `"label"` are ignored), e.g. `examples/labelled_traffic.jsonl`. Lines may also carry output
tensors; the caller decides whether to use them or to run the model over the inputs instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from modelserve.errors import ConfigError

#: Rows read at most: a reference is a sample, and the file must not decide the server's memory.
MAX_ROWS = 100_000


def load_reference(path: Path, names: Sequence[str], *, max_rows: int = MAX_ROWS) -> dict[str, np.ndarray]:
    """The tensors named `names` found in the file, stacked row-wise (float64); ConfigError if unusable."""
    columns: dict[str, list[object]] = {name: [] for name in names}
    rows = 0
    try:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if rows >= max_rows:
                    break
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{number}: not JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{path}:{number}: each line must be a JSON object")
                rows += 1
                for name in names:
                    if name in row:
                        columns[name].append(row[name])
    except OSError as exc:
        raise ConfigError(f"cannot read drift reference {path}: {exc}") from None
    tensors: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        if not values:
            continue
        try:
            tensors[name] = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: {name!r} must be numbers of the same shape on every line") from None
    counts = {array.shape[0] for array in tensors.values()}
    if not tensors:
        raise ConfigError(f"{path}: no line has any of {', '.join(names)}")
    if len(counts) > 1:
        raise ConfigError(f"{path}: every line must carry every tensor ({', '.join(tensors)})")
    return tensors
