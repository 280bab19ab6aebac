"""The V2 wire format: requests as the real tritonclient encodes them, responses as it decodes them,
every client mistake a RequestError, and no input at all that raises anything else."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request
from tritonclient.utils import np_to_triton_dtype

from modelserve.errors import (
    AuthError,
    ConfigError,
    Conflict,
    InferenceError,
    LoadError,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RequestError,
    UnsupportedMediaType,
)
from modelserve.server import protocol
from modelserve.server.http import body_buffer
from modelserve.server.protocol import InferRequest, RequestedOutput
from modelserve.serving.tensors import TensorSpec

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], np.uint8),
    "UINT16": np.array([[0, 7, 65535]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64),
    "FP16": np.array([[-65504.0, 0.1, 6e-8]], np.float16),
    "FP32": np.array([[-3.4e38, 0.1, 1e-45]], np.float32),
    "FP64": np.array([[-1.7e308, 0.1, 5e-324]], np.float64),
    "BYTES": np.array([[b"a", b"", "h\u00e9llo \u2603".encode()]], dtype=object),
}
DATATYPES = sorted(SAMPLES)
XSPEC = [TensorSpec("x", "FP32", (-1, 4))]
YSPEC = [TensorSpec("y", "FP32", (-1, 2)), TensorSpec("z", "INT64", (-1,))]


def triton_request(
    arrays: dict[str, np.ndarray],
    *,
    binary: bool,
    outputs: list[InferRequestedOutput] | None = None,
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The exact body and Inference-Header-Content-Length tritonclient.http would send."""
    inputs = []
    for name, array in arrays.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    body, json_size = _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=parameters,
    )
    return (body.encode() if isinstance(body, str) else body), json_size


def triton_result(body: bytes, headers: dict[str, str]) -> InferResult:
    length = headers.get("inference-header-content-length")
    return InferResult.from_response_body(body, header_length=int(length) if length else None)


def spec_for(name: str, datatype: str) -> TensorSpec:
    return TensorSpec(name, datatype, (-1, 3))


def request_json(**doc: Any) -> bytes:
    return orjson.dumps(doc)


def x_input(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]} | fields


def decode_x(body: bytes, header_length: int | None = None) -> InferRequest:
    return protocol.decode_infer_request(body, header_length=header_length, inputs=XSPEC, outputs=YSPEC)


def encode(outputs: dict[str, np.ndarray], request: InferRequest, **kw: Any) -> tuple[bytes, dict[str, str]]:
    specs = [TensorSpec(name, "FP32", (-1,)) for name in outputs]
    return protocol.encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=request.id,
        outputs=outputs,
        request=request,
        output_specs=specs,
        **kw,
    )


def plain_request(*, binary: bool = False, outputs: list[RequestedOutput] | None = None) -> InferRequest:
    return InferRequest(id=None, inputs={}, parameters={}, outputs=outputs, binary_output=binary)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert [_as_bytes(v) for v in got.ravel()] == [_as_bytes(v) for v in want.ravel()]
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def _as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


