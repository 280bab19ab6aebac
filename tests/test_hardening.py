"""What a client or an operator mistake can do to a running server: each case answers a clear 4xx
(or is refused at load with a message), degrades only what is broken, and leaves the server serving.

Every test runs a real server (uvicorn on a loopback socket, or a `modelserve serve` process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.admin import admin_endpoint
from modelserve.server.app import ModelServe, create_app
from modelserve.serving.runtime import LoadedVersion
from modelserve.testing import serve
from modelserve.testing_processes import ServeProcess

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _body(rows: int, seed: int = 0, **extra: Any) -> bytes:
    data = np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32)
    tensor = {"name": "input", "datatype": "FP32", "shape": [rows, 16], "data": data.ravel().tolist()}
    return orjson.dumps({"inputs": [tensor], **extra})


def _binary(rows: int, seed: int = 0) -> tuple[bytes, dict[str, str]]:
    """The same request as `_body` in the binary tensor extension (no JSON limit applies to its data)."""
    data = np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32).tobytes()
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": [rows, 16],
        "parameters": {"binary_data_size": len(data)},
    }
    header = orjson.dumps({"inputs": [tensor]})
    return header + data, {"inference-header-content-length": str(len(header))}


@pytest.fixture
def config(tmp_path: Path, model_repo: Path) -> ServerConfig:
    return ServerConfig(repository=model_repo, state_dir=tmp_path / "state", admin_token=TOKEN)


@pytest.fixture
def http(config: ServerConfig) -> Iterator[httpx.Client]:
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        yield client


# -- 1: the shadow disagreement reservoir ------------------------------------------------------------


def test_adversarial_disagreeing_batches_leave_status_report_and_gate_small(http: httpx.Client) -> None:
    assert http.post("/admin/models/fraud/stage", json={"version": "1"}).status_code == 200
    assert http.post("/admin/models/fraud/shadow", json={"versions": ["1"], "rate": 1.0}).status_code == 200
    content, headers = _binary(20_000)  # 1.3 MB of tensor per request; versions 1 and 2 disagree on many rows
    for _ in range(6):
        assert http.post("/v2/models/fraud/infer", content=content, headers=headers).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        report = http.get("/admin/models/fraud/shadow/report").json()
        if report["shadows"] and report["shadows"][0]["disagreements"]:
            break
        time.sleep(0.05)
    shadow = report["shadows"][0]
    assert shadow["disagreements"] and all(e["truncated"] for e in shadow["disagreements"])
    assert len(orjson.dumps(report)) < 500_000  # whole tensors would be tens of MB
    status = http.get("/admin/models/fraud")
    assert status.status_code == 200 and len(status.content) < 20_000
    assert "disagreements" not in status.text
    assert http.post("/admin/models/fraud/shadow", json={"off": True}).status_code == 200
    after = http.get("/admin/models/fraud/shadow/report").json()["shadows"][0]
    assert after["disagreements"] == [] and after["samples"] >= shadow["samples"]  # counts kept


def test_requests_too_large_to_shadow_are_dropped_and_counted(config: ServerConfig) -> None:
    ms = ModelServe(config)
    assert ms.services.shadow is not None
    ms.services.shadow.max_input_bytes = 64 * 16 * 4  # 64 rows
    with serve(ms.app()) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        assert client.post("/admin/models/fraud/stage", json={"version": "1"}).status_code == 200
        assert client.post("/admin/models/fraud/shadow", json={"versions": ["1"]}).status_code == 200
        assert client.post("/v2/models/fraud/infer", content=_body(65)).status_code == 200
        assert client.post("/v2/models/fraud/infer", content=_body(64)).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = client.get("/admin/models/fraud").json()["shadow"]["stats"]["1"]
            if stats["samples"] + stats["errors"] + stats["timeouts"] >= 1:
                break
            time.sleep(0.05)
    assert (stats["dropped"], stats["samples"]) == (1, 1)


# -- 2, 4, 21: header and body limits on every route ---------------------------------------------------


def test_oversized_headers_are_refused_before_any_cache_sees_them(http: httpx.Client) -> None:
    big = {"x-context-tier": "x" * 70_000}
    response = http.post("/v2/models/fraud/infer", content=_body(1), headers=big)
    assert response.status_code == 431 and "headers" in response.json()["error"]
    assert http.get("/v2/health/live", headers={"x-segment-a": "y" * 70_000}).status_code == 431
    assert http.get("/v2/health/live").status_code == 200


def test_the_body_limit_holds_on_every_route_declared_or_chunked(tmp_path: Path, model_repo: Path) -> None:
    config = ServerConfig(
        repository=model_repo, state_dir=tmp_path / "s", admin_token=TOKEN, max_body_bytes=1 << 20
    )
    big = b"[" + b"1," * (1 << 20) + b"1]"  # 2 MB

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        for path in ("/v2/repository/index", "/v2/models/fraud/infer", "/admin/models/fraud/stage"):
            assert client.post(path, content=big).status_code == 413, path
            assert client.post(path, content=chunks()).status_code == 413, path
        assert client.post("/v2/repository/index", content=b"{}").status_code == 200
        index_options = orjson.dumps({"ready": True, "pad": "x" * 100_000})  # the index takes only options
        assert client.post("/v2/repository/index", content=index_options).status_code == 413
        assert client.post("/v2/repository/index", json={"ready": "false"}).status_code == 400


def test_content_length_fields_must_be_plain_digits(http: httpx.Client) -> None:
    headers = {"inference-header-content-length": "1_0"}
    response = http.post("/v2/models/fraud/infer", content=_body(1), headers=headers)
    assert response.status_code == 400 and "plain digits" in response.json()["error"]


def test_repository_load_parameters_are_refused_and_unloading_twice_is_a_4xx(http: httpx.Client) -> None:
    config = {"parameters": {"config": '{"backend": "python"}'}}
    response = http.post("/v2/repository/models/fraud/load", json=config)
    assert response.status_code == 400 and "parameters" in response.json()["error"]
    assert http.post("/v2/repository/models/two/unload").status_code == 200
    again = http.post("/v2/repository/models/two/unload")
    assert again.status_code == 400 and "not loaded" in again.json()["error"]
    assert http.post("/v2/repository/models/nope/unload").status_code == 404


# -- 3: supervised background tasks --------------------------------------------------------------------


def test_a_failing_background_task_is_restarted_and_shown_while_serving_stays_ready(
    config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    ms = ModelServe(config)
    calls: list[int] = []

    async def broken() -> None:
        calls.append(1)
        raise RecursionError("maximum recursion depth exceeded")

    ms.services.hooks.tasks.append(broken)
    with (
        caplog.at_level(logging.ERROR, logger="modelserve.server"),
        serve(ms.app()) as server,
        httpx.Client(base_url=server.url, headers=AUTH) as client,
    ):
        deadline = time.monotonic() + 20
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post("/v2/models/fraud/infer", content=_body(1)).status_code == 200
        tasks = client.get("/admin/models").json()["tasks"]
    name = next(n for n in tasks if n.endswith("broken"))
    assert tasks[name]["failures"] >= 2 and "RecursionError" in tasks[name]["last_error"]
    others = [t for n, t in tasks.items() if n != name]
    assert others and all(t["failures"] == 0 and t["state"] == "running" for t in others)
    assert any("background task" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_deep_flags_file_is_refused_on_reload_and_serving_recovers_with_a_good_one(
    tmp_path: Path, model_repo: Path
) -> None:
    flags = tmp_path / "flags.json"
    good = {"flags": {"f": {"state": "ENABLED", "variants": {"a": "1"}, "defaultVariant": "a"}}}
    flags.write_text(json.dumps(good))
    config = ServerConfig(
        repository=model_repo, state_dir=tmp_path / "s", admin_token=TOKEN, flags_file=flags
    )
    rule: Any = "a"
    for _ in range(400):
        rule = {"if": [True, rule, "a"]}
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        flags.write_text(json.dumps({"flags": {"f": {**good["flags"]["f"], "targeting": rule}}}))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not client.get("/admin/flags").json()["last_error"]:
            time.sleep(0.05)
        assert "nests more than 64 levels" in client.get("/admin/flags").json()["last_error"]
        assert client.get("/v2/health/ready").status_code == 200
        good["flags"]["f"]["variants"]["b"] = "2"
        flags.write_text(json.dumps(good))
        while time.monotonic() < deadline and client.get("/admin/flags").json()["last_error"]:
            time.sleep(0.05)
        assert client.get("/admin/flags").json()["last_error"] is None
        tasks = client.get("/admin/models").json()["tasks"]
        assert all(t["failures"] == 0 for t in tasks.values())


# -- 5, 6, 9: one broken file of one model ----------------------------------------------------------------


def test_one_models_broken_state_files_degrade_only_that_model_and_status_names_them(
    tmp_path: Path,
) -> None:
    repo = testing.repository(
        tmp_path / "models", {"a": {"1": 1}, "b": {"1": 2}, "c": {"1": 3}, "d": {"1": 4}}
    )
    (repo / "d" / "config.toml").write_text("[serving]\nmax_queue_delay_ms = nan\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "slots.a.json").mkdir()  # unreadable: a directory
    (state / "policy.b.json").write_text("{corrupt")
    (state / "rollout.c.json").write_text('{"format": 1, "plan": [1, 2]}')
    config = ServerConfig(repository=repo, state_dir=state, admin_token=TOKEN)
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        for model in ("a", "b", "c"):  # a: its unreadable slots file is passed over (logged)
            assert client.post(f"/v2/models/{model}/infer", content=_body(1)).status_code == 200, model
        assert client.post("/v2/models/d/infer", content=_body(1)).status_code in (404, 503)
        listing = client.get("/admin/models").json()
        assert "max_queue_delay_ms" in listing["load_errors"]["d"]
        assert "slots.a.json" in " ".join(client.get("/admin/models/a").json()["state_errors"])
        assert "policy.b.json" in " ".join(client.get("/admin/models/b").json()["state_errors"])
        assert "saved rollout not restored" in " ".join(client.get("/admin/models/c").json()["state_errors"])


# -- 7, 8, 11, 12: experiments ---------------------------------------------------------------------------


def _experiment(client: httpx.Client, **spec: Any) -> httpx.Response:
    assert client.post("/admin/models/fraud/stage", json={"version": "1"}).status_code == 200
    return client.post("/admin/models/fraud/experiment", json={"arms": ["1", "2"], **spec})


def test_an_absurd_outcome_is_refused_and_the_experiment_survives_a_restart(config: ServerConfig) -> None:
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        assert _experiment(client, metric={"name": "revenue", "kind": "continuous"}).status_code == 200
        rid = client.post("/v2/models/fraud/infer", content=_body(1), headers={"x-user-id": "u"}).headers[
            "x-request-id"
        ]
        for bad in (
            {"request_id": rid, "value": 1e200},
            {"request_id": rid, "value": 1, "guardrails": {"x": 1e300}},
        ):
            assert client.post("/v2/models/fraud/feedback", json=bad).status_code == 400
        assert (
            client.post("/v2/models/fraud/feedback", json={"request_id": rid, "value": 5}).json()["accepted"]
            == 1
        )
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        document = client.get("/admin/models/fraud/experiment").json()
        assert document["experiment"]["state"] == "running"
        assert sum(arm["n"] for arm in document["report"]["arms"]) == 1


def test_clients_cannot_choose_the_join_id_nor_force_srm_with_one_key(http: httpx.Client) -> None:
    assert _experiment(http, metric="binary").status_code == 200
    victim = http.post("/v2/models/fraud/infer", content=_body(1), headers={"x-user-id": "alice"})
    chosen = http.post(
        "/v2/models/fraud/infer",
        content=_body(1, id="mine"),
        headers={"x-user-id": "bob", "x-request-id": "mine"},
    )
    issued = chosen.headers["x-request-id"]
    assert issued != "mine" and orjson.loads(chosen.content)["id"] == "mine"  # the V2 body still echoes it
    assert (
        http.post("/v2/models/fraud/feedback", json={"request_id": "mine", "value": 1}).json()["unknown"] == 1
    )
    victim_id = victim.headers["x-request-id"]
    assert (
        http.post("/v2/models/fraud/feedback", json={"request_id": victim_id, "value": 1}).json()["accepted"]
        == 1
    )
    for _ in range(300):  # one key hammering: counted once
        http.post("/v2/models/fraud/infer", content=_body(1), headers={"x-user-id": "mallory"})
    arms = http.get("/admin/models/fraud/experiment").json()["report"]["arms"]
    assert sum(arm["assigned"] for arm in arms) == 3


def test_absurd_arm_weights_are_refused_and_start_nothing(http: httpx.Client) -> None:
    arms = [{"version": "1", "weight": 1e308}, {"version": "2", "weight": 1e308}]
    response = _experiment(http, arms=arms, metric="binary")
    assert response.status_code == 400 and "weight" in response.json()["error"]
    assert http.get("/admin/models/fraud/experiment").status_code == 404


def test_an_epsilon_greedy_batch_with_an_absurd_value_counts_nothing(http: httpx.Client) -> None:
    metric = {"name": "revenue", "kind": "continuous"}
    assert _experiment(http, metric=metric, policy="epsilon_greedy").status_code == 200
    ids = [
        http.post("/v2/models/fraud/infer", content=_body(1), headers={"x-user-id": f"u{i}"}).headers[
            "x-request-id"
        ]
        for i in range(2)
    ]
    batch = {"outcomes": [{"request_id": ids[0], "value": 3.0}, {"request_id": ids[1], "value": 1e200}]}
    assert http.post("/v2/models/fraud/feedback", json=batch).status_code == 400
    arms = http.get("/admin/models/fraud/experiment").json()["report"]["arms"]
    assert sum(arm["n"] for arm in arms) == 0


# -- 13, 16, 17, 20: admin and protocol input --------------------------------------------------------------


def test_rollout_promote_all_must_be_a_boolean(http: httpx.Client) -> None:
    plan = {"stages": [{"name": "canary", "weight": 10, "min_samples": 5}, {"name": "full", "weight": 100}]}
    started = http.post("/admin/models/fraud/rollout", json={"version": "1", "plan": plan})
    assert started.status_code == 200, started.text
    response = http.post("/admin/models/fraud/rollout/promote", json={"all": "false"})
    assert response.status_code == 400 and "true or false" in response.json()["error"]
    assert http.get("/admin/models/fraud").json()["live_version"] == "2"


@pytest.mark.parametrize("request_id", ["a\r\nSet-Cookie: x=1", "nul\x00", "x" * 1_000_000])
def test_an_unsafe_request_id_is_never_echoed_in_a_header(http: httpx.Client, request_id: str) -> None:
    response = http.post("/v2/models/fraud/infer", content=_body(1, id=request_id))
    assert response.status_code == 200
    assert "x-request-id" not in response.headers and "set-cookie" not in response.headers
    assert orjson.loads(response.content)["id"] == request_id
    assert http.get("/v2/health/live").status_code == 200


def test_an_admin_500_is_logged_with_its_traceback(
    config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    ms = ModelServe(config)

    async def boom(request: Any, body: dict[str, Any]) -> Any:
        raise ZeroDivisionError("a bug")

    app = Starlette(routes=[Route("/admin/boom", admin_endpoint(ms.services, boom), methods=["POST"])])
    with caplog.at_level(logging.ERROR, logger="modelserve.server"), serve(app) as server:
        response = httpx.post(server.url + "/admin/boom", headers=AUTH)
    assert response.status_code == 500 and response.json() == {"error": "internal error"}
    (record,) = [r for r in caplog.records if "admin POST /admin/boom failed" in r.getMessage()]
    assert record.exc_info is not None


def test_admin_validation_gaps_are_closed(http: httpx.Client) -> None:
    canary = http.post("/admin/models/fraud/canary", json={"percent": 0, "candidate": "../../etc"})
    assert canary.status_code == 400
    assert http.post("/admin/models/fraud/stage", json={"version": "1"}).status_code == 200
    assert http.post("/admin/models/fraud/canary", json={"percent": 5}).status_code == 200  # not blocked
    live_as_shadow = http.post("/admin/models/fraud/policy", json={"shadow_versions": ["2"]})
    assert live_as_shadow.status_code == 400 and "live version" in live_as_shadow.json()["error"]
    crlf = http.post("/admin/models/fraud/policy", json={"targeting_header": "x-user\r\nx-evil: 1"})
    assert crlf.status_code == 400
    for query in ("min_agreement=nan", "max_latency_ratio=inf", "min_samples=0", "min_samples=1.5"):
        assert http.get(f"/admin/models/fraud/shadow/report?{query}").status_code == 400, query


# -- 14, 15: large bodies and slow clients ----------------------------------------------------------------


def test_a_large_json_body_is_decoded_off_the_loop_and_answers_correctly(http: httpx.Client) -> None:
    body = _body(10_000, seed=3)  # > 1 MB: the large-body path; under the 4 MiB JSON limit
    assert 1 << 20 < len(body) < 4 << 20
    large = http.post("/v2/models/fraud/infer", content=body)
    assert large.status_code == 200 and orjson.loads(large.content)["outputs"][0]["shape"] == [10_000, 2]
    small = orjson.loads(http.post("/v2/models/fraud/infer", content=_body(1, seed=3)).content)
    assert orjson.loads(large.content)["outputs"][0]["data"][:2] == pytest.approx(small["outputs"][0]["data"])


def test_json_over_its_limit_is_refused_before_it_is_parsed_and_binary_tensors_of_that_size_serve(
    tmp_path: Path, model_repo: Path
) -> None:
    config = ServerConfig(
        repository=model_repo, state_dir=tmp_path / "s", admin_token=TOKEN, max_json_bytes=65536
    )
    body = _body(5_000, seed=4)  # ~1.5 MB of JSON
    content, headers = _binary(5_000, seed=4)
    header = content[: int(headers["inference-header-content-length"])]
    data = content[len(header) :]

    def chunked() -> Iterator[bytes]:
        yield body[:40_000]
        yield body[40_000:]

    with serve(create_app(config)) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        for content in (body, chunked()):
            refused = client.post("/v2/models/fraud/infer", content=content)
            assert refused.status_code == 413, refused.text
            assert "binary tensor extension" in refused.json()["error"]
            assert refused.headers["connection"] == "close"  # the rest of the upload is not read
        headers = {"inference-header-content-length": str(len(header))}
        binary = client.post("/v2/models/fraud/infer", content=header + data, headers=headers)
        assert binary.status_code == 200, binary.text
        assert orjson.loads(binary.content)["outputs"][0]["shape"] == [5_000, 2]
        small = orjson.loads(client.post("/v2/models/fraud/infer", content=_body(1, seed=4)).content)
        assert orjson.loads(binary.content)["outputs"][0]["data"][:2] == pytest.approx(
            small["outputs"][0]["data"]
        )
        padded = header + b" " * 70_000  # a binary request's JSON header is JSON too
        headers = {"inference-header-content-length": str(len(padded))}
        assert (
            client.post("/v2/models/fraud/infer", content=padded + data, headers=headers).status_code == 413
        )
        outcomes = {"outcomes": [{"request_id": f"r{i}", "value": 1} for i in range(5_000)]}  # ~150 kB
        assert client.post("/v2/models/fraud/feedback", json=outcomes).status_code == 413
        assert client.get("/v2/health/live").status_code == 200


def test_a_large_binary_tensor_reaches_the_model_in_place_in_the_body_never_copied(
    config: ServerConfig,
) -> None:
    data = np.random.default_rng(5).normal(size=(20_000, 16)).astype(np.float32).tobytes()  # 1.3 MB
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": [20_000, 16],
        "parameters": {"binary_data_size": len(data)},
    }
    header = orjson.dumps({"id": "odd", "inputs": [tensor]})
    assert len(header) % 4  # float32 data right after it is unaligned in a plain buffer: numpy would copy it
    fed: list[np.ndarray] = []

    def recording(run: Any) -> Any:
        def recorded(names: Any, feeds: dict[str, np.ndarray], *args: Any) -> Any:
            fed.append(feeds["input"])
            return run(names, feeds, *args)

        return recorded

    app = create_app(config)
    with serve(app) as server, httpx.Client(base_url=server.url) as client:
        app.state.services.registry.slots("fraud").get().wrap_session(recording, describe={"test": "feeds"})
        headers = {"inference-header-content-length": str(len(header))}
        response = client.post("/v2/models/fraud/infer", content=header + data, headers=headers)
        assert response.status_code == 200, response.text
    (array,) = fed
    assert array.tobytes() == data and array.flags.aligned and not array.flags.owndata
    root: Any = array
    while isinstance(root, np.ndarray):
        root = root.base
    assert isinstance(root, memoryview) and root.nbytes == len(header) + len(data)  # a view of the body


def test_a_large_body_trickled_in_gets_408_and_gives_the_large_body_slot_back(
    config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large bodies are read one at a time; a client sending one slowly (each chunk in time for the
    connection's idle timeout) is cut off at the minimum rate, and the next large request serves."""
    from modelserve.server import v2_routes

    monkeypatch.setattr(v2_routes, "LARGE_BODY_GRACE_S", 1.0)  # 2 MB at 1 MB/s: 3 s in all
    data = np.zeros((32_768, 16), dtype=np.float32).tobytes()  # 2 MB
    sizes = {"binary_data_size": len(data)}
    tensor = {"name": "input", "datatype": "FP32", "shape": [32_768, 16], "parameters": sizes}
    header = orjson.dumps({"inputs": [tensor]})
    lengths = f"inference-header-content-length: {len(header)}\r\ncontent-length: {len(header) + len(data)}"
    with serve(create_app(config)) as server, socket.create_connection((server.host, server.port)) as slow:
        slow.sendall(
            b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
            + lengths.encode() + b"\r\n\r\n" + header
        )
        started = time.monotonic()
        slow.settimeout(0.2)
        answer = b""
        while not answer and time.monotonic() - started < 20:
            with contextlib.suppress(OSError):
                slow.sendall(b"\0" * 1024)  # 5 kB/s: alive, far too slow
            with contextlib.suppress(TimeoutError):
                answer = slow.recv(65536)
        took = time.monotonic() - started
        with httpx.Client(base_url=server.url) as client:
            served = client.post(
                "/v2/models/fraud/infer", content=header + data,
                headers={"inference-header-content-length": str(len(header))}, timeout=30,
            )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 3 s" in answer and 2.5 < took < 15
    assert served.status_code == 200, served.text


