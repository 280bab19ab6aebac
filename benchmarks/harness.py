"""Shared benchmark plumbing: servers pinned to one core, wrk on the other, result parsing."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVER_CORE = "0"
LOAD_CORE = "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: str, argv: Sequence[str]) -> list[str]:
    """Prefix with taskset when there is a second core to keep load and server apart."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", core, *argv]
    return list(argv)


def modelserve_argv(repo: Path | str, port: int, state_dir: Path | str, *extra: str) -> list[str]:
    """The `modelserve serve` command line every benchmark starts, as a user would run it."""
    return [
        sys.executable, "-m", "modelserve.cli", "serve", str(repo), "--port", str(port),
        "--state-dir", str(state_dir), "--log-level", "warning", *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def server_process(
    argv: Sequence[str], port: int, ready_path: str = "/v2/health/live", *, quiet_stderr: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process pinned to the server core; wait until it answers; stop it afterwards.

    Yields the process (taskset execs the server, so its pid is the server's: see `cpu_seconds`).

    `quiet_stderr`: discard the server's stderr (a server that logs a lot would otherwise fill the
    unread pipe and block).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stderr = subprocess.DEVNULL if quiet_stderr else subprocess.PIPE
    process = subprocess.Popen(pinned(SERVER_CORE, argv), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 60
    url = f"http://127.0.0.1:{port}{ready_path}"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"server exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv} did not start")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (and its threads) used so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk(url: str, body: bytes, headers: dict[str, str], *, connections: int, seconds: float) -> LoadResult:
    """Drive POST `url` with wrk (one thread, on the load core) and parse its summary."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body.bin"
        body_path.write_bytes(body)
        header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
        script = Path(tmp) / "post.lua"
        script.write_text(
            f'wrk.method = "POST"\nlocal f = io.open("{body_path}", "rb")\n'
            'wrk.body = f:read("*a")\nf:close()\n'
            f"{header_lines}\n"
            "done = function(summary, latency, requests)\n"
            '  io.write(string.format("P50 %f\\nP99 %f\\n",\n'
            "    latency:percentile(50), latency:percentile(99)))\n"
            "end\n"
        )
        argv = pinned(
            LOAD_CORE,
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), url],
        )
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"P50 ([\d.]+)", out).group(1)) / 1000  # type: ignore[union-attr]
    p99 = float(re.search(r"P99 ([\d.]+)", out).group(1)) / 1000  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    count = int(errors.group(1)) if errors else 0
    if socket_errors:
        count += sum(int(g) for g in socket_errors.groups())
    return LoadResult(rps, p50, p99, count)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [
        [f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
