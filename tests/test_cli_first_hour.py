"""The commands a first hour needs: `history`, `rollout plan --show`, `--reason`, status in ms."""

from __future__ import annotations

import tomllib
from pathlib import Path

import httpx
import pytest

from modelserve import testing
from modelserve.cli import main
from modelserve.config import ServerConfig
from modelserve.rollout.plan import default_plan, plan_from_dict
from modelserve.server.app import create_app

EXAMPLES = Path(__file__).parent.parent / "examples"
TOKEN = "t0ken"


def test_rollout_plan_show_default_prints_the_default_plan_as_toml(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rollout", "plan", "--show", "default"]) == 0
    printed = capsys.readouterr().out
    assert plan_from_dict(tomllib.loads(printed)) == default_plan()
    assert main(["rollout", "plan", "--show", str(EXAMPLES / "plans" / "fast.toml")]) == 0
    assert 'name = "fast"' in capsys.readouterr().out
    assert main(["rollout", "plan", "--show", "nope.toml"]) == 1
    assert "nope.toml" in capsys.readouterr().err


def test_history_shows_who_changed_what_and_why_and_status_reads_latency_in_ms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(ServerConfig(repository=EXAMPLES / "models", state_dir=tmp_path, admin_token=TOKEN))
    with testing.serve(app) as server:
        client = ["--url", server.url, "--token", TOKEN]
        assert main(["stage", "credit", "2", *client]) == 0
        assert main(["promote", "credit", "--reason", "v2 won the offline eval", *client]) == 0
        assert main(["canary", "credit", "10", "--candidate", "1", *client]) == 0
        body = (EXAMPLES / "req.json").read_bytes()
        assert httpx.post(f"{server.url}/v2/models/credit/infer", content=body).status_code == 200
        capsys.readouterr()
        assert main(["history", "credit", *client]) == 0
        history = capsys.readouterr().out
        assert main(["status", "credit", *client]) == 0
        status = capsys.readouterr().out
    lines = history.splitlines()
    promote = next(i for i, line in enumerate(lines) if " promote " in line)
    assert "by admin (v2 won the offline eval)" in lines[promote]
    assert "live: 1 -> 2" in "\n".join(lines[promote : promote + 4])
    assert any("canary_weight: 0 -> 10" in line for line in lines)
    assert "p50 ms" in status and "req/60s" in status
    assert "UTC, canary by admin" in status  # status says when the model last changed, and who did it
