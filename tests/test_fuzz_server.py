"""Bounded fuzzing of the V2 routes and the admin API over a real server: no 5xx, bounded memory.

Hypothesis sends valid-looking and malformed bodies, odd headers and odd path parameters to every
route that does not take models away (load/unload are covered by their own tests). The server is a
real uvicorn on a loopback socket; the budget is a few hundred requests (well under 20 s).
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelserve.config import ServerConfig
from modelserve.server.app import create_app
from modelserve.testing import serve

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e308, -1e308, 1e200, 0.0, -1, "nan", "false"])
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
THRESHOLDS = ["nan", "2", "0.5", "x", "inf", "-1"]
versions = st.sampled_from(["1", "2", "3", "0", "-1", "../../etc", "1e3", "x" * 200, ""])


def _tensor(draw: Any) -> dict[str, Any]:
    shape = draw(st.sampled_from([[1, 16], [2, 16], [1, 15], [0, 16], [1], [-1, 16], [1, 16, 1]]))
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["input", "nope", ""])),
        "datatype": draw(st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "X"])),
        "shape": shape,
        "data": draw(st.sampled_from([[0.5] * 16, [0.5] * 32, [], ["a"] * 16, [[0.5] * 16], [1e308] * 16])),
    }
    if draw(st.booleans()):
        tensor[draw(st.sampled_from(["parameters", "extra"]))] = draw(json_values)
    return tensor


@st.composite
def requests(draw: Any) -> tuple[str, str, bytes, dict[str, str]]:
    """(method, path, body, headers) for one fuzzed request."""
    model = draw(st.sampled_from(["fraud", "two", "nope", "fra ud", "%2e%2e"]))
    route = draw(
        st.sampled_from([
            ("POST", f"/v2/models/{model}/infer"),
            ("POST", f"/v2/models/{model}/versions/{draw(versions)}/infer"),
            ("GET", f"/v2/models/{model}"),
            ("GET", f"/v2/models/{model}/ready"),
            ("POST", "/v2/repository/index"),
            ("POST", f"/v2/models/{model}/feedback"),
            ("GET", f"/admin/models/{model}"),
            ("POST", f"/admin/models/{model}/stage"),
            ("POST", f"/admin/models/{model}/canary"),
            ("POST", f"/admin/models/{model}/policy"),
            ("POST", f"/admin/models/{model}/shadow"),
            ("GET", f"/admin/models/{model}/shadow/report?min_agreement={draw(st.sampled_from(THRESHOLDS))}"),
            ("POST", f"/admin/models/{model}/experiment"),
            ("POST", f"/admin/models/{model}/rollout"),
            ("POST", f"/admin/models/{model}/rollout/promote"),
            ("GET", f"/admin/models/{model}/rollout"),
        ])
    )  # fmt: skip
    kind = draw(st.sampled_from(["infer", "json", "raw", "empty"]))
    if kind == "infer":
        document: Any = {"inputs": [_tensor(draw) for _ in range(draw(st.integers(0, 2)))]}
        if draw(st.booleans()):
            document["id"] = draw(st.text(max_size=30))
        if draw(st.booleans()):
            document["outputs"] = draw(json_values)
        body = orjson.dumps(document)
    elif kind == "json":
        body = orjson.dumps(draw(json_values))
    elif kind == "raw":
        body = draw(st.binary(max_size=200))
    else:
        body = b""
    headers = dict(AUTH) if draw(st.booleans()) else {}
    for name in draw(st.lists(st.sampled_from([
        "x-user-id", "x-model-version", "x-request-id", "x-context-tier", "x-segment-country",
        "inference-header-content-length", "content-type",
    ]), max_size=3)):  # fmt: skip
        value = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))
        headers[name] = value  # what an HTTP client can send (no CR/LF, no surrounding spaces)
    return route[0], route[1], body, headers


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    from modelserve import testing

    root = tmp_path_factory.mktemp("fuzz")
    repo = testing.repository(root / "models", {"fraud": {"1": 1, "2": 2}})
    testing.two_in_two_out(repo / "two" / "1" / "model.onnx")
    config = ServerConfig(repository=repo, state_dir=Path(root / "state"), admin_token=TOKEN)
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_fuzzed_v2_and_admin_requests_never_get_a_server_error(
    client: httpx.Client, request: tuple[str, str, bytes, dict[str, str]]
) -> None:
    method, path, body, headers = request
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code < 500, (method, path, body[:200], headers, response.text[:300])
    assert response.headers.get("content-type", "").startswith(("application/json", "text/plain"))


def test_memory_stays_bounded_under_repeated_fuzzing(client: httpx.Client) -> None:
    import random

    rng = random.Random(7)
    paths = ["/v2/models/fraud/infer", "/v2/repository/index", "/admin/models/fraud/policy"]
    before = _rss_mb()
    for i in range(600):
        headers = {**AUTH, "x-context-tier": "t" * rng.randint(0, 4000), "x-segment-c": str(i) * 50}
        headers["x-user-id"] = f"user-{i}"
        client.post(rng.choice(paths), content=orjson.dumps({"id": "x" * 200, "inputs": []}), headers=headers)
    assert _rss_mb() - before < 100  # caches keyed on headers hold at most a few MB
    assert client.get("/v2/health/live").status_code == 200
