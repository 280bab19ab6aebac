"""The Dockerfile, linted by parsing it (no docker here), and the commands it runs, run for real."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    found: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        found.append((keyword.upper(), rest.strip()))
        current = ""
    return found


def exec_form(arguments: str) -> list[str]:
    """The argument list of an exec-form instruction (`["a", "b"]`); shell form is refused."""
    assert arguments.startswith("["), f"use the exec form (a JSON list): {arguments}"
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


STEPS = instructions(DOCKERFILE.read_text(encoding="utf-8"))


def only(keyword: str) -> str:
    matches = [args for key, args in STEPS if key == keyword]
    assert len(matches) == 1, f"expected one {keyword}, found {len(matches)}"
    return matches[0]


def test_the_base_image_is_a_slim_python() -> None:
    base = only("FROM")
    image, _, tag = base.partition(":")
    assert image in ("python", "docker.io/library/python"), base
    assert tag.startswith("3.1") and tag.endswith("-slim"), base


def test_the_server_runs_as_an_unprivileged_user_after_the_install() -> None:
    keys = [key for key, _ in STEPS]
    user = only("USER")
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    assert keys.index("USER") > max(i for i, (key, args) in enumerate(STEPS) if key == "RUN")
    assert any(key == "RUN" and "useradd" in args and user in args for key, args in STEPS)


def test_examples_are_baked_in_the_port_is_exposed_and_ready_is_the_healthcheck() -> None:
    assert any(key == "COPY" and args.split()[0] == "examples" for key, args in STEPS)
    assert only("EXPOSE") == "8000"
    health = only("HEALTHCHECK")
    options, _, command = health.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options and "--start-period=" in options
    assert "/v2/health/ready" in " ".join(exec_form(command))
    serve = exec_form(only("ENTRYPOINT")) + exec_form(only("CMD"))
    assert serve[:3] == ["modelserve", "serve", "examples/models"]
    assert serve[serve.index("--host") + 1] == "0.0.0.0" and serve[serve.index("--port") + 1] == "8000"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def localised(argv: list[str], port: int) -> list[str]:
    """The image's command for this machine: loopback instead of 0.0.0.0, a free port, our Python."""
    out = [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(arg, arg) for arg in argv]
    out = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in out]
    if out[0] == "modelserve":
        return [sys.executable, "-m", "modelserve", *out[1:]]
    if out[0] == "python":
        return [sys.executable, *out[1:]]
    return out


def test_the_image_command_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    """What `docker run` would do, as a process here: the ENTRYPOINT + CMD, then the HEALTHCHECK."""
    port = free_port()
    serve = localised(exec_form(only("ENTRYPOINT")) + exec_form(only("CMD")), port)
    state = tmp_path / "state"
    serve[serve.index("--state-dir") + 1] = str(state)  # the image's volume
    health = localised(exec_form(only("HEALTHCHECK").partition("CMD ")[2]), port)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(serve, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            check = subprocess.run(health, env=env, capture_output=True, timeout=30)
            if check.returncode == 0:
                break
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the healthcheck never passed"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    assert state.is_dir()


def test_the_install_step_names_extras_that_exist() -> None:
    import tomllib

    runs = [args for key, args in STEPS if key == "RUN" and "pip install" in args]
    assert runs, "the image installs modelserve with pip"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for run in runs:
        for word in shlex.split(run):
            if word.startswith(".["):
                assert set(word[2:-1].split(",")) <= set(extras)
