"""Tensor data of the V2 wire format <-> numpy, for `protocol.py`.

Every function checks the element count a shape needs against the data actually present before it
allocates anything, so a request declaring a huge shape is refused without cost.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from modelserve.datatypes import V2_TO_NUMPY
from modelserve.errors import RequestError
from modelserve.serving.tensors import TensorSpec

_U32 = struct.Struct("<I")
#: Largest finite value per narrow float type: bigger JSON numbers become +-inf, as an IEEE cast does.
_FLOAT_MAX = {"FP16": 65504.0, "FP32": float(np.finfo(np.float32).max)}
_SMALL = 64  # up to this many elements, Python's min/max beat numpy's call overhead


def checked_shape(raw: dict[str, Any], spec: TensorSpec) -> list[int]:
    """The request input's shape, after checking its datatype, rank and fixed dimensions."""
    name = spec.name
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        if type(datatype) is not str or datatype not in V2_TO_NUMPY:
            raise RequestError(
                f"input {name!r}: datatype {short_repr(datatype)} is not supported; "
                f"the model expects {spec.datatype}"
            )
        raise RequestError(f"input {name!r}: the model expects datatype {spec.datatype}, got {datatype}")
    shape = raw.get("shape")
    if type(shape) is not list:
        raise RequestError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) != len(spec.shape):
        raise RequestError(
            f"input {name!r}: the model expects {len(spec.shape)} dimensions {list(spec.shape)}, "
            f"got {len(shape)} {short_repr(shape)}"
        )
    for got, want in zip(shape, spec.shape, strict=True):
        if type(got) is not int or got < 0:
            raise RequestError(f"input {name!r}: 'shape' must be a list of non-negative integers")
        if want >= 0 and got != want:
            raise RequestError(f"input {name!r}: shape {shape} does not match the model's {list(spec.shape)}")
    return shape


def short_repr(value: Any) -> str:
    """`repr(value)`, cut to 80 characters for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def array_from_json(data: Any, spec: TensorSpec, shape: list[int]) -> np.ndarray:
    """The array for an input's JSON `data` (flat, or nested as `shape`), typed as `spec` says."""
    name = spec.name
    if type(data) is not list:
        raise RequestError(f"input {name!r}: 'data' must be a list")
    count = math.prod(shape)
    if data and type(data[0]) is list:
        flat = _flatten(data, shape, name)
    elif len(data) != count:
        raise RequestError(f"input {name!r}: shape {shape} needs {count} elements, 'data' has {len(data)}")
    else:
        flat = data
    if spec.datatype == "BYTES":
        array = _bytes_from_strings(flat, name)
    elif count == 0:
        array = np.empty(0, spec.dtype)
    else:
        array = _numbers(flat, spec, name)
    return _reshaped(array, shape, name)


def array_from_binary(
    body: bytes | memoryview, offset: int, nbytes: int, spec: TensorSpec, shape: list[int]
) -> np.ndarray:
    """The array for an input's `nbytes` of binary data at `offset` in `body` (bounds already checked)."""
    name = spec.name
    count = math.prod(shape)
    if spec.datatype == "BYTES":
        return _reshaped(_parse_bytes(body, offset, nbytes, count, name), shape, name)
    dtype = spec.dtype.newbyteorder("<")
    needed = count * dtype.itemsize
    if nbytes != needed:
        raise RequestError(
            f"input {name!r}: binary_data_size is {nbytes} bytes; "
            f"shape {shape} of {spec.datatype} needs {needed}"
        )
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    if not array.flags.aligned:
        array = array.copy()
    if spec.datatype == "BOOL" and count and array.view(np.uint8).max() > 1:
        raise RequestError(f"input {name!r}: BOOL binary data must hold only bytes 0 and 1")
    return _reshaped(array, shape, name)


