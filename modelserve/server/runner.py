"""Running a server process: claim the port first, then serve (optionally TLS), drain on SIGTERM.

`bind()` takes the listening socket before anything else happens, so a second `serve` on a taken
port exits with one line before it loads a model or writes state. `run()` serves an app on that
socket with uvicorn and shuts down gracefully on SIGTERM or Ctrl-C:

1. readiness turns 503 at once (`on_drain`), so a load balancer stops sending new requests;
2. after `drain_delay_s` (time for endpoints to be removed, e.g. on Kubernetes) the socket closes:
   no new connections; idle keep-alive connections close;
3. requests in flight finish, for at most `drain_timeout_s`, then are cancelled;
4. the app's lifespan shutdown runs once (state saved, exporters flushed) and the process exits 0.

A second signal during the drain skips the wait: it stops at once, as uvicorn does.

`run_workers()` does the same with several processes on one socket (`serve --workers N`): the socket
is bound first, by the caller, and every worker drains as above when the supervisor gets a signal.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from modelserve.errors import ConfigError

log = logging.getLogger("modelserve.server")

#: What each `--workers N` process runs first: its app and the callback that makes it not ready.
WorkerBuild = Callable[[], tuple[Any, Callable[[], None]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How `run()` serves: TLS files, drain timings, uvicorn logging."""

    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    drain_delay_s: float = 0.0
    drain_timeout_s: float = 30.0
    log_level: str = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ConfigError("TLS needs both --tls-certfile and --tls-keyfile")
        for path in (self.tls_certfile, self.tls_keyfile):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS file {path} does not exist")
        if self.drain_delay_s < 0 or self.drain_timeout_s <= 0:
            raise ConfigError("--drain-delay must be >= 0 s and --drain-timeout > 0 s")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or ConfigError in one line when the port is taken."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is outside 0..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse TIME_WAIT ports
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another modelserve?): "
                "stop it or choose another with --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a readiness-first drain (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, *, on_drain: Callable[[], None], drain_delay_s: float) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._drain_delay_s = drain_delay_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded for re-raising (uvicorn's default): a drained server exits 0, not by the signal.
        if self._exit_at is None:
            log.info("signal %d: draining (not ready; closing in %.1f s)", sig, self._drain_delay_s)
            self._exit_at = time.monotonic() + self._drain_delay_s
            try:
                self._on_drain()
            except Exception:
                log.exception("drain callback failed")
            if self._drain_delay_s <= 0:
                self.should_exit = True
        elif not self.should_exit:
            self.should_exit = True
        else:
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def run(
    app: Any, sock: socket.socket, options: RunOptions, *, on_drain: Callable[[], None],
    uvicorn_options: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Serve `app` on `sock` until a signal drains it (blocking); `uvicorn_options` are passed on
    (`server/connections.py`: the guarded protocol, keep-alive and concurrency bounds)."""
    config = uvicorn.Config(
        app,
        log_level=options.log_level,
        access_log=options.access_log,
        ssl_certfile=str(options.tls_certfile) if options.tls_certfile else None,
        ssl_keyfile=str(options.tls_keyfile) if options.tls_keyfile else None,
        timeout_graceful_shutdown=max(1, math.ceil(options.drain_timeout_s)),
        lifespan="on",
        **(uvicorn_options or {}),
    )
    server = DrainingServer(config, on_drain=on_drain, drain_delay_s=options.drain_delay_s)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise ConfigError("the server did not start (see the log above)")


class _DrainingWorker(Process):
    """One `--workers N` process: builds its app in the child and serves it with `DrainingServer`."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], *, build: WorkerBuild,
                 drain_delay_s: float) -> None:  # fmt: skip
        self.build = build
        self.drain_delay_s = drain_delay_s
        super().__init__(config, sockets)

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover - child
        drains: list[Callable[[], None]] = []

        def on_drain() -> None:
            for drain in drains:
                drain()

        self._server = DrainingServer(self.config, on_drain=on_drain, drain_delay_s=self.drain_delay_s)
        # The supervisor's health pings are answered while the app is built (imports, config).
        threading.Thread(target=self.always_pong, daemon=True).start()
        app, drain = self.build()
        drains.append(drain)
        self.config.app = app
        self._server.run(sockets)


