"""Opt-in fault injection: make one version fail or slow down, for rollout tests and demos.

Off unless a model's `config.toml` asks for it in its `[testing]` table::

    [testing.faults."2"]            # version 2 of this model misbehaves
    error_rate = 0.05               # fraction of runs that raise (HTTP 500, a real InferenceError)
    extra_latency_ms = 3.0          # sleep added to every run that does not fail
    latency_factor = 3.0            # the run takes this many times as long as the model did
    hang = false                    # true: every run blocks for hang_s, then fails
    hang_s = 30.0
    seed = 0                        # the error draws come from random.Random(seed): reproducible

(or inline: `faults = { "2" = { error_rate = 0.05 } }`). The faults wrap the version's onnxruntime
call, so real requests through the real server (primary, canary and shadow runs alike) see them, while
the warm-up before READY runs clean. A version with latency or hang faults always runs in worker
threads: a sleep must never block the event loop. Loading a faulty version logs a warning, and its
`describe()` (admin status) shows the faults, so they are never active by accident.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from modelserve.errors import ConfigError

log = logging.getLogger("modelserve.serving")

#: onnxruntime's `session.run(output_names, feeds)`.
SessionRun = Callable[..., Any]


class InjectedFault(RuntimeError):
    """Raised by a faulty version's run; the runtime reports it as an InferenceError (HTTP 500)."""


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


class FaultyRun:
    """Wraps a session call: raises for a seeded fraction of runs, sleeps, or hangs. Thread-safe."""

    def __init__(self, run: SessionRun, spec: FaultSpec) -> None:
        self._run = run
        self.spec = spec
        self.calls = 0
        self.errors = 0
        self._random = random.Random(spec.seed)
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        spec = self.spec
        with self._lock:  # one draw per run, in call order: the same seed fails the same runs
            self.calls += 1
            fail = spec.error_rate > 0 and self._random.random() < spec.error_rate
            if fail:
                self.errors += 1
        if spec.hang:
            time.sleep(spec.hang_s)
            raise InjectedFault(f"injected hang ({spec.hang_s:g} s)")
        if fail:
            raise InjectedFault(f"injected fault (error_rate {spec.error_rate:g})")
        started = time.perf_counter()
        result = self._run(*args, **kwargs)
        pause = spec.extra_latency_ms / 1e3 + (time.perf_counter() - started) * (spec.latency_factor - 1.0)
        if pause > 0:
            time.sleep(pause)
        return result


def fault_for(testing: Mapping[str, Any], version: str, *, where: str = "config.toml") -> FaultSpec | None:
    """The faults configured for `version` in a model's `[testing]` table, or None (the usual case)."""
    if not testing:
        return None
    return parse_faults(testing, where=where).get(version)
