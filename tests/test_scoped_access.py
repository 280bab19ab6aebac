"""Over HTTP: scoped tokens, the audit log of every change, and outcomes posted with a feedback token."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import create_app

EXAMPLES = Path(__file__).parent.parent / "examples"
ADMIN, READ, FEEDBACK, INFERENCE = "adm-secret", "read-secret", "fb-secret", "inf-secret"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def config(state: Path, **tokens: str) -> ServerConfig:
    return ServerConfig(repository=EXAMPLES / "models", state_dir=state, **tokens)


def test_each_token_does_what_its_scope_allows_and_nothing_else(tmp_path: Path) -> None:
    app = create_app(config(tmp_path / "state", admin_token=ADMIN, read_token=READ, feedback_token=FEEDBACK))
    with testing.serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/admin/models/credit", headers=bearer(READ)).status_code == 200
        assert client.get("/admin/models/credit/history", headers=bearer(READ)).status_code == 200
        for token in (READ, FEEDBACK):
            refused = client.post("/admin/models/credit/stage", json={"version": "2"}, headers=bearer(token))
            assert refused.status_code == 403 and "may not use the admin API" in refused.json()["error"]
        assert client.get("/admin/models/credit", headers=bearer(FEEDBACK)).status_code == 403
        assert client.get("/admin/models/credit").status_code == 401

        client.post("/admin/models/credit/stage", json={"version": "2"}, headers=bearer(ADMIN))
        started = client.post(
            "/admin/models/credit/experiment",
            json={"arms": ["1", "2"], "metric": {"name": "approved", "kind": "binary"}},
            headers=bearer(ADMIN),
        )
        assert started.status_code == 200, started.text
        body = (EXAMPLES / "req.json").read_bytes()
        ids = [client.post("/v2/models/credit/infer", content=body).headers["x-request-id"] for _ in range(2)]
        assert ids[0] != ids[1]  # the same file sent twice: two requests, two ids
        outcomes = {"outcomes": [{"request_id": rid, "value": 1} for rid in ids]}
        posted = client.post("/v2/models/credit/feedback", json=outcomes, headers=bearer(FEEDBACK))
        assert posted.status_code == 200 and posted.json()["accepted"] == 2, posted.text
        as_reader = client.post("/v2/models/credit/feedback", json=outcomes, headers=bearer(READ))
        assert as_reader.status_code == 403


def test_inference_needs_a_token_once_one_is_set(tmp_path: Path) -> None:
    app = create_app(config(tmp_path / "state", admin_token=ADMIN, inference_token=INFERENCE))
    body = (EXAMPLES / "req.json").read_bytes()
    with testing.serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        missing = client.post("/v2/models/credit/infer", content=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/v2/models/credit/infer", content=body, headers=bearer("nope"))
        assert wrong.status_code == 403
        right = client.post("/v2/models/credit/infer", content=body, headers=bearer(INFERENCE))
        assert right.status_code == 200
        assert client.get("/v2/health/ready").status_code == 200  # probes need no token


@pytest.mark.parametrize("restart", [True])
def test_every_change_is_audited_with_actor_reason_before_and_after_and_survives_a_restart(
    tmp_path: Path, restart: bool
) -> None:
    state = tmp_path / "state"
    admin = bearer(ADMIN)
    app = create_app(config(state, admin_token=ADMIN, read_token=READ))
    with testing.serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        client.post("/admin/models/credit/stage", json={"version": "2"}, headers=admin).raise_for_status()
        reason = {"x-modelserve-reason": "v2 passed the offline eval"}
        client.post("/admin/models/credit/promote", headers={**admin, **reason}).raise_for_status()
        client.post(
            "/admin/models/credit/canary", json={"percent": 10, "candidate": "1"}, headers=admin
        ).raise_for_status()
        refused = client.post("/admin/models/credit/canary", json={"percent": 500}, headers=admin)
        assert refused.status_code == 400  # a refused change changes nothing and is not recorded
    with testing.serve(create_app(config(state, admin_token=ADMIN, read_token=READ))) as server:
        answer = httpx.get(f"{server.url}/admin/models/credit/history", headers=bearer(READ), timeout=30)
    entries = answer.json()["entries"]
    assert [e["action"] for e in entries] == ["restore", "stage", "promote", "canary", "restore"]
    promote = entries[2]
    assert promote["actor"] == "admin" and promote["reason"] == "v2 passed the offline eval"
    assert promote["before"]["live"] == "1" and promote["after"]["live"] == "2"
    canary = entries[3]
    assert canary["before"]["canary_weight"] == 0.0 and canary["after"]["canary_weight"] == 10.0
    assert entries[-1]["actor"] == "system" and entries[-1]["after"]["live"] == "2"
    assert all(entries[i]["seq"] < entries[i + 1]["seq"] for i in range(len(entries) - 1))
    assert json.dumps(entries)  # plain JSON, as webhooks receive it


def test_client_commands_use_the_scoped_token_of_each_call_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelserve.cli import main

    app = create_app(config(tmp_path / "state", admin_token=ADMIN, read_token=READ, feedback_token=FEEDBACK))
    with testing.serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        monkeypatch.setenv("MODELSERVE_URL", server.url)
        monkeypatch.delenv("MODELSERVE_ADMIN_TOKEN", raising=False)
        monkeypatch.setenv("MODELSERVE_READ_TOKEN", READ)
        monkeypatch.setenv("MODELSERVE_FEEDBACK_TOKEN", FEEDBACK)
        # Reads with the read token alone; a change needs the admin token, and the error says so.
        for command in (["status", "credit"], ["history", "credit"], ["shadow", "report", "credit"]):
            assert main(command) == 0, capsys.readouterr().err
        assert main(["stage", "credit", "2"]) == 1
        assert "401" in (err := capsys.readouterr().err) and "MODELSERVE_ADMIN_TOKEN" in err
        monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", ADMIN)
        assert main(["stage", "credit", "2"]) == 0
        assert main(["experiment", "start", "credit", "--arms", "1,2"]) == 0
        capsys.readouterr()
        rid = client.post("/v2/models/credit/infer", content=(EXAMPLES / "req.json").read_bytes()).headers[
            "x-request-id"
        ]
        # Outcomes go with the feedback token, not the admin one: the audit log says which was used.
        monkeypatch.setenv("MODELSERVE_FEEDBACK_TOKEN", "not-the-feedback-token")
        assert main(["experiment", "feedback", "credit", rid, "1"]) == 1
        assert "403" in (err := capsys.readouterr().err) and "MODELSERVE_FEEDBACK_TOKEN" in err
        monkeypatch.setenv("MODELSERVE_FEEDBACK_TOKEN", FEEDBACK)
        assert main(["experiment", "feedback", "credit", rid, "1", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["accepted"] == 1
        # With only the admin token set, every command still works (it grants every scope).
        monkeypatch.delenv("MODELSERVE_READ_TOKEN")
        monkeypatch.delenv("MODELSERVE_FEEDBACK_TOKEN")
        assert main(["status", "credit"]) == 0
        capsys.readouterr()
        assert main(["experiment", "feedback", "credit", rid, "1", "--json"]) == 1  # counted once already
        assert json.loads(capsys.readouterr().out)["duplicate"] == 1  # ... and not refused