# --- requests encoded by the real tritonclient -------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_tritonclient_request_decodes_to_identical_array(datatype: str, binary: bool) -> None:
    sample = SAMPLES[datatype]
    body, header_length = triton_request({"t": sample}, binary=binary, request_id="42")
    assert (header_length is not None) == binary
    request = protocol.decode_infer_request(
        body, header_length=header_length, inputs=[spec_for("t", datatype)]
    )
    assert request.id == "42"
    assert_same(request.inputs["t"], sample)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_a_binary_request_read_into_a_body_buffer_decodes_the_same_with_bytes_elements(datatype: str) -> None:
    sample = SAMPLES[datatype]
    body, header_length = triton_request({"t": sample}, binary=True)
    assert header_length is not None
    buffer = body_buffer(len(body), aligned_at=header_length)  # what a large body is read into
    buffer[:] = body
    request = protocol.decode_infer_request(
        buffer, header_length=header_length, inputs=[spec_for("t", datatype)]
    )
    assert_same(request.inputs["t"], sample)
    if datatype == "BYTES":  # elements are bytes, not views that would keep the whole body alive
        assert {type(item) for item in request.inputs["t"].ravel()} == {bytes}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_request_with_several_inputs_outputs_and_parameters(binary: bool) -> None:
    arrays = {"a": SAMPLES["FP16"], "b": SAMPLES["BYTES"], "c": SAMPLES["BOOL"]}
    outputs = [InferRequestedOutput("y", binary_data=False), InferRequestedOutput("z")]
    body, header_length = triton_request(arrays, binary=binary, outputs=outputs, parameters={"tag": "t1"})
    specs = [spec_for(name, np_to_triton_dtype(a.dtype)) for name, a in arrays.items()]
    request = protocol.decode_infer_request(body, header_length=header_length, inputs=specs, outputs=YSPEC)
    for name, array in arrays.items():
        assert_same(request.inputs[name], array)
    assert request.parameters == {"tag": "t1"}
    assert not request.binary_output
    assert request.outputs == [
        RequestedOutput(name="y", binary=False, parameters={"binary_data": False}),
        RequestedOutput(name="z", binary=True, parameters={"binary_data": True}),
    ]


def test_tritonclient_without_outputs_asks_for_all_outputs_in_binary() -> None:
    body, header_length = triton_request({"x": np.ones((1, 4), np.float32)}, binary=True)
    request = decode_x(body, header_length)
    assert request.outputs is None
    assert request.binary_output


def test_non_finite_json_inputs_from_tritonclient_are_accepted() -> None:
    sample = np.array([[np.nan, np.inf, -np.inf, 1.5]], np.float32)
    body, _ = triton_request({"x": sample}, binary=False)
    assert b"NaN" in body and b"Infinity" in body
    assert_same(decode_x(body).inputs["x"], sample)


# --- responses decoded by the real tritonclient ------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_parses_in_tritonclient_to_identical_array(datatype: str, binary: bool) -> None:
    sample = SAMPLES[datatype]
    body, headers = encode({"out": sample}, plain_request(binary=binary))
    assert ("inference-header-content-length" in headers) == binary
    assert headers["content-type"] == ("application/octet-stream" if binary else "application/json")
    result = triton_result(body, headers)
    assert result.get_response()["model_name"] == "m"
    assert result.get_output("out")["datatype"] == datatype
    assert_same(result.as_numpy("out"), sample)


def test_per_output_binary_overrides_request_level_binary_output() -> None:
    outputs = {"y": np.array([[1.5, 2.5]], np.float32), "z": np.array([3, 4], np.int64)}
    request = plain_request(
        binary=True,
        outputs=[
            RequestedOutput(name="z", binary=False, parameters={}),
            RequestedOutput(name="y", binary=None, parameters={}),
        ],
    )
    body, headers = encode(outputs, request)
    result = triton_result(body, headers)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["z", "y"]
    assert response["outputs"][0]["data"] == [3, 4]
    assert response["outputs"][1]["parameters"] == {"binary_data_size": 8}
    for name, array in outputs.items():
        assert_same(result.as_numpy(name), array)


def test_output_filtering_returns_only_requested_outputs_and_rejects_unknown_names() -> None:
    outputs = {"y": np.zeros((1, 2), np.float32), "z": np.zeros(1, np.int64)}
    request = plain_request(outputs=[RequestedOutput(name="z", binary=None, parameters={})])
    body, _ = encode(outputs, request)
    assert [o["name"] for o in orjson.loads(body)["outputs"]] == ["z"]
    assert protocol.requested_output_names(request, YSPEC) == ["z"]
    assert protocol.requested_output_names(plain_request(), YSPEC) is None
    wrong = plain_request(outputs=[RequestedOutput(name="nope", binary=None, parameters={})])
    with pytest.raises(RequestError, match="unknown output 'nope'; the model's outputs are 'y', 'z'"):
        encode(outputs, wrong)
    with pytest.raises(RequestError, match="unknown output 'nope'"):
        protocol.requested_output_names(wrong, YSPEC)


