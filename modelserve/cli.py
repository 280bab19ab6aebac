"""`modelserve` command line. The only module that reads environment variables.

Server:  modelserve serve REPO [--host --port --flags FILE --state-dir DIR --admin-token T]
Client:  modelserve status|stage|load|promote|rollback|canary|policy|unload ...
         modelserve shadow start|stop|report ..., rollout start|status|pause|resume|abort|promote ...,
         modelserve experiment start|report|stop|feedback ...
         every client command takes --url (or MODELSERVE_URL), --token (else MODELSERVE_READ_TOKEN
         for reads, MODELSERVE_FEEDBACK_TOKEN for outcomes, then MODELSERVE_ADMIN_TOKEN),
         --json (print the server's answer as JSON) and --timeout
Local:   modelserve inspect PATH/TO/model.onnx, modelserve flags eval ...

Grammar: `modelserve COMMAND [ACTION] MODEL [ARGS] [OPTIONS]`; a misspelled command or action gets a
"did you mean"; output piped into a command that stops reading (`| head`) ends quietly.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelserve.errors import ModelServeError

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "MODELSERVE_URL"
TOKEN_ENV = "MODELSERVE_ADMIN_TOKEN"
READ_TOKEN_ENV = "MODELSERVE_READ_TOKEN"
FEEDBACK_TOKEN_ENV = "MODELSERVE_FEEDBACK_TOKEN"
INFERENCE_TOKEN_ENV = "MODELSERVE_INFERENCE_TOKEN"
REASON_HEADER = "x-modelserve-reason"
#: Exit status after the reader of stdout went away (as a process killed by SIGPIPE).
EXIT_BROKEN_PIPE = 141
GIL_SWITCH_INTERVAL_S = 0.0005
MAX_OPTION_SECONDS = 3600.0  # durations given as options: an hour is past any sensible setting


class ClientError(Exception):
    """A client command failed; the message is printed without a traceback."""


#: Which environment variables a client command takes its token from, by the scope its call needs:
#: the narrowest token first, then the admin token (which grants every scope).
TOKEN_ENVS = {
    "admin": (TOKEN_ENV,),
    "read": (READ_TOKEN_ENV, TOKEN_ENV),
    "feedback": (FEEDBACK_TOKEN_ENV, TOKEN_ENV),
}


def call_scope(method: str, path: str) -> str:
    """The token scope a client call needs: posting outcomes or labels is feedback, reading is read."""
    if method == "POST" and path.startswith("/v2/") and path.rsplit("/", 1)[-1] in ("feedback", "labels"):
        return "feedback"
    return "read" if method == "GET" else "admin"


def client_token(args: argparse.Namespace, scope: str, environ: Any = os.environ) -> tuple[str | None, str]:
    """The bearer token for a call of `scope`, and where it came from: `--token`, else the scope's
    environment variables in `TOKEN_ENVS` order."""
    if getattr(args, "token", None):
        return args.token, "--token"
    for name in TOKEN_ENVS[scope]:
        if environ.get(name):
            return environ[name], name
    return None, ""


def admin_call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the admin API of a running server and return its decoded JSON.

    The token is the one for the call's scope (`call_scope`, `client_token`): status and reports
    work with only `MODELSERVE_READ_TOKEN` set, posting outcomes with only `MODELSERVE_FEEDBACK_TOKEN`.
    """
    import httpx

    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    scope = call_scope(method, path)
    token, source = client_token(args, scope)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if getattr(args, "reason", None):
        headers[REASON_HEADER] = args.reason
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=args.timeout
        )
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {url}: {exc}") from None
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text}
    if response.status_code >= 400:
        message = data.get("error", response.text) if isinstance(data, dict) else response.text
        hint = ""
        if response.status_code in (401, 403):
            names = " or ".join(TOKEN_ENVS[scope])
            hint = f" (pass --token or set {names})" if not token else f" (the token from {source})"
        raise ClientError(f"{response.status_code}: {message}{hint}")
    return data


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def show(args: argparse.Namespace, data: Any, render: Callable[[], str]) -> int:
    """Print the server's answer: as JSON with `--json`, else `render()`'s text. Returns 0."""
    if args.json:
        print_json(data)
    else:
        print(render())
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a misspelled command, action or choice."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            if close:
                raise argparse.ArgumentError(
                    action, f"invalid choice: {value!r} (did you mean {close[0]!r}?)"
                )
        super()._check_value(action, value)


