"""The real V2 client, tritonclient[http], against `create_app` served by uvicorn on a socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import create_app
from modelserve.testing import RunningServer, serve


@pytest.fixture
def server(tmp_path: Path, model_repo: Path) -> Iterator[RunningServer]:
    testing.identity(model_repo / "strings" / "1" / "model.onnx", "BYTES")
    testing.identity(model_repo / "half" / "1" / "model.onnx", "FP16")
    app = create_app(ServerConfig(repository=model_repo, state_dir=tmp_path / "state", admin_token="secret"))
    with serve(app) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.hostport)
    yield client
    client.close()


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("fraud")
    assert client.is_model_ready("fraud", "2")
    assert not client.is_model_ready("fraud", "1")  # in the repository, not loaded
    assert client.get_server_metadata()["name"] == "modelserve"
    meta = client.get_model_metadata("fraud")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"][0]["name"] == "probabilities"


@pytest.mark.parametrize("binary_input", [False, True])
@pytest.mark.parametrize("binary_output", [False, True])
def test_infer_json_and_binary_give_identical_values(
    client: httpclient.InferenceServerClient, binary_input: bool, binary_output: bool
) -> None:
    data = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    inp = httpclient.InferInput("input", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=binary_input)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary_output)
    result = client.infer("fraud", [inp], outputs=[out], request_id="req-42")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_version"] == "2"
    reference = client.infer("fraud", [inp]).as_numpy("probabilities")
    np.testing.assert_array_equal(probs, reference)


def test_output_filtering_returns_only_requested_outputs(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 2.5, dtype=np.float32)
    inputs = []
    for name, value in (("a", a), ("b", b)):
        tensor = httpclient.InferInput(name, [2, 3], "FP32")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer("two", inputs, outputs=[httpclient.InferRequestedOutput("flag")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["flag"]
    np.testing.assert_array_equal(result.as_numpy("flag"), a > b)
    both = client.infer("two", inputs)
    np.testing.assert_array_equal(both.as_numpy("sum"), a + b)


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_and_fp16_tensors(client: httpclient.InferenceServerClient, binary: bool) -> None:
    words = np.array([[b"alpha", b"", "bête".encode(), b"tab\tnul\x00"]], dtype=object)
    tensor = httpclient.InferInput("input", [1, 4], "BYTES")
    tensor.set_data_from_numpy(words, binary_data=binary)
    result = client.infer(
        "strings", [tensor], outputs=[httpclient.InferRequestedOutput("output", binary_data=True)]
    )
    assert result.as_numpy("output").tolist() == words.tolist()
    assert result.get_output("output")["datatype"] == "BYTES"
    if binary:  # onnxruntime string tensors are UTF-8 text: other bytes are refused, not mangled
        tensor.set_data_from_numpy(np.array([[b"\xff"] * 4], dtype=object), binary_data=True)
        with pytest.raises(InferenceServerException, match="UTF-8") as not_text:
            client.infer("strings", [tensor])
        assert not_text.value.status() == "400"
    half = np.array([[0.5, -1.25, 65504, 1e-3]], dtype=np.float16)
    tensor = httpclient.InferInput("input", [1, 4], "FP16")
    tensor.set_data_from_numpy(half, binary_data=binary)
    np.testing.assert_array_equal(client.infer("half", [tensor]).as_numpy("output"), half)


def test_errors_reach_the_client_as_v2_errors(client: httpclient.InferenceServerClient) -> None:
    good = httpclient.InferInput("input", [1, 16], "FP32")
    good.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as unknown_model:
        client.infer("nope", [good])
    assert unknown_model.value.status() == "404"
    assert "unknown model" in unknown_model.value.message()
    with pytest.raises(InferenceServerException) as unknown_version:
        client.infer("fraud", [good], model_version="9")
    assert unknown_version.value.status() == "404"
    wrong = httpclient.InferInput("input", [1, 4], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as bad_shape:
        client.infer("fraud", [wrong])
    assert bad_shape.value.status() == "400"
    typed = httpclient.InferInput("input", [1, 16], "INT32")
    typed.set_data_from_numpy(np.zeros((1, 16), np.int32))
    with pytest.raises(InferenceServerException) as bad_type:
        client.infer("fraud", [typed])
    assert bad_type.value.status() == "400"


def test_repository_extension(client: httpclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    states = {(e["name"], e["version"]): e["state"] for e in index}
    assert states[("fraud", "2")] == "READY" and states[("fraud", "1")] == "UNAVAILABLE"
    auth = {"authorization": "Bearer secret"}
    client.unload_model("two", headers=auth)
    assert not client.is_model_ready("two")
    client.load_model("two", headers=auth)
    assert client.is_model_ready("two")
    with pytest.raises(InferenceServerException) as denied:
        client.unload_model("two")
    assert denied.value.status() == "401"