def test_response_echoes_id_and_parameters() -> None:
    request = decode_x(request_json(id="req-7", inputs=[x_input()]))
    body, _ = encode({"y": np.zeros(2, np.float32)}, request, parameters={"note": "n"})
    doc = orjson.loads(body)
    assert doc["id"] == "req-7"
    assert doc["parameters"] == {"note": "n"}
    assert doc["model_version"] == "1"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize(
    "layout",
    [
        np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],
        np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        np.arange(6, dtype=">f8").reshape(2, 3),
        np.array(2.5, np.float32),
        np.zeros((0, 3), np.float32),
        np.array([["a", "bc"], ["", "d"]]),
    ],
    ids=["strided", "fortran", "big-endian", "scalar", "empty", "unicode"],
)
def test_outputs_of_any_layout_encode_row_major(layout: np.ndarray, binary: bool) -> None:
    body, headers = encode({"out": layout}, plain_request(binary=binary))
    got = triton_result(body, headers).as_numpy("out")
    assert got.shape == layout.shape
    if layout.dtype.kind == "U":
        assert [_as_bytes(v) for v in got.ravel()] == [v.encode() for v in layout.ravel()]
    else:
        np.testing.assert_array_equal(got, layout)


def test_non_finite_json_outputs_are_written_as_triton_writes_them() -> None:
    sample = np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)
    body, headers = encode({"out": sample}, plain_request())
    assert b"[NaN,Infinity,-Infinity,0.5]" in body
    assert_same(triton_result(body, headers).as_numpy("out"), sample)
    assert json.loads(body)["outputs"][0]["shape"] == [4]


def test_bytes_output_that_is_not_utf8_is_sent_binary_even_when_json_was_asked() -> None:
    sample = np.array([b"\xff\xfe", b"ok"], dtype=object)
    body, headers = encode({"out": sample}, plain_request(binary=False))
    assert headers["content-type"] == "application/octet-stream"
    assert_same(triton_result(body, headers).as_numpy("out"), sample)


def test_json_bytes_output_is_utf8_strings() -> None:
    body, headers = encode({"out": SAMPLES["BYTES"]}, plain_request())
    assert orjson.loads(body)["outputs"][0]["data"] == ["a", "", "h\u00e9llo \u2603"]
    assert headers == {"content-type": "application/json"}


# --- JSON request details -----------------------------------------------------------------------


def test_nested_json_data_matching_the_shape_is_accepted() -> None:
    spec = [TensorSpec("m", "INT32", (2, -1))]
    body = request_json(
        inputs=[{"name": "m", "shape": [2, 3], "datatype": "INT32", "data": [[1, 2, 3], [4, 5, 6]]}]
    )
    array = protocol.decode_infer_request(body, header_length=None, inputs=spec).inputs["m"]
    assert_same(array, np.arange(1, 7, dtype=np.int32).reshape(2, 3))


def test_integers_are_accepted_for_float_inputs_and_out_of_range_floats_become_infinite() -> None:
    body = request_json(inputs=[x_input(data=[1, 2, 1e300, -1e300])])
    array = decode_x(body).inputs["x"]
    assert_same(array, np.array([[1, 2, np.inf, -np.inf]], np.float32))
    many = TensorSpec("h", "FP16", (-1,))
    body = request_json(inputs=[{"name": "h", "shape": [100], "datatype": "FP16", "data": [70000.0] * 100}])
    assert np.isinf(protocol.decode_infer_request(body, header_length=None, inputs=[many]).inputs["h"]).all()


def test_empty_outputs_list_means_all_outputs() -> None:
    assert decode_x(request_json(inputs=[x_input()], outputs=[])).outputs is None