def bytes_to_strings(array: np.ndarray) -> list[str] | None:
    """A BYTES array as UTF-8 strings in row-major order; None if an element is not valid UTF-8."""
    strings: list[str] = []
    for item in array.ravel().tolist():
        if isinstance(item, bytes):
            try:
                strings.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                return None
        else:
            strings.append(item if isinstance(item, str) else str(item))
    return strings


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES array in binary form: per element a 4-byte little-endian length, then the bytes."""
    parts: list[bytes] = []
    for item in array.ravel().tolist():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_U32.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _flatten(data: list[Any], shape: list[int], name: str) -> list[Any]:
    items: list[Any] = [data]
    for depth, dim in enumerate(shape):
        level: list[Any] = []
        for item in items:
            if type(item) is not list or len(item) != dim:
                raise RequestError(
                    f"input {name!r}: nested 'data' does not match shape {shape} at dimension {depth}"
                )
            level.extend(item)
        items = level
    return items


def _numbers(flat: list[Any], spec: TensorSpec, name: str) -> np.ndarray:
    # Infer first, then cast: a direct np.asarray(flat, dtype) would accept "1.5", null and true.
    try:
        inferred = np.array(flat)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(
            f"input {name!r}: 'data' is nested deeper than shape or mixes lists and values"
        ) from None
    if inferred.ndim != 1:
        raise RequestError(f"input {name!r}: 'data' is nested deeper than its shape")
    kind = inferred.dtype.kind
    dtype = spec.dtype
    target = dtype.kind
    if target == "b":
        if kind != "b":
            raise RequestError(f"input {name!r}: BOOL data must be true or false")
        return inferred
    if target == "f":
        if kind not in "iuf":
            raise RequestError(f"input {name!r}: {spec.datatype} data must be numbers")
        limit = _FLOAT_MAX.get(spec.datatype)
        if limit is not None and not _within(flat, inferred, limit):
            with np.errstate(over="ignore"):  # out-of-range values become +-inf, as in C
                return inferred.astype(dtype)
        return inferred.astype(dtype, copy=False)
    if kind in "iu":
        if inferred.dtype == dtype:
            return inferred
        low, high = int(inferred.min()), int(inferred.max())
    elif all(
        type(item) is int for item in flat
    ):  # ints numpy could not hold in one type, e.g. -1 and 2**64-1
        low, high = min(flat), max(flat)
        inferred = np.array(flat, dtype=object)
    else:
        raise RequestError(f"input {name!r}: {spec.datatype} data must be integers")
    info = np.iinfo(dtype)
    if low < info.min or high > info.max:
        raise RequestError(f"input {name!r}: values must lie in [{info.min}, {info.max}] for {spec.datatype}")
    return inferred.astype(dtype)


def _within(flat: list[Any], inferred: np.ndarray, limit: float) -> bool:
    # NaN compares false, so it lands on the (still correct) errstate path.
    if len(flat) <= _SMALL:
        return bool(-limit <= min(flat) and max(flat) <= limit)
    return bool(-limit <= inferred.min() and inferred.max() <= limit)


def _bytes_from_strings(flat: list[Any], name: str) -> np.ndarray:
    try:
        items = [item.encode("utf-8") for item in flat]
    except (AttributeError, UnicodeEncodeError):
        raise RequestError(f"input {name!r}: BYTES data must be strings") from None
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _parse_bytes(body: bytes | memoryview, offset: int, nbytes: int, count: int, name: str) -> np.ndarray:
    end = offset + nbytes
    if count > nbytes // 4:  # every element takes at least its 4-byte length
        raise RequestError(f"input {name!r}: {nbytes} bytes cannot hold {count} BYTES elements")
    items: list[bytes] = []
    position = offset
    while position < end:
        if position + 4 > end:
            raise RequestError(f"input {name!r}: BYTES binary data ends inside an element length")
        length = _U32.unpack_from(body, position)[0]
        position += 4
        if position + length > end:
            raise RequestError(
                f"input {name!r}: a BYTES element of {length} bytes runs past binary_data_size"
            )
        items.append(bytes(body[position : position + length]))  # a memoryview's slice is a view
        position += length
        if len(items) > count:
            break
    if len(items) != count:
        raise RequestError(f"input {name!r}: binary data does not hold exactly {count} BYTES elements")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def _reshaped(array: np.ndarray, shape: list[int], name: str) -> np.ndarray:
    try:
        return array.reshape(shape)
    except (ValueError, OverflowError):
        raise RequestError(f"input {name!r}: shape {shape} is too large") from None
