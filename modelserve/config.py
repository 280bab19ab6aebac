"""Frozen configuration, parsed once. Environment variables are read only in `cli.py`.

Per model: `models/<name>/config.toml` (all keys optional)::

    live = "1"                      # the version live on first start (default: the highest)
    [serving]
    intra_op_threads = 1            # onnxruntime threads per session; explicit, never 0
    max_concurrency = 2             # concurrent runs per version (its CapacityLimiter)
    execution = "auto"              # "auto" (timed at warm-up) | "inline" | "thread"
    inline_threshold_us = 50.0      # auto: run on the event loop when warm-up p50 is at most this
    max_batch_size = 1              # > 1: dynamic batching of concurrent requests (batch dim first)
    max_queue_delay_ms = 1.0        # how long a batch waits to fill
    request_timeout_ms = 30000.0    # request deadline: no answer by then -> 504, counted as a timeout
                                    # (0: none); a running rollout plan's request_timeout_s overrides it
    keep_warm = 2                   # warm versions kept by stage/promote (live, candidate, previous...)
    latest = 3                      # or a version policy: the 3 highest versions loaded warm at start,
    versions = ["1", "2", "5"]      # or these versions (both pinned: never unloaded implicitly)
    [routing]
    targeting_header = "x-user-id"
    flag = "credit-model"           # a flag whose variants name versions
    candidate = "2"
    canary_weight = 0.0             # percent of targeting keys sent to the candidate
    allow_version_override = false  # honour an X-Model-Version request header
    [shadow]
    versions = ["2"]
    sample_rate = 1.0
    timeout_ms = 1000
    max_in_flight = 4
    compare = "label"               # "label" | "allclose" | "topk"
    on_loop = false                 # true: µs models shadow on the event loop, after the response
                                    # (every request compared; the primary pays the shadow's time)
    log_inputs_rate = 0.0           # share of requests whose inputs (capped) go into the comparison log
    [monitoring]                    # prediction distribution, drift, accuracy (docs/monitoring.md)
    reference = "reference.jsonl"   # drift reference rows (else the first reference_period_s of traffic)
    threshold = 0.2                 # PSI alarm threshold; min_samples, window_s, bins, sample_every,
    max_rate = 1000.0               # requests a second monitored; past it a uniform sample (0: all)
    [guardrails]                    # traffic outside a rollout, watched by the gates (docs/guardrails.md)
    enabled = true                  # false: none of the three below
    canary = true                   # a manual canary weight: failing -> weight 0
    experiments = true              # an A/B test's treatment arms: failing -> the experiment stops
    watch_s = 600.0                 # after a promotion: failing -> the previous version is back (0: off)
    interval_s = 5.0                # how often the gates look
    min_samples = 100               # per version, before any verdict (fewer: hold, never act)
    [testing.faults."2"]            # OPT-IN FAULT INJECTION for tests and demos (serving/faults.py):
    error_rate = 0.05               # version 2 fails 5% of runs (seeded: `seed = 0`), and/or
    extra_latency_ms = 3.0          # sleeps, `latency_factor = 3.0`, `hang = true`; a warning is logged

Server options also include `webhooks`: URLs that receive every rollout event as JSON.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import modelserve.validation as validation
from modelserve.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeOptions:
    """How a version's session is built and run (config.toml `[serving]`)."""

    intra_op_threads: int = 1
    max_concurrency: int = 2
    execution: str = "auto"  # "auto" | "inline" | "thread"
    # A thread hop costs 30-45 µs here: below ~50 µs of model time, running inline is cheaper.
    inline_threshold_us: float = 50.0
    warmup_runs: int = 20
    max_batch_size: int = 1  # > 1 turns on dynamic batching (serving/batching.py)
    max_queue_delay_ms: float = 1.0
    #: The deadline of a served request, waiting for a runner included; 0: none. Runs that may block
    #: (worker threads, batches) answer 504 when it passes; inline runs take microseconds.
    request_timeout_ms: float = 30_000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """How one version misbehaves; see the module docstring."""

    error_rate: float = 0.0
    extra_latency_ms: float = 0.0
    latency_factor: float = 1.0
    hang: bool = False
    hang_s: float = 30.0
    seed: int = 0

    @property
    def slows(self) -> bool:
        """True when runs sleep (they must then run off the event loop)."""
        return self.hang or self.extra_latency_ms > 0 or self.latency_factor != 1.0

    def describe(self) -> dict[str, Any]:
        """JSON-ready form, shown in the version's status."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_faults(testing: Mapping[str, Any], *, where: str) -> dict[str, FaultSpec]:
    """The `[testing]` table -> version -> FaultSpec; raises ConfigError naming the bad key."""
    unknown = sorted(set(testing) - {"faults"})
    if unknown:
        raise ConfigError(f"{where} [testing]: unknown key(s) {', '.join(unknown)}; known: faults")
    faults = testing.get("faults", {})
    if not isinstance(faults, dict):
        raise ConfigError(f"{where} [testing] faults must be a table of version -> fault settings")
    return {
        str(version): _spec(raw, f"{where} [testing.faults.{version}]") for version, raw in faults.items()
    }


def _spec(raw: Any, where: str) -> FaultSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    known = {f.name: f for f in fields(FaultSpec)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "hang":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} hang must be true or false")
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where} seed must be an integer")
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{where} {key} must be a number >= 0")
            value = float(value)
        values[key] = value
    spec = FaultSpec(**values)
    if spec.error_rate > 1.0:
        raise ConfigError(f"{where} error_rate must be within 0..1")
    if spec.latency_factor < 1.0:
        raise ConfigError(f"{where} latency_factor must be >= 1")
    return spec


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    targeting_header: str = "x-user-id"
    flag: str | None = None
    candidate: str | None = None
    canary_weight: float = 0.0
    allow_version_override: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowConfig:
    versions: tuple[str, ...] = ()
    sample_rate: float = 1.0
    timeout_ms: float = 1000.0
    max_in_flight: int = 4
    compare: str = "label"
    on_loop: bool = False
    #: Share of shadowed requests whose (capped) inputs go into the comparison log (opt-in: 0 by default).
    log_inputs_rate: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitoringConfig:
    """`[monitoring]`: prediction distributions, drift and accuracy by version (see docs/monitoring.md)."""

    enabled: bool = True
    #: A JSONL file of reference rows (relative to the model's folder); else captured from live traffic.
    reference: str | None = None
    reference_period_s: float = 600.0
    reference_rows: int = 2000
    window_s: float = 300.0
    min_samples: int = 500
    threshold: float = 0.2
    bins: int = 10
    sample_every: int = 1
    #: Requests a second monitored per model and process; past it a uniform sample (0: every request).
    max_rate: float = 1000.0
    label_output: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardrailConfig:
    """`[guardrails]`: what the guardrails watch outside a rollout, and how often (docs/guardrails.md)."""

    enabled: bool = True
    canary: bool = True
    experiments: bool = True
    #: Seconds after a promotion during which the new live version is watched against the previous one.
    watch_s: float = 600.0
    interval_s: float = 5.0
    min_samples: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmPolicy:
    """Which versions a model keeps warm (`[serving] keep_warm`, `latest`, `versions`).

    `keep_warm` bounds what stage and promote keep: past it, the oldest version with no role (or the
    oldest previous one) is unloaded after a new version is READY. `latest` / `versions` (Triton's
    version policies) name versions loaded warm at start and pinned: never unloaded implicitly.
    """

    keep_warm: int = 2
    latest: int = 0
    versions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """One model's `config.toml`."""

    live: str | None = None
    serving: RuntimeOptions = field(default_factory=RuntimeOptions)
    warm: WarmPolicy = field(default_factory=WarmPolicy)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    guardrails: GuardrailConfig = field(default_factory=GuardrailConfig)
    testing: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """What `create_app` needs; built by `cli.py` or by an embedding application."""

    repository: Path
    state_dir: Path | None = Path(".modelserve")
    admin_token: str | None = None  # every scope: changes, reads, feedback (server/auth.py)
    read_token: str | None = None  # status, reports, history, /ui
    feedback_token: str | None = None  # POST outcomes, nothing else
    inference_token: str | None = None  # when set, inference needs it (or the admin token)
    flags_file: Path | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024  # all header names and values of one request; 431 above
    #: JSON a request may ask the server to parse (an infer body without binary data, the JSON header
    #: of one with it, an admin or feedback body); 413 above. Parsing JSON holds the GIL: 4 MiB is
    #: ~50 ms of decoding on a busy host, during which every other request waits. Larger tensors go
    #: in the binary tensor extension, which is copied, not parsed.
    max_json_bytes: int = 4 * 1024 * 1024
    load_models: tuple[str, ...] | None = None  # None: every model in the repository
    webhooks: tuple[str, ...] = ()  # URLs that receive every rollout event (JSON POST, retried)
    #: Shared state of several processes: None (this process alone, files in `state_dir`),
    #: `sqlite:///PATH` (one machine) or `redis://HOST:PORT/DB` (many machines).
    coordinator: str | None = None
    #: This process's name among the replicas (default `host:pid`; `POD_NAME` on Kubernetes).
    replica_id: str | None = None
    memory_budget: int | None = None  # bytes all warm versions may cost together (serving/memory.py)
    #: Shared state only: the rollout leader's lease; a new leader takes over within about this.
    leader_lease_s: float = 10.0
    #: Worker processes of one machine: each writes its counters here, and `/metrics` on any of
    #: them reports the sum (`telemetry/fleet_metrics.py`); `serve --workers N` sets it.
    metrics_dir: Path | None = None
    #: Shared state only: a replica that could not read it for this long cuts canary traffic to 0.
    exposure_ttl_s: float = 60.0

    def to_json(self) -> dict[str, Any]:
        """Every field as JSON values (how `serve --workers N` hands its configuration to each worker)."""
        encoded: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            encoded[item.name] = value
        return encoded

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerConfig:
        """The inverse of `to_json`; unknown keys are an error, so no field is ever dropped silently."""
        known = {item.name: str(item.type) for item in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ConfigError(f"unknown server configuration keys: {sorted(unknown)}")
        decoded: dict[str, Any] = {}
        for name, value in data.items():
            if value is not None and known[name].startswith("Path"):
                value = Path(value)
            elif value is not None and known[name].startswith("tuple"):
                value = tuple(value)
            decoded[name] = value
        return cls(**decoded)


def parse_model_config(data: dict[str, Any], *, where: str) -> ModelConfig:
    """Validate a decoded config.toml; raise ConfigError naming the file and key."""
    known = {"live", "serving", "routing", "shadow", "monitoring", "guardrails", "testing"}
    _no_unknown(data, known, where)
    live = data.get("live")
    if live is not None:
        live = str(live)
    serving_data = data.get("serving", {})
    warm = _warm_policy(serving_data, f"{where} [serving]")
    if isinstance(serving_data, dict):
        serving_data = {k: v for k, v in serving_data.items() if k not in ("keep_warm", "latest", "versions")}
    serving = _section(RuntimeOptions, serving_data, f"{where} [serving]")
    _bounded(serving, f"{where} [serving]", _SERVING_BOUNDS)
    if serving.execution not in ("auto", "inline", "thread"):
        raise ConfigError(f"{where} [serving] execution must be auto, inline or thread")
    routing = _section(RoutingConfig, data.get("routing", {}), f"{where} [routing]")
    validation.number(routing.canary_weight, f"{where} [routing] canary_weight", error=ConfigError)
    if not 0.0 <= routing.canary_weight <= 100.0:
        raise ConfigError(
            f"{where} [routing] canary_weight is a percent of targeting keys, within 0..100 (5 = 5 %)"
        )
    validation.text(routing.targeting_header, f"{where} [routing] targeting_header", error=ConfigError)
    shadow_data = dict(data.get("shadow", {}))
    if "versions" in shadow_data:
        if not isinstance(shadow_data["versions"], list):
            raise ConfigError(f"{where} [shadow] versions must be a list")
        shadow_data["versions"] = tuple(str(v) for v in shadow_data["versions"])
    shadow = _section(ShadowConfig, shadow_data, f"{where} [shadow]")
    _bounded(shadow, f"{where} [shadow]", _SHADOW_BOUNDS)
    if not 0.0 <= shadow.log_inputs_rate <= 1.0:
        raise ConfigError(f"{where} [shadow] log_inputs_rate must be within 0..1")
    if shadow.compare not in ("label", "allclose", "topk"):
        raise ConfigError(f"{where} [shadow] compare must be label, allclose or topk")
    monitoring = _monitoring(data.get("monitoring", {}), f"{where} [monitoring]")
    guardrails = _section(GuardrailConfig, data.get("guardrails", {}), f"{where} [guardrails]")
    _bounded(guardrails, f"{where} [guardrails]", _GUARDRAIL_BOUNDS)
    testing = data.get("testing", {})
    if not isinstance(testing, dict):
        raise ConfigError(f"{where} [testing] must be a table")
    parse_faults(testing, where=where)  # validated here; applied when the registry loads a version
    return ModelConfig(
        live=live, serving=serving, warm=warm, routing=routing, shadow=shadow, monitoring=monitoring,
        guardrails=guardrails, testing=testing,
    )  # fmt: skip


def _monitoring(data: object, where: str) -> MonitoringConfig:
    monitoring: MonitoringConfig = _section(MonitoringConfig, data, where)
    positive = ("reference_period_s", "window_s", "threshold")
    for key in positive:
        if getattr(monitoring, key) < 0 or (key != "reference_period_s" and getattr(monitoring, key) == 0):
            raise ConfigError(f"{where} {key} must be positive")
    for key, low in (("reference_rows", 10), ("min_samples", 1), ("bins", 2), ("sample_every", 1)):
        if getattr(monitoring, key) < low:
            raise ConfigError(f"{where} {key} must be an integer >= {low}")
    if not 0 <= monitoring.max_rate < math.inf:
        raise ConfigError(f"{where} max_rate must be a number >= 0 (0: every request)")
    return monitoring


def _warm_policy(data: object, where: str) -> WarmPolicy:
    if not isinstance(data, dict):
        return WarmPolicy()  # `_section` reports the bad table
    keep_warm, latest, versions = data.get("keep_warm", 2), data.get("latest", 0), data.get("versions", [])
    for key, value, low in (("keep_warm", keep_warm, 2), ("latest", latest, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{where} {key} must be an integer >= {low}, not {value!r}")
    if not isinstance(versions, list) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in versions
    ):
        raise ConfigError(f'{where} versions must be a list of versions, e.g. ["1", "2"]')
    if latest and versions:
        raise ConfigError(f"{where}: give either latest or versions, not both")
    return WarmPolicy(keep_warm=keep_warm, latest=latest, versions=tuple(str(v) for v in versions))


#: (lowest, highest) of each number in config.toml: finite and sane, so serving can rely on them
#: (a NaN queue delay failed every request; an infinite one hung requests and shutdown).
_SERVING_BOUNDS = {
    "intra_op_threads": (1, 256),
    "max_concurrency": (1, 4096),
    "inline_threshold_us": (0.0, 1e6),
    "warmup_runs": (1, 10_000),
    "max_batch_size": (1, 1 << 20),
    "max_queue_delay_ms": (0.0, 10_000.0),
    "request_timeout_ms": (0.0, validation.MAX_REQUEST_TIMEOUT_S * 1000.0),
}
_GUARDRAIL_BOUNDS = {
    "watch_s": (0.0, 30 * 86400.0),
    "interval_s": (0.01, 86400.0),  # a shorter interval busy-loops the leader
    "min_samples": (1, 1 << 40),
}
_SHADOW_BOUNDS = {
    "sample_rate": (0.0, 1.0),
    "timeout_ms": (0.001, 600_000.0),
    "max_in_flight": (1, 100_000),
}


def _bounded(section: object, where: str, bounds: dict[str, tuple[float, float]]) -> None:
    for key, (low, high) in bounds.items():
        value = getattr(section, key)
        integer = isinstance(low, int)
        validation.number(value, f"{where} {key}", low=low, high=high, integer=integer, error=ConfigError)


def load_model_config(path: Path) -> ModelConfig:
    if not path.exists():
        return ModelConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except OSError as exc:  # unreadable, a directory: this model's problem, reported as such
        raise ConfigError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    return parse_model_config(data, where=str(path))


def _section(cls: type, data: object, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table")
    names = {f.name: f for f in fields(cls)}
    _no_unknown(data, set(names), where)
    values = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        expected = type(default) if default is not None else str
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is str and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if expected is not tuple and not isinstance(value, expected):
            raise ConfigError(f"{where} {key} must be {expected.__name__}, not {type(value).__name__}")
        values[key] = value
    return cls(**values)


def _no_unknown(data: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