def test_binary_input_at_unaligned_offset_is_copied_aligned() -> None:
    header = orjson.dumps({"inputs": [x_input(data=None, parameters={"binary_data_size": 16})]})
    header = header.replace(b',"data":null', b"")
    header += b" " * ((-len(header)) % 8 + 1)  # force a misaligned start
    values = np.array([[1, 2, 3, 4]], np.float32)
    array = decode_x(header + values.tobytes(), len(header)).inputs["x"]
    assert array.flags.aligned
    assert_same(array, values)


# --- every client mistake is a RequestError that says what was wrong ----------------------------

BAD_JSON_REQUESTS: list[tuple[bytes, str]] = [
    (b"{not json", "malformed JSON"),
    (b"", "malformed JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (request_json(inputs={"x": 1}), "'inputs' must be a list"),
    (request_json(inputs=[3]), "must be a JSON object"),
    (request_json(inputs=[x_input(name=5)]), "string 'name'"),
    (request_json(id=5, inputs=[x_input()]), "'id' must be a string"),
    (request_json(inputs=[x_input()], parameters=[]), "'parameters' must be a JSON object"),
    (request_json(inputs=[x_input()], parameters={"binary_data_output": 1}), "binary_data_output"),
    (request_json(inputs=[x_input(name="w")]), "unknown input 'w'; the model's inputs are 'x'"),
    (request_json(inputs=[x_input(), x_input()]), "input 'x' is given more than once"),
    (request_json(inputs=[]), "missing input(s) 'x'"),
    (request_json(inputs=[x_input(datatype="INT64", data=[1, 2, 3, 4])]), "expects datatype FP32, got INT64"),
    (request_json(inputs=[x_input(datatype="BF16")]), "datatype 'BF16' is not supported"),
    (request_json(inputs=[x_input(datatype=["FP32"])]), "is not supported"),
    (request_json(inputs=[x_input(shape=[4])]), "expects 2 dimensions"),
    (request_json(inputs=[x_input(shape=[2, 2])]), "does not match the model's [-1, 4]"),
    (request_json(inputs=[x_input(shape=[-1, 4])]), "non-negative integers"),
    (request_json(inputs=[x_input(shape=[True, 4])]), "non-negative integers"),
    (request_json(inputs=[x_input(shape="1,4")]), "'shape' must be a list"),
    (request_json(inputs=[x_input(data=[1.0, 2.0])]), "shape [1, 4] needs 4 elements, 'data' has 2"),
    (request_json(inputs=[x_input(shape=[10**15, 4])]), "needs 4000000000000000 elements"),
    (request_json(inputs=[x_input(data="1,2,3,4")]), "'data' must be a list"),
    (request_json(inputs=[{"name": "x", "shape": [1, 4], "datatype": "FP32"}]), "has no 'data'"),
    (
        request_json(inputs=[x_input(data=[[1.0, 2.0], [3.0, 4.0]])]),
        "does not match shape [1, 4] at dimension 0",
    ),
    (
        request_json(inputs=[x_input(data=[[[1.0, 2.0, 3.0, 4.0]]])]),
        "does not match shape [1, 4] at dimension 1",
    ),
    (request_json(inputs=[x_input(data=[[[1.0], [2.0], [3.0], [4.0]]])]), "nested deeper than its shape"),
    (request_json(inputs=[x_input(data=[1.0, [2.0], 3.0, 4.0])]), "mixes lists and values"),
    (request_json(inputs=[x_input(data=["1", "2", "3", "4"])]), "FP32 data must be numbers"),
    (request_json(inputs=[x_input(data=[True, False, True, False])]), "FP32 data must be numbers"),
    (request_json(inputs=[x_input(data=[1.0, None, 3.0, 4.0])]), "FP32 data must be numbers"),
    (request_json(inputs=[x_input(parameters=[1])]), "'parameters' must be a JSON object"),
    (request_json(inputs=[x_input(parameters={"shared_memory_region": "r"})]), "shared-memory"),
    (
        request_json(inputs=[x_input(parameters={"binary_data_size": 16})]),
        "no Inference-Header-Content-Length",
    ),
    (request_json(inputs=[x_input()], outputs={"y": 1}), "'outputs' must be a list"),
    (request_json(inputs=[x_input()], outputs=[{"name": 1}]), "string 'name'"),
    (request_json(inputs=[x_input()], outputs=[{"name": "q"}]), "unknown output 'q'"),
    (request_json(inputs=[x_input()], outputs=[{"name": "y"}, {"name": "y"}]), "requested more than once"),
    (
        request_json(inputs=[x_input()], outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
        "binary_data",
    ),
    (
        request_json(inputs=[x_input()], outputs=[{"name": "y", "parameters": {"classification": 2}}]),
        "classification",
    ),
    (b'{"inputs": [], "x": "\\ud800", "y": NaN}', "malformed JSON"),
]


@pytest.mark.parametrize(("body", "message"), BAD_JSON_REQUESTS)
def test_bad_json_request_raises_request_error_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode_x(body)
    assert message in str(caught.value)
    assert protocol.status_for(caught.value) == 400


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("BOOL", [1, 0], "BOOL data must be true or false"),
        ("UINT8", [300, 1], "values must lie in [0, 255] for UINT8"),
        ("UINT32", [-1, 1], "values must lie in [0, 4294967295]"),
        ("INT64", [2**63, 1], "for INT64"),
        ("INT32", [1.5, 2], "INT32 data must be integers"),
        ("INT8", ["1", "2"], "INT8 data must be integers"),
        ("BYTES", [1, 2], "BYTES data must be strings"),
        ("BYTES", ["a", ["b"]], "BYTES data must be strings"),
    ],
)
def test_wrongly_typed_json_data_raises_request_error(datatype: str, data: list[Any], message: str) -> None:
    spec = [TensorSpec("t", datatype, (2,))]
    body = request_json(inputs=[{"name": "t", "shape": [2], "datatype": datatype, "data": data}])
    with pytest.raises(RequestError, match="input 't': ") as caught:
        protocol.decode_infer_request(body, header_length=None, inputs=spec)
    assert message in str(caught.value)