def test_a_large_request_shrinks_its_versions_arena_once_answered_and_a_small_one_does_not(
    config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    shrunk: list[str] = []
    released = threading.Event()
    shrink = LoadedVersion.shrink_arena

    def recorded(self: LoadedVersion) -> None:
        shrink(self)
        shrunk.append(self.version)
        released.set()

    monkeypatch.setattr(LoadedVersion, "shrink_arena", recorded)
    with serve(create_app(config)) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/v2/models/fraud/infer", content=_body(4)).status_code == 200
        content, headers = _binary(20_000)  # 1.3 MB: a large body
        response = client.post("/v2/models/fraud/infer", content=content, headers=headers)
        assert response.status_code == 200
        assert released.wait(30)
    assert shrunk == [response.headers["x-model-version"]]


def test_slow_clients_are_cut_off_and_never_stall_the_server(tmp_path: Path, model_repo: Path) -> None:
    server = ServeProcess(
        [
            str(model_repo),
            "--state-dir",
            str(tmp_path / "s"),
            "--header-timeout",
            "0.5",
            "--body-timeout",
            "0.5",
        ],
        log_path=tmp_path / "serve.log",
    ).start()
    sockets: list[socket.socket] = []
    try:
        server.wait_ready()
        for i in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if i % 2:  # headers trickling in
                sock.sendall(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\n")
            else:  # a body that stalls
                sock.sendall(
                    b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
                )
            sockets.append(sock)
        started = time.monotonic()
        assert httpx.get(server.url + "/v2/health/live", timeout=5).status_code == 200
        answers = []
        for sock in sockets:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            answers.append(data)
        assert time.monotonic() - started < 10
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers[1::2]) == 20  # headers late: 408
        assert all(not a.startswith(b"HTTP/1.1 200") for a in answers)
        assert httpx.get(server.url + "/v2/health/live", timeout=5).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def test_an_oversized_header_is_refused_while_it_arrives_never_parsed_whole(
    tmp_path: Path, model_repo: Path
) -> None:
    server = ServeProcess(
        [str(model_repo), "--state-dir", str(tmp_path / "s"), "--header-timeout", "60"],
        log_path=tmp_path / "serve.log",
    ).start()
    try:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            # A header value that never ends: a parser only sees it whole at its end, so only a count
            # of the raw bytes can refuse it before the 60 s header deadline (the socket gives up at 30).
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nx-context-k: " + b"v" * 400_000)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(4096):  # the rest was read and dropped (lingering close): no reset
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert httpx.get(server.url + "/v2/health/live", timeout=5).status_code == 200
    finally:
        server.stop()


# -- 19: operator mistakes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "missing repo", "bad flags", "state dir is a file", "deep flags eval",
        "--leader-lease nan", "--exposure-ttl 0", "--header-timeout inf", "--body-timeout -1",
    ],
)  # fmt: skip
def test_operator_mistakes_print_one_clear_line_not_a_traceback(
    tmp_path: Path, model_repo: Path, case: str
) -> None:
    (tmp_path / "bad.json").write_text('{"flags":')
    (tmp_path / "statefile").write_text("")
    rule: Any = "a"
    for _ in range(400):
        rule = {"if": [True, rule, "b"]}
    deep = {
        "flags": {
            "f": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": rule}
        }
    }
    (tmp_path / "deep.json").write_text(json.dumps(deep))
    args = {
        "missing repo": ["serve", str(tmp_path / "nope"), "--state-dir", str(tmp_path / "s")],
        "bad flags": [
            "serve",
            str(model_repo),
            "--flags",
            str(tmp_path / "bad.json"),
            "--state-dir",
            str(tmp_path / "s"),
        ],
        "state dir is a file": ["serve", str(model_repo), "--state-dir", str(tmp_path / "statefile")],
        "deep flags eval": ["flags", "eval", str(tmp_path / "deep.json"), "f", "--key", "k"],
    }.get(case) or ["serve", str(model_repo), "--state-dir", str(tmp_path / "s"), *case.split()]
    done = subprocess.run(
        [sys.executable, "-m", "modelserve.cli", *args, "--port", "0"] if args[0] == "serve" else
        [sys.executable, "-m", "modelserve.cli", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert "modelserve" in done.stderr
    if case.startswith("--"):  # a bad duration names its option, before any model loads
        assert case.split()[0] in done.stderr and not (tmp_path / "s").exists(), done.stderr
