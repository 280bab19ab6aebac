"""Every client command of `modelserve` against a real server (uvicorn on a loopback socket).

Commands run in-process through `cli.main` (stdout captured); the grammar checks (did you mean,
closed pipe, `python -m modelserve`) run the real command in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelserve import __version__, testing
from modelserve.cli import main
from modelserve.config import ServerConfig
from modelserve.server.app import create_app
from modelserve.server.services import Services

TOKEN = "cli-secret"
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2, "3": 1}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    app = create_app(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN))
    with testing.serve(app) as running:
        yield running.url, app.state.services


@pytest.fixture(autouse=True)
def environment(server: tuple[str, Services], monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a user sets once: the server's URL and the admin token."""
    monkeypatch.setenv("MODELSERVE_URL", server[0])
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must succeed; its stdout."""
    status = main(list(argv))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    return json.loads(run(capsys, *argv, "--json"))


def test_status_stage_promote_rollback_unload_and_load(
    server: tuple[str, Services], capsys: pytest.CaptureFixture[str]
) -> None:
    _, services = server
    assert "fraud: live 1" in run(capsys, "status", "fraud")
    assert [m["model"] for m in run_json(capsys, "status")["models"]] == ["fraud"]
    assert "version 2 staged warm" in run(capsys, "stage", "fraud", "2")
    assert run_json(capsys, "status", "fraud")["candidate"] == "2"
    assert "promote 1 -> 2" in run(capsys, "promote", "fraud")
    assert services.registry.slots("fraud").live.version == "2"  # type: ignore[union-attr]
    switch = run_json(capsys, "rollback", "fraud")["switch"]
    assert (switch["from_version"], switch["to_version"]) == ("2", "1")
    assert "fraud: unloaded version 2" in run(capsys, "unload", "fraud", "2")
    assert "2" not in services.registry.slots("fraud").ready_versions
    assert run_json(capsys, "stage", "fraud", "3")["staged"]["version"] == "3"
    assert run_json(capsys, "unload", "fraud", "3") == {"model": "fraud", "unloaded": "3"}
    assert "version 2 warm" in run(capsys, "load", "fraud", "2")
    assert run_json(capsys, "load", "fraud", "3")["loaded"]["version"] == "3"


def test_canary_and_policy(server: tuple[str, Services], capsys: pytest.CaptureFixture[str]) -> None:
    _, services = server
    run(capsys, "stage", "fraud", "2")
    assert "5% of targeting keys -> version 2" in run(capsys, "canary", "fraud", "5")
    assert run_json(capsys, "canary", "fraud", "25")["policy"]["canary_weight"] == 25.0
    assert "allow_version_override = true" in run(capsys, "policy", "fraud", "allow_version_override=true")
    policy = run_json(capsys, "policy", "fraud", "shadow_sample_rate=0.5")["policy"]
    assert policy["shadow_sample_rate"] == 0.5 and policy["allow_version_override"] is True
    assert services.policies.get("fraud").canary_weight == 25.0  # type: ignore[union-attr]


def test_shadow_start_report_stop_and_the_old_spellings(
    server: tuple[str, Services], capsys: pytest.CaptureFixture[str]
) -> None:
    url, services = server
    run(capsys, "stage", "fraud", "2")
    assert "shadowing 2 at 50% of requests" in run(capsys, "shadow", "start", "fraud", "2", "--rate", "0.5")
    assert services.policies.get("fraud").shadow_versions == ("2",)  # type: ignore[union-attr]
    for _ in range(4):
        assert httpx.post(f"{url}/v2/models/fraud/infer", json=BODY).status_code == 200
    assert services.shadow is not None and services.shadow.runner.wait_idle(30)
    assert "verdict: NOT ENOUGH DATA" in run(capsys, "shadow", "report", "fraud")
    report = run_json(capsys, "shadow", "report", "fraud", "--min-samples", "1")
    checks = {c["name"]: c for c in report["shadows"][0]["recommendation"]["checks"]}
    assert "of 200" not in checks["shadow_agreement"]["detail"]  # the minimum is 1 comparison now
    assert run(capsys, "shadow", "stop", "fraud").strip() == "fraud: shadow off"
    assert "shadowing 2" in run(capsys, "shadow", "fraud", "2")  # before `start` existed
    assert run_json(capsys, "shadow", "fraud", "--off")["shadow"]["versions"] == []
    assert main(["shadow", "start", "fraud", "9"]) == 1
    assert "not loaded and ready" in capsys.readouterr().err


def test_rollout_start_status_pause_resume_promote_and_abort(
    server: tuple[str, Services], capsys: pytest.CaptureFixture[str]
) -> None:
    _, services = server
    assert "rollout of 2 against 1" in run(capsys, "rollout", "start", "fraud", "2", "--time-scale", "100")
    assert run_json(capsys, "rollout", "status", "fraud")["rollout"]["candidate"] == "2"
    assert "paused" in run(capsys, "rollout", "pause", "fraud", "--reason", "look first")
    assert run_json(capsys, "rollout", "resume", "fraud")["rollout"]["state"] == "running"
    stage = run_json(capsys, "rollout", "promote", "fraud")["rollout"]["stage_index"]
    assert stage == 1
    aborted = run_json(capsys, "rollout", "abort", "fraud", "--reason", "enough")["rollout"]
    assert aborted["state"] == "aborted" and aborted["reason"] == "enough"
    status = run(capsys, "rollout", "status", "fraud")
    assert "rollout of 2 against 1" in status and "aborted" in status and "enough" in status
    assert services.policies.get("fraud").canary_weight == 0.0  # type: ignore[union-attr]


def test_experiment_start_report_feedback_and_stop(
    server: tuple[str, Services], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = server
    run(capsys, "stage", "fraud", "2")
    assert "1 50%, 2 50%" in run(capsys, "experiment", "start", "fraud", "--arms", "1,2")
    response = httpx.post(f"{url}/v2/models/fraud/infer", json=BODY, headers={"x-user-id": "u1"})
    request_id = response.headers["x-request-id"]
    assert json.loads(run(capsys, "experiment", "feedback", "fraud", request_id, "1")) == {
        "accepted": 1, "unknown": 0, "duplicate": 0,
    }  # fmt: skip
    assert main(["experiment", "feedback", "fraud", "never-served", "1", "--json"]) == 1  # nothing accepted
    assert json.loads(capsys.readouterr().out)["unknown"] == 1
    assert "experiment" in run(capsys, "experiment", "report", "fraud")
    assert run_json(capsys, "experiment", "report", "fraud")["experiment"]["state"] == "running"
    assert run_json(capsys, "experiment", "stop", "fraud")["experiment"]["state"] == "stopped"


def test_url_and_token_options_win_over_the_environment(
    server: tuple[str, Services], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server
    monkeypatch.setenv("MODELSERVE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("MODELSERVE_ADMIN_TOKEN")
    assert main(["status", "fraud"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["status", "fraud", "--url", url]) == 1
    assert "pass --token or set MODELSERVE_READ_TOKEN or MODELSERVE_ADMIN_TOKEN" in capsys.readouterr().err
    assert "fraud: live 1" in run(capsys, "status", "fraud", "--url", url, "--token", TOKEN)
    assert main(["status", "fraud", "--url", url, "--token", "wrong"]) == 1
    assert "403" in capsys.readouterr().err


def test_version_and_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.strip() == f"modelserve {__version__}"
    for argv, suggestion in ((["statsu"], "'status'"), (["shadow", "strat", "fraud"], "'start'"),
                             (["rollout", "pasue", "fraud"], "'pause'")):  # fmt: skip
        with pytest.raises(SystemExit) as misspelled:
            main(argv)
        assert misspelled.value.code == 2
        assert f"did you mean {suggestion}?" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly(server: tuple[str, Services]) -> None:
    """`modelserve status --json | head -c 1`: no traceback, the status of a SIGPIPE'd process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "modelserve", "status", "--json"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # the reader goes away before the command writes
        error = process.stderr.read().decode()
        status = process.wait(timeout=60)
    assert "Traceback" not in error and error == ""
    assert status == 141
