"""Tensor metadata of a loaded version, as the V2 protocol describes it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelserve.datatypes import V2_TO_NUMPY


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, V2 datatype and shape of a model input or output; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    def as_metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
