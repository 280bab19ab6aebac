"""Real processes for multi-replica tests and benchmarks: `redis-server` and `modelserve serve`.

Each gets a free loopback port, is waited for until it answers, and is stopped by its PID (SIGTERM,
then SIGKILL after a bound). Nothing here is mocked: these are the programs users run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_pid(process: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> None:
    """SIGTERM the process by its PID, SIGKILL it if it is still there after `timeout_s`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


@dataclass(slots=True)
class RedisServer:
    """A throwaway `redis-server` on 127.0.0.1 (no persistence); `url` is what clients use."""

    port: int
    process: subprocess.Popen[bytes] | None = None
    #: Keep the data across a restart (append-only file in this folder); None: memory only.
    data_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout_s: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        persist = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
        self.process = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--protected-mode", "yes", "--daemonize", "no",
                *(persist if self.data_dir is not None else ["--appendonly", "no"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process)
            self.process = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A running `redis-server` on a free port, stopped (by PID) on exit."""
    server = RedisServer(free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(slots=True)
class ServeProcess:
    """One `modelserve serve` process on a free port; `url` is its base URL."""

    args: Sequence[str]
    port: int = field(default_factory=free_port)
    env: dict[str, str] | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServeProcess:
        env = {**os.environ, **(self.env or {})}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelserve.cli", "serve", *self.args, "--port", str(self.port),
                 "--log-level", "warning"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        return self

    def wait_ready(self, *, timeout_s: float = 60.0) -> ServeProcess:
        """Block until `/v2/health/ready` answers 200 (raises with the log tail if the process died)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/v2/health/ready", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"serve on port {self.port} not ready within {timeout_s} s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process)


@contextlib.contextmanager
def serve_fleet(
    repository: Path | Sequence[Path],
    folder: Path,
    coordinator: str,
    *,
    count: int = 3,
    args: Sequence[str] = (),
    first: int = 0,
) -> Iterator[list[ServeProcess]]:
    """`count` ready `serve` processes sharing `coordinator`, named `replica-<first>`, `replica-<first+1>`...

    Each gets its own state folder and log in `folder`; `repository` may differ per replica (one path
    per process). All are stopped by their PIDs on exit.
    """
    repositories = [repository] * count if isinstance(repository, Path) else list(repository)
    processes = [
        ServeProcess(
            [
                str(repositories[i]),
                "--state-dir",
                str(folder / f"state-{first + i}"),
                "--coordinator",
                coordinator,
                *args,
            ],
            env={"POD_NAME": f"replica-{first + i}"},
            log_path=folder / f"serve-{first + i}.log",
        )
        for i in range(count)
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_ready()
        yield processes
    finally:
        for process in processes:
            process.stop()


def shared_state_url(backend: str, folder: Path, redis_url: str | None = None, *, db: int = 1) -> str:
    """A coordinator URL for a test fleet: a SQLite file in `folder`, or an emptied database `db` of
    the redis-server at `redis_url` (each test module its own db, so fleets never see each other)."""
    if backend == "sqlite":
        return f"sqlite://{folder / 'coordinator.db'}"
    if redis_url is None:
        raise ValueError("a redis fleet needs the redis-server's URL")
    url = f"{redis_url.rsplit('/', 1)[0]}/{db}"
    import redis

    redis.Redis.from_url(url).flushdb()
    return url


def wait_until(check: Callable[[], object], timeout_s: float, what: str, *, poll_s: float = 0.01) -> float:
    """Poll `check()` until it is true, at most `timeout_s` (then AssertionError naming `what`);
    the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s: {what}"
        time.sleep(poll_s)
    return time.monotonic() - started