def _serve(args: argparse.Namespace) -> int:
    from modelserve.errors import ConfigError
    from modelserve.server import runner
    from modelserve.serving.layout import check_repository

    _size(args.memory_budget)  # the options first (ClientError), then the repository, then the port
    for option, seconds in (("--leader-lease", args.leader_lease), ("--exposure-ttl", args.exposure_ttl)):
        _positive_seconds(seconds, option)
    limits = _connection_limits(args)
    try:  # user mistakes end here, in one line, before a model loads or the state folder is touched
        check_repository(Path(args.repository))
        run_options = runner.RunOptions(
            tls_certfile=Path(args.tls_certfile) if args.tls_certfile else None,
            tls_keyfile=Path(args.tls_keyfile) if args.tls_keyfile else None,
            drain_delay_s=args.drain_delay,
            drain_timeout_s=args.drain_timeout,
            log_level=args.log_level,
            access_log=args.access_log,
        )
        sock = runner.bind(args.host, args.port)  # a taken port ends here, before any state is touched
    except ConfigError as exc:
        raise ClientError(str(exc)) from None
    try:
        config = serve_config(args, os.environ)
    except BaseException:
        sock.close()
        raise
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    from modelserve.server import connections

    connections.configure(**limits)  # read deadlines and header bound of every connection
    guarded = connections.uvicorn_options(max_header_bytes=args.max_header_bytes)
    if args.workers > 1:
        # Each worker process builds its own app from this description (`worker_serving`).
        handoff = {"config": config.to_json(), "connections": limits, "log_level": args.log_level}
        os.environ[WORKER_CONFIG_ENV] = json.dumps(handoff)
        runner.run_workers(worker_serving, sock, run_options, workers=args.workers, uvicorn_options=guarded)
        return 0
    from modelserve.server import heap
    from modelserve.server.app import ModelServe

    ms = ModelServe(config, **serve_extras(os.environ))
    # The process is ours: a short GIL switch interval bounds how long the event loop can wait for a
    # shadow worker thread that holds the GIL in Python code (default 5 ms, i.e. a p99 spike), and
    # fixed C heap thresholds let a huge request's memory go back to the OS.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    heap.fix_thresholds()

    def drain() -> None:
        ms.services.draining = True

    try:
        runner.run(ms.app(), sock, run_options, on_drain=drain, uvicorn_options=guarded)
    except ConfigError as exc:
        raise ClientError(str(exc)) from None
    return 0


#: How `serve --workers N` hands its configuration to the worker processes.
WORKER_CONFIG_ENV = "MODELSERVE_WORKER_CONFIG"
#: Set by Kubernetes (downward API): the replica's name in the shared state.
POD_NAME_ENV = "POD_NAME"


