"""The committed example repository serves as documented, without retraining."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelserve.datatypes import ORT_TO_V2, V2_TO_NUMPY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL_DIR = EXAMPLES / "models" / "credit"
VERSIONS = ("1", "2")
FEATURES = 20


def _session(version: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path = MODEL_DIR / version / "model.onnx"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _spec(args: list[ort.NodeArg]) -> list[tuple[str, str, list[int]]]:
    """(name, V2 datatype, shape with -1 for dynamic dims), as the V2 metadata endpoint shows them."""
    return [(a.name, ORT_TO_V2[a.type], [d if isinstance(d, int) else -1 for d in a.shape]) for a in args]


@pytest.fixture(scope="module")
def sessions() -> dict[str, ort.InferenceSession]:
    return {version: _session(version) for version in VERSIONS}


@pytest.fixture(scope="module")
def traffic() -> tuple[np.ndarray, np.ndarray]:
    lines = (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    x = np.array([r["input"] for r in records], dtype=np.float32)
    y = np.array([r["label"] for r in records], dtype=np.int64)
    return x, y


def test_both_versions_take_the_same_single_fp32_input(sessions: dict[str, ort.InferenceSession]) -> None:
    specs = {version: _spec(session.get_inputs()) for version, session in sessions.items()}
    assert specs["1"] == specs["2"] == [("input", "FP32", [-1, FEATURES])]


def test_both_versions_output_label_int64_and_probabilities_fp32(
    sessions: dict[str, ort.InferenceSession],
) -> None:
    for session in sessions.values():
        assert _spec(session.get_outputs()) == [("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 2])]


def test_label_is_argmax_of_probabilities_that_sum_to_one(
    sessions: dict[str, ort.InferenceSession], traffic: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = traffic
    for session in sessions.values():
        label, proba = session.run(["label", "probabilities"], {"input": x})
        assert label.shape == (len(x),) and proba.shape == (len(x), 2)
        np.testing.assert_array_equal(label, proba.argmax(axis=1))
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_versions_disagree_on_some_labelled_traffic_and_both_beat_the_majority_class(
    sessions: dict[str, ort.InferenceSession], traffic: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = traffic
    labels = {v: s.run(["label"], {"input": x})[0] for v, s in sessions.items()}
    disagreement = float(np.mean(labels["1"] != labels["2"]))
    assert 0.02 < disagreement < 0.5
    majority = max(np.mean(y), 1 - np.mean(y))
    for predicted in labels.values():
        assert np.mean(predicted == y) > majority


def test_labelled_traffic_rows_have_the_model_width_and_binary_labels(
    traffic: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = traffic
    assert x.ndim == 2 and x.shape[1] == FEATURES and len(x) >= 100
    assert set(np.unique(y).tolist()) == {0, 1}


def test_req_json_is_a_v2_request_the_live_model_accepts(sessions: dict[str, ort.InferenceSession]) -> None:
    request = json.loads((EXAMPLES / "req.json").read_text())
    assert "id" not in request  # each request sent from the file gets its own id from the server
    (tensor,) = request["inputs"]
    (name, datatype, shape) = _spec(sessions["1"].get_inputs())[0]
    assert tensor["name"] == name and tensor["datatype"] == datatype
    assert len(tensor["shape"]) == len(shape) and tensor["shape"][1] == shape[1]
    assert len(tensor["data"]) == int(np.prod(tensor["shape"]))
    data = np.asarray(tensor["data"], dtype=V2_TO_NUMPY[datatype]).reshape(tensor["shape"])
    outputs = {v: s.run(["label"], {name: data})[0] for v, s in sessions.items()}
    # The example rows were picked so that comparing the versions shows one agreement, one difference.
    assert list(outputs["1"] == outputs["2"]) == [True, False]


def test_config_makes_an_existing_version_live_with_one_intra_op_thread() -> None:
    config = tomllib.loads((MODEL_DIR / "config.toml").read_text())
    assert config["live"] in VERSIONS
    assert config["serving"]["intra_op_threads"] == 1


def test_committed_model_files_are_small() -> None:
    for version in VERSIONS:
        assert (MODEL_DIR / version / "model.onnx").stat().st_size < 500 * 1024
