"""`serve --workers N` hands every worker the whole configuration: no field (no token) is dropped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.errors import ConfigError
from modelserve.testing_processes import ServeProcess


def _every_field_set() -> ServerConfig:
    return ServerConfig(
        repository=Path("/models"), state_dir=Path("/state"), admin_token="a", read_token="r",
        feedback_token="f", inference_token="i", flags_file=Path("/flags.json"), max_body_bytes=123,
        max_header_bytes=4567, max_json_bytes=8910, load_models=("credit", "iris"), webhooks=("http://127.0.0.1:9/hook",),
        coordinator="sqlite:///state/coordinator.db", replica_id="pod-1", memory_budget=1 << 20,
        leader_lease_s=3.0, metrics_dir=Path("/state/metrics"),
        exposure_ttl_s=30.0,
    )  # fmt: skip


def test_every_server_config_field_survives_the_worker_handoff() -> None:
    config = _every_field_set()
    defaults = ServerConfig(repository=Path("/models"))
    # the fixture sets every field to a non-default value, so a field added later must be listed here too
    for item in dataclasses.fields(ServerConfig):
        if item.name != "repository":
            assert getattr(config, item.name) != getattr(defaults, item.name), item.name
    assert ServerConfig.from_json(config.to_json()) == config
    assert ServerConfig.from_json(defaults.to_json()) == defaults


def test_an_unknown_handoff_key_is_an_error_not_silently_dropped() -> None:
    with pytest.raises(ConfigError, match="unknown server configuration keys"):
        ServerConfig.from_json({**_every_field_set().to_json(), "inference_tokn": "x"})


def test_workers_enforce_the_scoped_tokens(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "models", {"tiny": {"1": 1}})
    server = ServeProcess(
        [str(repo), "--workers", "2", "--state-dir", str(tmp_path / "state"), "--inference-token", "infer-t",
         "--admin-token", "admin-t"],
        log_path=tmp_path / "serve.log",
    )  # fmt: skip
    server.start()
    try:
        server.wait_ready()
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}
        url = server.url + "/v2/models/tiny/infer"
        for _ in range(10):  # new connections each time: both workers answer some of them
            assert httpx.post(url, json=body, timeout=10).status_code == 401
            authorized = httpx.post(url, json=body, headers={"authorization": "Bearer infer-t"}, timeout=10)
            assert authorized.status_code == 200, authorized.text
    finally:
        server.stop()


def test_the_fleet_timing_options_reach_the_server_config(tmp_path: Path) -> None:
    from modelserve.cli import build_parser, serve_config

    args = build_parser().parse_args(
        ["serve", str(tmp_path), "--coordinator", f"sqlite:///{tmp_path}/c.db",
         "--leader-lease", "3", "--exposure-ttl", "12.5"]
    )  # fmt: skip
    config = serve_config(args, {})
    assert (config.leader_lease_s, config.exposure_ttl_s) == (3.0, 12.5)
    default = build_parser().parse_args(["serve", str(tmp_path), "--coordinator", "sqlite:///x"])
    assert serve_config(default, {}).exposure_ttl_s == 60.0