def binary_body(datatype: str, shape: list[int], size: int, payload: bytes) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "t", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}
            ]
        }
    )
    return header + payload, len(header)


@pytest.mark.parametrize(
    ("datatype", "shape", "size", "payload", "message"),
    [
        ("FP32", [3], 8, b"\0" * 8, "binary_data_size is 8 bytes; shape [3] of FP32 needs 12"),
        ("FP32", [3], 12, b"\0" * 8, "runs past the end of the body (8 binary bytes left)"),
        ("FP32", [2], 8, b"\0" * 12, "4 bytes of binary data that no input claims"),
        ("FP32", [2], -8, b"\0" * 8, "non-negative integer"),
        ("FP32", [10**18], 8, b"\0" * 8, "needs 4000000000000000000"),
        ("BOOL", [2], 2, b"\x01\x02", "only bytes 0 and 1"),
        ("BYTES", [10**12], 8, b"\0" * 8, "cannot hold 1000000000000 BYTES elements"),
        ("BYTES", [1], 6, b"\x05\0\0\0ab", "a BYTES element of 5 bytes runs past"),
        ("BYTES", [1], 6, b"\x01\0\0\0a\0", "ends inside an element length"),
        ("BYTES", [1], 10, b"\x01\0\0\0a\x01\0\0\0b", "does not hold exactly 1 BYTES elements"),
        ("BYTES", [2], 9, b"\x05\0\0\0hello", "does not hold exactly 2"),
    ],
)
def test_bad_binary_data_raises_request_error(
    datatype: str, shape: list[int], size: int, payload: bytes, message: str
) -> None:
    body, header_length = binary_body(datatype, shape, size, payload)
    spec = [TensorSpec("t", datatype, (-1,))]
    with pytest.raises(RequestError) as caught:
        protocol.decode_infer_request(body, header_length=header_length, inputs=spec)
    assert message in str(caught.value)