def _connection_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The read deadlines and header bound every connection gets (`server/connections.py`)."""
    for name in ("header_timeout", "body_timeout"):
        _positive_seconds(getattr(args, name), f"--{name.replace('_', '-')}")
    if not 1024 <= args.max_header_bytes <= 1 << 24:
        raise ClientError(f"--max-header-bytes must be within 1024..16777216, got {args.max_header_bytes}")
    if not 0 < args.max_body_bytes <= 1 << 34:
        raise ClientError(f"--max-body-bytes must be within 1..17179869184, got {args.max_body_bytes}")
    if not 1024 <= args.max_json_bytes <= 1 << 34:
        raise ClientError(f"--max-json-bytes must be within 1024..17179869184, got {args.max_json_bytes}")
    return {
        "header_timeout_s": args.header_timeout,
        "body_timeout_s": args.body_timeout,
        "max_header_bytes": args.max_header_bytes,
    }


def serve_config(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> Any:
    """The ServerConfig `serve` runs with; refuses a state dir another process holds."""
    from modelserve.config import ServerConfig
    from modelserve.errors import ConfigError
    from modelserve.state.inprocess import lock_state_dir

    if args.workers < 1:
        raise ClientError("--workers must be at least 1")
    state_dir = Path(args.state_dir)
    if state_dir.exists() and not state_dir.is_dir():
        raise ClientError(f"--state-dir {state_dir} exists and is not a directory")
    coordinator = args.coordinator
    if coordinator is None and args.workers > 1:
        coordinator = f"sqlite://{state_dir / 'coordinator.db'}"  # several processes, one machine
    if coordinator is None:
        try:  # fail fast with the way out, before loading any model
            os.close(lock_state_dir(state_dir))
        except ConfigError as exc:
            raise ClientError(str(exc)) from None
    return ServerConfig(
        repository=Path(args.repository),
        state_dir=state_dir,
        admin_token=args.admin_token or environ.get(TOKEN_ENV) or None,
        read_token=args.read_token or environ.get(READ_TOKEN_ENV) or None,
        feedback_token=args.feedback_token or environ.get(FEEDBACK_TOKEN_ENV) or None,
        inference_token=args.inference_token or environ.get(INFERENCE_TOKEN_ENV) or None,
        flags_file=Path(args.flags) if args.flags else None,
        max_body_bytes=args.max_body_bytes,
        max_header_bytes=args.max_header_bytes,
        max_json_bytes=args.max_json_bytes,
        webhooks=tuple(args.webhook),
        coordinator=coordinator,
        replica_id=environ.get(POD_NAME_ENV) or None,
        memory_budget=_size(args.memory_budget),
        leader_lease_s=args.leader_lease,
        exposure_ttl_s=args.exposure_ttl,
        metrics_dir=state_dir / "metrics" if args.workers > 1 else None,
    )


def worker_app() -> Any:
    """The app of one `serve --workers N` worker process (uvicorn calls this factory in each)."""
    from modelserve.config import ServerConfig
    from modelserve.server import connections, heap
    from modelserve.server.app import create_app

    raw = json.loads(os.environ[WORKER_CONFIG_ENV])
    if raw.get("log_level"):  # a spawned worker starts with no logging set up
        logging.basicConfig(level=raw["log_level"].upper(), format="%(levelname)s:     %(name)s: %(message)s")
    if raw.get("connections"):
        connections.configure(**raw["connections"])
    config = ServerConfig.from_json(raw["config"])
    if config.replica_id:  # several workers share one pod name
        config = dataclasses.replace(config, replica_id=f"{config.replica_id}:{os.getpid()}")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    heap.fix_thresholds()
    return create_app(config, **serve_extras(os.environ))


def worker_serving() -> tuple[Any, Callable[[], None]]:
    """One `serve --workers N` worker's app and its drain callback (readiness 503), built in the worker."""
    app = worker_app()
    services = app.state.services

    def drain() -> None:
        services.draining = True

    return app, drain


