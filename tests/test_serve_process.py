"""`modelserve serve` as a process: one-line errors for user mistakes, the port claimed first, TLS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modelserve import testing

MODELSERVE = [sys.executable, "-c", "import sys; from modelserve.cli import main; sys.exit(main())"]
ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def modelserve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MODELSERVE, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_serve_on_a_missing_or_empty_repository_exits_with_one_line(tmp_path: Path, case: str) -> None:
    repo = tmp_path / "models"
    if case == "empty":
        repo.mkdir()
    result = modelserve("serve", str(repo), "--port", str(free_port()), "--state-dir", str(tmp_path / "s"))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert str(repo) in result.stderr and "<model>/1/model.onnx" in result.stderr
    assert not (tmp_path / "s").exists()  # nothing written


def test_a_second_serve_on_a_taken_port_exits_before_loading_or_writing_state(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = modelserve(
            "serve",
            str(ROOT / "examples" / "models"),
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "s"),
        )
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "model credit" not in result.stderr  # exited before loading a model
    assert not (tmp_path / "s").exists()  # and before touching the state folder


def test_inspect_on_a_version_folder_and_on_a_zipmap_export(tmp_path: Path) -> None:
    ok = modelserve("inspect", str(ROOT / "examples" / "models" / "credit" / "2"))
    assert ok.returncode == 0, ok.stderr
    assert '"inputs"' in ok.stdout
    zipmap = testing.zipmap_classifier(tmp_path / "iris" / "1" / "model.onnx")
    bad = modelserve("inspect", str(zipmap))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "zipmap': False" in bad.stderr and bad.stderr.strip().count("\n") == 0


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1, made with the openssl command line."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the TLS test needs the openssl command (apt-get install openssl)")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_serve_speaks_tls_with_the_given_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    command = [
        *MODELSERVE, "serve", str(ROOT / "examples" / "models"), "--port", str(port),
        "--state-dir", str(tmp_path / "s"), "--tls-certfile", str(cert), "--tls-keyfile", str(key),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                ready = httpx.get(f"https://127.0.0.1:{port}/v2/health/ready", verify=context, timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "never ready over TLS"
            time.sleep(0.1)
        body = (ROOT / "examples" / "req.json").read_bytes()
        answer = httpx.post(f"https://127.0.0.1:{port}/v2/models/credit/infer", content=body, verify=context)
        assert answer.status_code == 200
        metrics = httpx.get(f"https://127.0.0.1:{port}/metrics", verify=context).text
        assert "modelserve" in metrics and "unknown_service" not in metrics
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served on a TLS port
            httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).raise_for_status()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0