def test_header_length_beyond_the_body_and_data_with_binary_size_are_rejected() -> None:
    body = request_json(inputs=[x_input()])
    with pytest.raises(RequestError, match="exceeds the body"):
        decode_x(body, len(body) + 1)
    both = request_json(inputs=[x_input(parameters={"binary_data_size": 16})])
    with pytest.raises(RequestError, match="both 'data' and 'binary_data_size'"):
        decode_x(both + b"\0" * 16, len(both))


def test_unknown_input_name_is_truncated_in_the_message() -> None:
    with pytest.raises(RequestError) as caught:
        decode_x(request_json(inputs=[x_input(name="n" * 10_000)]))
    assert len(str(caught.value)) < 200


# --- status codes, error bodies, metadata -------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (RequestError("x"), 400),
        (PayloadTooLarge("x"), 413),
        (UnsupportedMediaType("x"), 415),
        (NotFound("x"), 404),
        (NotReady("x"), 503),
        (LoadError("x"), 400),
        (Conflict("x"), 409),
        (AuthError("x"), 401),
        (AuthError("x", status=403), 403),
        (ConfigError("x"), 500),
        (InferenceError("x"), 500),
        (ValueError("x"), 500),
    ],
)
def test_status_for_maps_each_error_to_its_http_status(exc: BaseException, status: int) -> None:
    assert protocol.status_for(exc) == status


def test_error_body_is_a_v2_error_object() -> None:
    assert orjson.loads(protocol.error_body('bad "x"\n')) == {"error": 'bad "x"\n'}


def test_metadata_objects() -> None:
    meta = protocol.model_metadata("fraud", ["1", "2"], "onnxruntime_onnx", XSPEC, YSPEC)
    assert meta == {
        "name": "fraud",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "z", "datatype": "INT64", "shape": [-1]},
        ],
    }
    server = protocol.server_metadata(version="0.1.0")
    assert server == {
        "name": "modelserve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "model_repository"],
    }


# --- nothing a client sends raises anything but RequestError ------------------------------------

PROPERTY_SPECS = [
    TensorSpec("x", "FP32", (-1, 2)),
    TensorSpec("s", "BYTES", (-1,)),
    TensorSpec("b", "BOOL", (2,)),
    TensorSpec("h", "FP16", (-1,)),
    TensorSpec("u", "UINT8", (-1,)),
]
PROPERTY_SETTINGS = settings(
    max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=25,
)
names = st.sampled_from(["x", "s", "b", "h", "u", "y", "nope"])
datatypes = st.sampled_from([*SAMPLES, "BF16", ""])
odd_dims = st.integers(-2, 5) | st.sampled_from([10**20, 2**63, True])
leaf_values = (
    st.integers(-300, 300)
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.text(max_size=3)
    | st.none()
    | st.lists(st.floats(), max_size=3)
)
parameters = st.none() | st.fixed_dictionaries(
    {}, optional={"binary_data_size": st.integers(-4, 40), "binary_data": st.booleans() | json_values}
)


@st.composite
def near_valid_input(draw: st.DrawFn, spec: TensorSpec) -> dict[str, Any]:
    """Mostly right name, datatype and rank, with data of any kind: reaches the tensor conversion."""
    dims = st.integers(0, 3) | odd_dims if draw(st.booleans()) else st.integers(0, 3)
    shape = [dim if dim >= 0 else draw(dims) for dim in spec.shape]
    if draw(st.integers(0, 9)) == 7:
        shape = draw(st.lists(odd_dims, max_size=3))
    entry: dict[str, Any] = {
        "name": spec.name if draw(st.integers(0, 9)) != 7 else draw(names),
        "datatype": spec.datatype
        if draw(st.integers(0, 9))
        else draw(st.sampled_from([*SAMPLES, "BF16", ""])),
        "shape": shape,
    }
    size = math.prod(dim for dim in shape if type(dim) is int and 0 <= dim < 100)
    if draw(st.booleans()):
        element = st.sampled_from([0, 1, -1, 255, 256, 1.5, 1e300, True, "a", "\u00e9"]) | leaf_values
        entry["data"] = draw(st.lists(element, min_size=max(0, size - 1), max_size=size + 1))
    elif draw(st.booleans()):
        entry["data"] = draw(json_values)
    if draw(st.booleans()):
        entry["parameters"] = draw(parameters | json_values)
    return entry


