"""Open Inference Protocol (KServe V2) REST wire format: JSON and binary tensor data <-> numpy.

Pure functions (no I/O, no Starlette), and the one place that maps `modelserve.errors` to HTTP status
codes. Requests are checked against the model's `TensorSpec`s before any tensor is allocated, so a
huge declared shape costs nothing; every client mistake raises `RequestError` naming the input.

Binary tensor data extension (Triton's, which `tritonclient` uses by default): the body is a JSON
header of `Inference-Header-Content-Length` bytes followed by each binary tensor in order, tagged in
the JSON by `parameters.binary_data_size`. Tensors are little-endian, row-major; BOOL is one byte;
BYTES is, per element, a 4-byte little-endian length and the bytes. Outputs are binary when the
request output says `binary_data: true`, or else when the request says `binary_data_output: true`.

JSON choices: non-finite floats are written as `NaN`, `Infinity`, `-Infinity` (what Triton writes and
reads, and what `tritonclient`, Python's `json` and rapidjson parse) and are accepted in requests;
BYTES outputs are UTF-8 strings, and an output holding non-UTF-8 bytes is sent binary instead.
BF16 is not supported: onnxruntime models served here cannot declare it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelserve.datatypes import v2_datatype_of
from modelserve.errors import RequestError, http_status
from modelserve.server.tensor_codec import (
    array_from_binary,
    array_from_json,
    bytes_to_strings,
    checked_shape,
    serialize_bytes,
    short_repr,
)
from modelserve.serving.tensors import TensorSpec

__all__ = [
    "EXTENSIONS",
    "InferRequest",
    "RequestedOutput",
    "decode_infer_request",
    "encode_infer_response",
    "error_body",
    "model_metadata",
    "requested_output_names",
    "server_metadata",
    "status_for",
]

#: Extensions reported in server metadata.
EXTENSIONS = ("binary_tensor_data", "model_repository")

_JSON_HEADERS = {"content-type": "application/json"}
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
#: Outputs with more elements than this are written as JSON a piece at a time (`_json_pieces`).
PIECE_ELEMENTS = 1 << 15


def large_outputs(outputs: Mapping[str, np.ndarray]) -> bool:
    """True when an output is written in pieces (`_json_pieces`): encode the response off the loop."""
    return any(np.asarray(value).size > PIECE_ELEMENTS for value in outputs.values())


def _json_pieces(array: np.ndarray) -> list[bytes]:
    """A flat numeric array as one JSON list, written `PIECE_ELEMENTS` at a time.

    Encoding holds the GIL for the whole call: one call over millions of values stalls every other
    thread (the event loop included) for a quarter of a second; pieces of ~30k values take about a
    millisecond each, and other threads run in between. NaN and infinities become JSON's NaN tokens
    (as Triton writes them), not null.
    """
    pieces = [b"["]
    for start in range(0, array.size, PIECE_ELEMENTS):
        piece = orjson.dumps(array[start : start + PIECE_ELEMENTS], option=_NUMPY)
        if b"null" in piece:  # orjson writes NaN/Inf as null; rare, so re-encode only then
            piece = json.dumps(array[start : start + PIECE_ELEMENTS].tolist(), separators=(",", ":")).encode()
        pieces.append(piece[1:-1])
        pieces.append(b",")
    pieces[-1] = b"]"
    if len(pieces) == 1:
        pieces.append(b"]")
    return pieces


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestedOutput:
    """One entry of the request's `outputs`; `binary` is None when the client did not say."""

    name: str
    binary: bool | None
    parameters: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class InferRequest:
    """A decoded, validated inference request; treat it as read-only.

    `inputs` holds one array per model input, shaped and typed as the model declares (binary inputs
    may be read-only views of the body). `outputs` is None when the client asked for all outputs.
    Not frozen: a frozen dataclass costs ~0.5 µs more to build, on the hot path.
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    outputs: list[RequestedOutput] | None
    binary_output: bool


def decode_infer_request(
    body: bytes | memoryview,
    *,
    header_length: int | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec] | None = None,
) -> InferRequest:
    """Decode and validate a V2 inference request body against the model's input specs.

    `header_length` is the `Inference-Header-Content-Length` value (None: the whole body is JSON).
    When `outputs` is given, requested output names are checked too. Raises `RequestError`.
    """
    size = len(body)
    if header_length is None:
        doc = _loads(body)
    elif 0 <= header_length <= size:
        doc = _loads(memoryview(body)[:header_length])
    else:
        raise RequestError(f"Inference-Header-Content-Length {header_length} exceeds the body ({size} bytes)")
    if type(doc) is not dict:
        raise RequestError("the inference request must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise RequestError("request 'id' must be a string")
    parameters = doc.get("parameters")
    binary_output = False
    if parameters is None:
        parameters = {}
    elif type(parameters) is not dict:
        raise RequestError("request 'parameters' must be a JSON object")
    elif "binary_data_output" in parameters:
        binary_output = parameters["binary_data_output"]
        if type(binary_output) is not bool:
            raise RequestError("request parameter 'binary_data_output' must be true or false")
    raw_inputs = doc.get("inputs")
    if type(raw_inputs) is not list:
        raise RequestError("request 'inputs' must be a list of tensors")

    specs = {spec.name: spec for spec in inputs}
    arrays: dict[str, np.ndarray] = {}
    offset = size if header_length is None else header_length
    for raw in raw_inputs:
        if type(raw) is not dict:
            raise RequestError("each entry of 'inputs' must be a JSON object")
        name = raw.get("name")
        if type(name) is not str:
            raise RequestError("each input needs a string 'name'")
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(repr(n) for n in specs)
            raise RequestError(f"unknown input {short_repr(name)}; the model's inputs are {known}")
        if name in arrays:
            raise RequestError(f"input {name!r} is given more than once")
        shape = checked_shape(raw, spec)
        params = raw.get("parameters")
        nbytes = None
        if params is not None:
            if type(params) is not dict:
                raise RequestError(f"input {name!r}: 'parameters' must be a JSON object")
            if "shared_memory_region" in params:
                raise RequestError(f"input {name!r}: the shared-memory extension is not supported")
            nbytes = params.get("binary_data_size")
        if nbytes is None:
            if "data" not in raw:
                raise RequestError(f"input {name!r} has no 'data' and no 'binary_data_size'")
            arrays[name] = array_from_json(raw["data"], spec, shape)
            continue
        if header_length is None:
            raise RequestError(f"input {name!r} has binary data but no Inference-Header-Content-Length")
        if "data" in raw:
            raise RequestError(f"input {name!r} has both 'data' and 'binary_data_size'")
        if type(nbytes) is not int or nbytes < 0:
            raise RequestError(f"input {name!r}: 'binary_data_size' must be a non-negative integer")
        if offset + nbytes > size:
            raise RequestError(
                f"input {name!r}: binary_data_size {nbytes} runs past the end of the body "
                f"({size - offset} binary bytes left)"
            )
        arrays[name] = array_from_binary(body, offset, nbytes, spec, shape)
        offset += nbytes
    if offset != size:
        raise RequestError(f"the body has {size - offset} bytes of binary data that no input claims")
    if len(arrays) != len(specs):
        missing = ", ".join(repr(n) for n in specs if n not in arrays)
        raise RequestError(f"missing input(s) {missing}")
    return InferRequest(
        id=request_id,
        inputs=arrays,
        parameters=parameters,
        outputs=_requested_outputs(doc.get("outputs"), outputs),
        binary_output=binary_output,
    )


def requested_output_names(request: InferRequest, output_specs: Sequence[TensorSpec]) -> list[str] | None:
    """The output names to compute (None: all), after checking each against the model's outputs."""
    if request.outputs is None:
        return None
    known = {spec.name for spec in output_specs}
    for output in request.outputs:
        if output.name not in known:
            raise RequestError(_unknown_output(output.name, known))
    return [output.name for output in request.outputs]


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    request: InferRequest,
    output_specs: Sequence[TensorSpec],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode a V2 inference response: the body and the headers to add (content type, and
    `inference-header-content-length` when any output is binary).

    Filters outputs as the request asked (an unknown name raises `RequestError`); each output's
    datatype and shape come from its array, whatever its memory layout or byte order.
    """
    if request.outputs is None:
        selected = [(name, array, request.binary_output) for name, array in outputs.items()]
    else:
        requested_output_names(request, output_specs)
        selected = []
        for wanted in request.outputs:
            if wanted.name not in outputs:
                raise RuntimeError(f"the model run did not produce output {wanted.name!r}")
            binary = request.binary_output if wanted.binary is None else wanted.binary
            selected.append((wanted.name, outputs[wanted.name], binary))

    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    # Large outputs are spliced in after the rest is encoded, in pieces: a random marker stands in.
    marker: str | None = None
    large: dict[bytes, np.ndarray] = {}
    for name, value, binary in selected:
        array = np.asarray(value)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        datatype = v2_datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        raw: bytes | None = None
        if datatype == "BYTES":
            strings = None if binary else bytes_to_strings(array)
            if strings is None:
                raw = serialize_bytes(array)
            else:
                entry["data"] = strings
        elif binary:
            raw = array.tobytes()  # C order for any layout
        elif array.size > PIECE_ELEMENTS:
            marker = marker or f"modelserve-{secrets.token_hex(8)}-"  # unguessable: ids are client text
            placeholder = f"{marker}{len(large)}"
            large[b'"' + placeholder.encode() + b'"'] = array.ravel()
            entry["data"] = placeholder
        else:
            entry["data"] = array.ravel()  # contiguous, which orjson requires
        if raw is not None:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        entries.append(entry)

    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=_NUMPY)
    if b"null" in header:  # orjson writes NaN/Inf as null; rare, so re-encode only then
        header = json.dumps(doc, default=_json_default, separators=(",", ":")).encode()
    if large:
        header = _splice(header, large)
    if not chunks:
        return header, dict(_JSON_HEADERS)
    return b"".join([header, *chunks]), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def _splice(header: bytes, large: Mapping[bytes, np.ndarray]) -> bytes:
    """`header` with each quoted placeholder replaced by its array's JSON (`_json_pieces`)."""
    parts: list[bytes] = []
    rest = header
    for placeholder, array in large.items():
        before, found, rest = rest.partition(placeholder)
        if not found:
            raise RuntimeError("an output's placeholder is missing from the response")
        parts.append(before)
        parts.extend(_json_pieces(array))
    parts.append(rest)
    return b"".join(parts)