def serve_extras(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    """Keyword arguments for create_app that come from the environment (telemetry providers)."""
    import anyio.to_thread

    from modelserve.errors import ConfigError
    from modelserve.server.services import Extension, Hooks, Services
    from modelserve.telemetry.exporters import build_providers_from_env

    try:
        providers = build_providers_from_env(environ)
    except ConfigError as exc:
        raise ClientError(str(exc)) from None

    async def flush() -> None:
        await anyio.to_thread.run_sync(providers.shutdown)  # flushing exporters blocks

    def flush_at_shutdown(services: Services) -> Extension:
        # Extension hooks run after the server's own: the shadow spans are recorded before the flush.
        return Extension(hooks=Hooks(shutdown=[flush]))

    return {
        "tracer_provider": providers.tracer_provider,
        # Without a metric exporter only `/metrics` reads metrics: let the app use its fast private path.
        "meter_provider": providers.meter_provider if providers.metric_exporters else None,
        "extensions": [flush_at_shutdown],
    }


def _status(args: argparse.Namespace) -> int:
    path = f"/admin/models/{args.model}" if args.model else "/admin/models"
    data = admin_call(args, "GET", path)

    def render() -> str:
        lines = [render_status(status) for status in ([data] if args.model else data["models"])]
        for name, error in ({} if args.model else data.get("load_errors", {})).items():
            lines.append(f"{name}: NOT LOADED: {error}")
        if not args.model and data.get("memory"):
            lines.append(render_memory(data["memory"]))
        return "\n".join(lines)

    return show(args, data, render)


def render_memory(memory: dict[str, Any]) -> str:
    """The memory line of `status`: what the warm versions cost, against the budget if there is one."""
    from modelserve.serving.memory import format_size

    used = f"memory: warm versions use {format_size(memory['used_bytes'])}"
    if memory.get("budget_bytes") is None:
        return used + " (no --memory-budget)"
    return (
        f"{used} of the {format_size(memory['budget_bytes'])} budget "
        f"({format_size(memory['free_bytes'])} free)"
    )


def _size(text: str | None) -> int | None:
    from modelserve.errors import ConfigError
    from modelserve.serving.memory import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise ClientError(f"--memory-budget: {exc}") from None


def _positive_seconds(value: float, option: str) -> None:
    from modelserve import validation

    try:
        validation.number(value, option, low=0.0, low_open=True, high=MAX_OPTION_SECONDS)
    except ModelServeError as exc:
        raise ClientError(str(exc)) from None


def render_status(status: dict[str, Any]) -> str:
    """A model's status for people: slots, split, per-version metrics, shadow, rollout, experiment."""
    policy = status.get("policy") or {}
    lines = [f"{status['model']}: live {status['live_version']} (slot {status['live_slot']})"]
    idle = status.get("candidate") or status.get("previous")
    if idle:
        lines.append(f"  idle slot {status['idle_slot']}: version {idle} ({status['idle_role']}, warm)")
    by_version = {slot["version"]: slot for slot in (status.get("slots") or {}).values() if slot}
    for row in status.get("warm") or []:
        slot = by_version.get(row["version"], {})
        faults = "  FAULTS INJECTED" if slot.get("injected_faults") else ""
        memory = (row.get("memory") or {}).get("resident", "?")
        pinned = ", pinned" if row.get("pinned") else ""
        lines.append(
            f"  version {row['version']} ({row['role']}, slot {row['slot']}{pinned}): {slot.get('state')}, "
            f"{slot.get('execution')}, warm-up {slot.get('warmup_latency_us')} µs, memory {memory}{faults}"
        )
    split = f"  split: canary {policy.get('canary_weight', 0):g}% -> {policy.get('candidate') or '-'}"
    if policy.get("flag"):
        split += f", flag {policy['flag']}"
    if policy.get("shadow_versions"):
        split += f", shadow {','.join(policy['shadow_versions'])} at {policy['shadow_sample_rate']:g}"
    if policy.get("request_timeout_s") is not None:  # a running rollout plan's, in place of config.toml's
        split += f", request deadline {policy['request_timeout_s'] * 1000:g} ms (policy)"
    lines.append(split)
    metrics = status.get("metrics") or []
    if metrics:
        header = ("version", "role", "req/60s", "errors", "p50 ms", "p95 ms", "p99 ms")
        lines.append("  " + " ".join(f"{h:>8}" for h in header))
        for row in metrics:
            error_rate = "-" if row["error_rate"] is None else f"{row['error_rate']:.2%}"
            cells = [_ms(row["p50_s"]), _ms(row["p95_s"]), _ms(row["p99_s"])]
            lines.append(
                f"  {row['version']:>8} {row['role']:>8} {row['requests']:>8} {error_rate:>8} "
                + " ".join(f"{c:>8}" for c in cells)
            )
    shadow = (status.get("shadow") or {}).get("stats") or {}
    for version, stats in shadow.items():
        rate = stats.get("agreement_rate")
        interval = stats.get("agreement_interval") or [None, None]
        agreement = "-" if rate is None else f"{rate:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
        counts = ", ".join(f"{name} {stats.get(name, 0)}" for name in ("errors", "timeouts", "dropped"))
        compared = stats.get("samples", 0)
        lines.append(f"  shadow {version}: {compared} compared, agreement {agreement}, {counts}")
    rollout = status.get("rollout")
    if rollout:
        lines.append(
            f"  rollout of {rollout.get('candidate')}: {rollout.get('state')}, stage {rollout.get('stage')} "
            f"({rollout.get('weight')}%)" + (f", {rollout['reason']}" if rollout.get("reason") else "")
        )
    if status.get("experiment"):
        lines.append(f"  experiment: {status['experiment']}")
    change = status.get("last_change")
    if change:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(change["time"])))
        why = f" ({change['reason']})" if change.get("reason") else ""
        lines.append(f"  last change: {when} UTC, {change['action']} by {change['actor']}{why}")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    """Seconds (as the API answers) in milliseconds (as people read latency)."""
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _stage(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"version": args.version}
    if args.force:
        body["force"] = True
    data = admin_call(args, "POST", f"/admin/models/{args.model}/stage", body)
    staged = data["staged"]
    return show(
        args,
        data,
        lambda: (
            f"{args.model}: version {staged['version']} staged warm ({staged['execution']}, "
            f"warm-up {staged['warmup_latency_us']} µs), 0% traffic"
        ),
    )