outputs = st.fixed_dictionaries({"name": names}, optional={"parameters": parameters})


@st.composite
def request_docs(draw: st.DrawFn) -> dict[str, Any]:
    specs = draw(st.permutations(PROPERTY_SPECS))
    if draw(st.integers(0, 9)) == 7:
        specs = specs[: draw(st.integers(0, len(specs)))]
    doc: dict[str, Any] = {"inputs": [draw(near_valid_input(spec)) for spec in specs]}
    if draw(st.integers(0, 9)) == 7:
        doc["inputs"] = draw(json_values)
    optional = {
        "id": st.text(max_size=3) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans() | json_values}),
        "outputs": st.lists(
            st.fixed_dictionaries({"name": names}, optional={"parameters": parameters}), max_size=3
        )
        | json_values,
    }
    for key, values in optional.items():
        if draw(st.integers(0, 9)) == 7:
            doc[key] = draw(values)
    return doc


def decode_anything(body: bytes, header_length: int | None) -> None:
    with contextlib.suppress(RequestError):
        protocol.decode_infer_request(body, header_length=header_length, inputs=PROPERTY_SPECS, outputs=YSPEC)


@PROPERTY_SETTINGS
@given(body=st.binary(max_size=200), header_length=st.none() | st.integers(-5, 250))
def test_arbitrary_bytes_raise_only_request_error(body: bytes, header_length: int | None) -> None:
    decode_anything(body, header_length)


@PROPERTY_SETTINGS
@given(value=json_values)
def test_arbitrary_json_raises_only_request_error(value: Any) -> None:
    decode_anything(json.dumps(value).encode(), None)


@PROPERTY_SETTINGS
@given(doc=request_docs(), tail=st.binary(max_size=48), binary=st.booleans())
def test_request_shaped_json_raises_only_request_error(
    doc: dict[str, Any], tail: bytes, binary: bool
) -> None:
    header = json.dumps(doc).encode()
    if binary:
        decode_anything(header + tail, len(header))
    else:
        decode_anything(header, None)


@pytest.mark.parametrize("rows", [protocol.PIECE_ELEMENTS // 2 + 1, 3 * protocol.PIECE_ELEMENTS + 7])
def test_large_outputs_written_in_pieces_decode_to_the_same_values_nan_included(rows: int) -> None:
    scores = np.random.default_rng(0).normal(size=(rows, 2)).astype(np.float32)
    scores[1, 0], scores[-1, 1] = np.nan, np.inf
    labels = np.arange(rows, dtype=np.int64)
    empty = np.zeros((0, 2), dtype=np.float32)
    request = InferRequest(
        id="modelserve-0000000000000000-0", inputs={}, parameters={}, outputs=None, binary_output=False
    )  # an id that looks like a placeholder stays an id
    assert protocol.large_outputs({"scores": scores})
    body, headers = protocol.encode_infer_response(
        model_name="m", model_version="1", request_id=request.id, request=request, output_specs=[],
        outputs={"scores": scores, "labels": labels, "empty": empty},
    )  # fmt: skip
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)  # Python's json reads NaN and Infinity, as tritonclient does
    assert doc["id"] == request.id
    decoded = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}
    np.testing.assert_array_equal(decoded["scores"].astype(np.float32), scores)  # float32 precision
    np.testing.assert_array_equal(decoded["labels"], labels)
    assert decoded["empty"].shape == (0, 2)