class _DrainingSupervisor(Multiprocess):
    """uvicorn's worker supervisor, with workers that drain readiness-first (`_DrainingWorker`).

    On SIGTERM or SIGINT every worker gets SIGTERM and drains as one `serve` process does; the
    supervisor closes its copy of the socket and waits for them. A second signal is passed on, so
    the workers stop waiting (the same as a second signal to one process).
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], *, build: WorkerBuild,
                 drain_delay_s: float) -> None:  # fmt: skip
        super().__init__(config, sockets)
        self.build = build
        self.drain_delay_s = drain_delay_s
        for stop in (signal.SIGTERM, signal.SIGINT):  # act at once, not at the next 0.5 s poll
            signal.signal(stop, self._on_stop_signal)

    def _on_stop_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signal_queue.append(sig)
        self.should_exit.set()

    def _worker(self) -> _DrainingWorker:
        delay = self.drain_delay_s
        worker = _DrainingWorker(self.config, self.sockets, build=self.build, drain_delay_s=delay)
        worker.start()
        return worker

    def init_processes(self) -> None:
        self.processes = [self._worker() for _ in range(self.processes_num)]

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:  # it would fail the same way again
                log.error("worker %s failed to start: stopping", process.pid)
                self.should_exit.set()
                return
            log.info("worker %s died: starting another", process.pid)
            self.processes[index] = self._worker()

    def handle_hup(self) -> None:
        log.warning("SIGHUP ignored: restart the service to reload workers")

    def handle_ttin(self) -> None:
        log.warning("SIGTTIN ignored: the number of workers is fixed by --workers")

    def handle_ttou(self) -> None:
        log.warning("SIGTTOU ignored: the number of workers is fixed by --workers")

    def run(self) -> None:
        self.init_processes()
        while not self.should_exit.wait(0.5):
            self.handle_signals()
            self.keep_subprocess_alive()
        log.info("draining %d workers", len(self.processes))
        self.signal_queue.clear()
        self.terminate_all()  # SIGTERM: every worker drains readiness-first
        for sock in self.sockets:
            sock.close()  # the workers hold their own copies until they stop
        while any(p.process.is_alive() for p in self.processes):
            for process in self.processes:
                process.process.join(0.1)
            if self.signal_queue:  # a second signal: the workers stop waiting too
                self.signal_queue.clear()
                for process in self.processes:
                    if process.process.exitcode is None and process.pid is not None:
                        os.kill(process.pid, signal.SIGTERM)


def run_workers(
    build: WorkerBuild, sock: socket.socket, options: RunOptions, *, workers: int,
    uvicorn_options: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Serve on `sock` (bound by the caller) with `workers` processes until a signal drains them.

    `build` runs in each worker process and returns its app and the callback that turns its
    readiness to 503 (a module-level function: workers are spawned, `build` is pickled by name).
    Each worker drains as `run()` does: readiness first, then the socket after `drain_delay_s`, then
    the requests in flight for at most `drain_timeout_s`, then its lifespan shutdown, once.
    """
    config = uvicorn.Config(
        build,  # replaced in each worker by the app `build` returns
        workers=workers,
        log_level=options.log_level,
        access_log=options.access_log,
        ssl_certfile=str(options.tls_certfile) if options.tls_certfile else None,
        ssl_keyfile=str(options.tls_keyfile) if options.tls_keyfile else None,
        timeout_graceful_shutdown=max(1, math.ceil(options.drain_timeout_s)),
        lifespan="on",
        **(uvicorn_options or {}),
    )
    config.configure_logging()
    _DrainingSupervisor(config, [sock], build=build, drain_delay_s=options.drain_delay_s).run()
