"""V2 REST behaviour over a real socket: error matrix, headers, limits, admin auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import create_app
from modelserve.testing import serve


@pytest.fixture
def http(tmp_path: Path, model_repo: Path) -> Iterator[httpx.Client]:
    testing.identity(model_repo / "flags" / "1" / "model.onnx", "BOOL")
    testing.identity(model_repo / "words" / "1" / "model.onnx", "BYTES")
    config = ServerConfig(
        repository=model_repo, state_dir=tmp_path / "s", admin_token="t0k", max_body_bytes=4096
    )
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def infer_body(
    data: object, shape: list[int] | None = None, datatype: str = "FP32", name: str = "input"
) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape or [1, 16], "data": data}]}
    )


GOOD = [0.5] * 16


def test_successful_infer_carries_version_and_reason_headers(http: httpx.Client) -> None:
    response = http.post("/v2/models/fraud/infer", content=infer_body(GOOD))
    assert response.status_code == 200
    assert response.headers["x-model-version"] == "2"
    assert response.headers["x-route-reason"] == "stable"
    assert response.json()["model_version"] == "2"
    pinned = http.post("/v2/models/fraud/versions/2/infer", content=infer_body([GOOD]))  # nested data
    assert pinned.headers["x-route-reason"] == "pinned"
    assert pinned.json()["outputs"][0]["data"] == response.json()["outputs"][0]["data"]


BAD_REQUESTS = {
    "malformed json": b'{"inputs": [',
    "not an object": b"[1, 2, 3]",
    "no inputs": b"{}",
    "unknown input": infer_body(GOOD, name="other"),
    "wrong datatype": infer_body([1] * 16, datatype="INT32"),
    "unknown datatype": infer_body(GOOD, datatype="FP128"),
    "wrong rank": infer_body(GOOD, shape=[16]),
    "wrong dims": infer_body([0.5] * 8, shape=[1, 8]),
    "length differs from shape": infer_body([0.5] * 15),
    "negative dim": infer_body(GOOD, shape=[-1, 16]),
    "strings for floats": infer_body(["x"] * 16),
    "nested wrong shape": infer_body([[0.5] * 8, [0.5] * 8], shape=[1, 16]),
    "huge shape": infer_body(GOOD, shape=[10**12, 16]),
    "binary size overrun": orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 16],
                    "parameters": {"binary_data_size": 64},
                }
            ]
        }
    ),
    "unknown output": orjson.dumps(
        {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": GOOD}],
            "outputs": [{"name": "x"}],
        }
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_400_json_errors(http: httpx.Client, case: str) -> None:
    response = http.post("/v2/models/fraud/infer", content=BAD_REQUESTS[case])
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_bool_and_bytes_json_inputs(http: httpx.Client) -> None:
    flags = http.post("/v2/models/flags/infer", content=infer_body([True, False, True, True], [1, 4], "BOOL"))
    assert flags.json()["outputs"][0]["data"] == [True, False, True, True]
    as_ints = http.post("/v2/models/flags/infer", content=infer_body([1, 0, 1, 1], [1, 4], "BOOL"))
    assert as_ints.status_code == 400
    words = http.post("/v2/models/words/infer", content=infer_body(["a", "b", "ç", ""], [1, 4], "BYTES"))
    assert words.json()["outputs"][0]["data"] == ["a", "b", "ç", ""]


def test_not_found_and_too_large(http: httpx.Client) -> None:
    assert http.post("/v2/models/missing/infer", content=infer_body(GOOD)).status_code == 404
    assert http.post("/v2/models/fraud/versions/9/infer", content=infer_body(GOOD)).status_code == 404
    assert http.get("/v2/models/fraud/versions/1").status_code == 404  # in the repository, not loaded
    assert http.post("/v2/models/..%2F..%2Fetc/infer", content=infer_body(GOOD)).status_code in (400, 404)
    big = http.post("/v2/models/fraud/infer", content=infer_body([0.5] * 2000, [125, 16]))
    assert big.status_code == 413 and "limit" in big.json()["error"]

    def chunks() -> Iterator[bytes]:  # no content-length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 1000

    streamed = http.post("/v2/models/fraud/infer", content=chunks())
    assert streamed.status_code == 413
    assert http.post("/v2/models/fraud/infer", content=infer_body(GOOD)).status_code == 200  # still up


def test_id_is_echoed_and_returned_as_header(http: httpx.Client) -> None:
    body = orjson.dumps(
        {"id": "abc-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": GOOD}]}
    )
    response = http.post("/v2/models/fraud/infer", content=body)
    assert response.json()["id"] == "abc-1"
    assert response.headers["x-request-id"] == "abc-1"


def test_admin_api_requires_the_token(http: httpx.Client) -> None:
    assert http.get("/admin/models").status_code == 401
    assert http.get("/admin/models", headers={"authorization": "Bearer wrong"}).status_code == 403
    auth = {"authorization": "Bearer t0k"}
    status = http.get("/admin/models/fraud", headers=auth).json()
    assert status["live_version"] == "2"
    bad = http.post("/admin/models/fraud/stage", headers=auth, content=b"[]")
    assert bad.status_code == 400
    missing = http.post("/admin/models/fraud/stage", headers=auth, json={"version": "8"})
    assert missing.status_code == 404
    staged = http.post("/admin/models/fraud/stage", headers=auth, json={"version": "1"})
    assert staged.status_code == 200 and staged.json()["staged"]["state"] == "READY"


def test_admin_api_is_off_without_a_token(tmp_path: Path, model_repo: Path) -> None:
    with serve(create_app(ServerConfig(repository=model_repo, state_dir=tmp_path / "s"))) as server:
        response = httpx.get(server.url + "/admin/models", headers={"authorization": "Bearer anything"})
    assert response.status_code == 403
    assert "disabled" in response.json()["error"]


def test_staging_a_corrupt_or_missing_version_keeps_the_live_one_serving(
    http: httpx.Client, model_repo: Path
) -> None:
    (model_repo / "fraud" / "5").mkdir()
    (model_repo / "fraud" / "5" / "model.onnx").write_bytes(b"\x00not an onnx graph")
    auth = {"authorization": "Bearer t0k"}
    corrupt = http.post("/admin/models/fraud/stage", headers=auth, json={"version": "5"})
    assert corrupt.status_code == 400 and "cannot load" in corrupt.json()["error"]
    missing = http.post("/admin/models/fraud/stage", headers=auth, json={"version": "6"})
    assert missing.status_code == 404 and "no version" in missing.json()["error"]
    response = http.post("/v2/models/fraud/infer", content=infer_body(GOOD))
    assert response.status_code == 200 and response.headers["x-model-version"] == "2"
    assert http.get("/admin/models/fraud", headers=auth).json()["idle_slot"] in ("blue", "green")


def test_infer_works_the_same_when_mounted_under_a_prefix(tmp_path: Path, model_repo: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from modelserve.server.app import ModelServe

    ms = ModelServe(ServerConfig(repository=model_repo, state_dir=tmp_path / "s"))
    outer = Starlette(routes=[Mount("/ml", app=ms.app())], lifespan=ms.lifespan)  # Mount runs no lifespan
    with serve(outer) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        mounted = client.post("/ml/v2/models/fraud/infer", content=infer_body(GOOD))
        pinned = client.post("/ml/v2/models/fraud/versions/2/infer", content=infer_body(GOOD))
        missing = client.post("/ml/v2/models/nope/infer", content=infer_body(GOOD))
    assert mounted.status_code == 200 and mounted.headers["x-route-reason"] == "stable"
    assert pinned.status_code == 200 and pinned.headers["x-route-reason"] == "pinned"
    assert missing.status_code == 404 and missing.json()["error"]