def _load(args: argparse.Namespace) -> int:
    data = admin_call(args, "POST", f"/admin/models/{args.model}/load", {"version": args.version})
    loaded = data["loaded"]
    memory = (loaded.get("memory") or {}).get("resident", "?")
    warm = ", ".join(f"{row['version']} ({row['role']})" for row in data["status"]["warm"])
    return show(
        args,
        data,
        lambda: f"{args.model}: version {loaded['version']} warm (memory {memory}), 0% traffic; warm: {warm}",
    )


def _switch(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        to = getattr(args, "to", None)
        body: dict[str, Any] = {"to": to} if to is not None else {}
        if getattr(args, "force", False):
            body["force"] = True
        if getattr(args, "check", None):
            body["check"] = {"rows": labelled_rows(args.check)}
        data = admin_call(args, "POST", f"/admin/models/{args.model}/{action}", body or None)
        switch = data["switch"]
        moved = f"{switch['from_version']} -> {switch['to_version']}"
        text = f"{args.model}: {action} {moved} (live slot {switch['live_slot']})"
        check = data.get("check")
        if check is not None:
            text += (
                f"\npre-promotion check on {check['rows']} rows: {check['verdict']} (accuracy "
                f"{check['accuracy']:.4f} vs live {check['live_accuracy']:.4f}, {check['errors']} errors)"
            )
        return show(args, data, lambda: text)

    return run


def labelled_rows(path: str) -> list[Any]:
    """The rows of a labelled JSONL file (`{"input": [...], "label": 1}` per line) for `promote --check`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ClientError(f"{path}:{number}: not JSON: {exc}") from None
    return rows


def _unload(args: argparse.Namespace) -> int:
    data = admin_call(args, "POST", f"/admin/models/{args.model}/unload", {"version": args.version})
    what = "everything" if args.version is None else f"version {args.version}"
    return show(args, data, lambda: f"{args.model}: unloaded {what}")


def _inspect(args: argparse.Namespace) -> int:
    from modelserve.config import RuntimeOptions
    from modelserve.errors import ConfigError, LoadError
    from modelserve.serving.layout import model_file
    from modelserve.serving.runtime import load_version

    try:
        path = model_file(Path(args.path))
        loaded = load_version(path.parent.parent.name or "model", path.parent.name, path, RuntimeOptions())
    except (ConfigError, LoadError) as exc:
        raise ClientError(str(exc)) from None
    info = loaded.describe()
    info.pop("version")
    info["file"] = str(path)
    print_json(info)
    return 0


def client_parser(
    parent: argparse._SubParsersAction[Any], name: str, help_text: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = parent.add_parser(
        name, help=help_text, description=help_text.replace("%%", "%")
    )
    parser.add_argument("--url", help=f"server URL (default: ${URL_ENV}, else {DEFAULT_URL})")
    parser.add_argument(
        "--token",
        help=f"bearer token (default: ${READ_TOKEN_ENV} for reads, ${FEEDBACK_TOKEN_ENV} for outcomes, "
        f"then ${TOKEN_ENV})",
    )
    parser.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server")
    if not any(a.dest == "reason" for a in parser._actions):
        parser.add_argument("--reason", help="why: recorded with the change in the audit log (history)")
    return parser


#: Registration hooks of command groups defined in other modules (flags, shadow, rollout, experiment, ...).
COMMAND_GROUPS: list[str] = [
    "modelserve.cli_flags",
    "modelserve.cli_history",
    "modelserve.cli_routing",
    "modelserve.cli_shadow",
    "modelserve.cli_rollout",
    "modelserve.cli_experiment",
]


def build_parser() -> argparse.ArgumentParser:
    from modelserve import __version__

    parser = Parser(prog="modelserve", description="Safe model updates, in-process.")
    parser.add_argument("--version", action="version", version=f"modelserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve a model repository over the V2 inference protocol",
        description="Serve every model of REPO (models/<name>/<version>/model.onnx).",
    )
    serve.add_argument("repository", metavar="REPO")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--flags", metavar="FLAGS.json", help="flagd flag definition file (hot-reloaded)")
    serve.add_argument(
        "--state-dir", default=".modelserve", help="durable state folder (default .modelserve)"
    )
    serve.add_argument("--admin-token", help=f"enable the admin API with this bearer token (or {TOKEN_ENV})")
    serve.add_argument(
        "--read-token", help=f"bearer token for status, reports, history (or {READ_TOKEN_ENV})"
    )
    serve.add_argument(
        "--feedback-token",
        help=f"bearer token that may post outcomes and nothing else (or {FEEDBACK_TOKEN_ENV})",
    )
    serve.add_argument(
        "--inference-token", help=f"require this bearer token for inference (or {INFERENCE_TOKEN_ENV})"
    )
    serve.add_argument(
        "--tls-certfile", metavar="PEM", help="serve HTTPS with this certificate (and --tls-keyfile)"
    )
    serve.add_argument("--tls-keyfile", metavar="PEM", help="the certificate's private key")
    serve.add_argument(
        "--drain-delay", type=float, default=0.0, metavar="SECONDS",
        help="on SIGTERM, answer not-ready but keep serving this long before closing (default 0)",
    )  # fmt: skip
    serve.add_argument(
        "--drain-timeout", type=float, default=30.0, metavar="SECONDS",
        help="on SIGTERM, let requests in flight finish for at most this long (default 30)",
    )  # fmt: skip
    serve.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024, help="413 above this")
    serve.add_argument(
        "--max-json-bytes", type=int, default=4 * 1024 * 1024, metavar="N",
        help="413 for JSON above this (default 4 MiB; parsing JSON stalls other requests): send larger "
        "tensors with the binary tensor extension",
    )  # fmt: skip
    serve.add_argument(
        "--max-header-bytes", type=int, default=64 * 1024, help="431 above this many bytes of headers"
    )
    serve.add_argument(
        "--header-timeout", type=float, default=10.0, metavar="S",
        help="a request's headers must arrive within S seconds, else 408 and close (default 10)",
    )  # fmt: skip
    serve.add_argument(
        "--body-timeout", type=float, default=30.0, metavar="S",
        help="close a connection whose request body stalls for S seconds (default 30)",
    )  # fmt: skip
    serve.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST every rollout event as JSON to URL (repeatable)",
    )
    serve.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="refuse loads past this total for all warm versions, e.g. 512M or 2G (default: none)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes on this machine, sharing state through SQLite in the state dir (default 1)",
    )
    serve.add_argument(
        "--coordinator",
        metavar="URL",
        help="shared state of several processes or machines: redis://HOST:PORT/DB or sqlite:///PATH",
    )
    serve.add_argument(
        "--leader-lease",
        type=float,
        default=10.0,
        metavar="S",
        help="shared state: seconds of the rollout leader's lease (failover takes about this long)",
    )
    serve.add_argument(
        "--exposure-ttl",
        type=float,
        default=60.0,
        metavar="S",
        help="shared state: a replica unable to read it for S seconds cuts canary traffic to 0 (default 60)",
    )
    serve.set_defaults(run=_serve)

    status = client_parser(commands, "status", "live/candidate versions, split and per-version metrics")
    status.add_argument("model", nargs="?")
    status.set_defaults(run=_status)

    stage = client_parser(commands, "stage", "load and warm a version into the idle slot (0%% traffic)")
    stage.add_argument("model")
    stage.add_argument("version")
    stage.add_argument(
        "--force", action="store_true", help="stage even if its inputs/outputs differ from the live version's"
    )
    stage.set_defaults(run=_stage)

    for action, text in (
        ("promote", "make the staged candidate live (instant slot switch)"),
        ("rollback", "switch back to the previous version, or --to any warm version (instant)"),
    ):
        sub = client_parser(commands, action, text)
        sub.add_argument("model")
        if action == "rollback":
            sub.add_argument("--to", metavar="VERSION", help="any warm version (instant: nothing loads)")
        else:
            sub.add_argument(
                "--force",
                action="store_true",
                help="promote a version that was rolled back for failing its gates (needs --reason; audited)",
            )
            sub.add_argument(
                "--check",
                metavar="FILE.jsonl",
                help="labelled rows replayed through live and candidate first; promote only if gates pass",
            )
        sub.set_defaults(run=_switch(action))

    load = client_parser(
        commands, "load", "add a version to the model's warm set on every replica (0%% traffic, kept warm)"
    )
    load.add_argument("model")
    load.add_argument("version")
    load.set_defaults(run=_load)

    unload = client_parser(
        commands,
        "unload",
        "unload a warm version that is not live (every replica), or the whole model (this one)",
    )
    unload.add_argument("model")
    unload.add_argument("version", nargs="?")
    unload.set_defaults(run=_unload)

    inspect = commands.add_parser(
        "inspect", help="load an ONNX file and print its V2 metadata and warm-up time"
    )
    inspect.add_argument("path")
    inspect.set_defaults(run=_inspect)

    for module_name in COMMAND_GROUPS:
        importlib.import_module(module_name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(old_spellings(list(sys.argv[1:] if argv is None else argv)))
    try:
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is handled below, not at interpreter exit
        return status
    except ClientError as exc:
        print(f"modelserve {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `modelserve ... | head`: the reader has gone; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not fail again
        return EXIT_BROKEN_PIPE
    except ModelServeError as exc:  # an operator's mistake (repository, flags, config): no traceback
        print(f"modelserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"modelserve {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def old_spellings(argv: list[str]) -> list[str]:
    """Accept the shadow grammar before `shadow start|stop|report` (`shadow MODEL VERSION...`,
    `shadow MODEL --off`); deprecated, kept because it costs these few lines."""
    actions = ["start", "stop", "report"]
    if len(argv) < 2 or argv[0] != "shadow" or argv[1] in (*actions, "-h", "--help"):
        return argv
    if difflib.get_close_matches(argv[1], actions, n=1, cutoff=0.75):
        return argv  # a misspelled action: let the parser say "did you mean"
    if "--off" in argv:
        return ["shadow", "stop", *[a for a in argv[1:] if a != "--off"]]
    return ["shadow", "start", *argv[1:]]


if __name__ == "__main__":  # `python -m modelserve.cli`: run the imported module's main, whose
    from modelserve.cli import main as imported_main  # ClientError is the one the commands raise

    sys.exit(imported_main())