#: The HTTP status for an exception (the mapping lives beside the error tree).
status_for = http_status


def error_body(message: str) -> bytes:
    """A V2 error body: `{"error": message}`."""
    return orjson.dumps({"error": message})


def model_metadata(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The V2 model metadata response object."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [spec.as_metadata() for spec in inputs],
        "outputs": [spec.as_metadata() for spec in outputs],
    }


def server_metadata(*, version: str, extensions: Sequence[str] = EXTENSIONS) -> dict[str, Any]:
    """The V2 server metadata response object."""
    return {"name": "modelserve", "version": version, "extensions": list(extensions)}


def _loads(raw: bytes | memoryview) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        error = exc
    text = bytes(raw)
    if b"NaN" in text or b"Infinity" in text:  # orjson rejects these tokens; Triton and tritonclient use them
        try:
            doc = json.loads(text.decode("utf-8"))
            orjson.dumps(doc)  # rejects what orjson would have: lone surrogates, huge ints, deep nesting
            return doc
        except (ValueError, TypeError, RecursionError):
            pass
    raise RequestError(f"malformed JSON: {error}") from None


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if type(raw) is not dict:
        raise RequestError(f"{where} 'parameters' must be a JSON object")
    return raw


def _requested_outputs(raw: Any, specs: Sequence[TensorSpec] | None) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if type(raw) is not list:
        raise RequestError("request 'outputs' must be a list")
    if not raw:
        return None
    known = None if specs is None else {spec.name for spec in specs}
    result: list[RequestedOutput] = []
    seen: set[str] = set()
    for item in raw:
        if type(item) is not dict or type(item.get("name")) is not str:
            raise RequestError("each entry of 'outputs' must be an object with a string 'name'")
        name = item["name"]
        if known is not None and name not in known:
            raise RequestError(_unknown_output(name, known))
        if name in seen:
            raise RequestError(f"output {name!r} is requested more than once")
        seen.add(name)
        params = _parameters(item.get("parameters"), f"output {name!r}")
        binary = params.get("binary_data")
        if binary is not None and type(binary) is not bool:
            raise RequestError(f"output {name!r}: 'binary_data' must be true or false")
        if "shared_memory_region" in params:
            raise RequestError(f"output {name!r}: the shared-memory extension is not supported")
        if "classification" in params:
            raise RequestError(f"output {name!r}: the classification extension is not supported")
        result.append(RequestedOutput(name=name, binary=binary, parameters=params))
    return result


def _unknown_output(name: str, known: set[str]) -> str:
    names = ", ".join(repr(n) for n in sorted(known))
    return f"unknown output {short_repr(name)}; the model's outputs are {names}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
