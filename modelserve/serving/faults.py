"""Opt-in fault injection: make one version fail or slow down, for rollout tests and demos.

Off unless a model's `config.toml` asks for it in its `[testing]` table::

    [testing.faults."2"]            # version 2 of this model misbehaves
    error_rate = 0.05               # fraction of runs that raise (HTTP 500, a real InferenceError)
    extra_latency_ms = 3.0          # compute added to every run that does not fail
    latency_factor = 3.0            # the run computes this many times as long as the model did
    hang = false                    # true: every run blocks for hang_s, then fails
    hang_s = 30.0
    seed = 0                        # the error draws come from random.Random(seed): reproducible

(or inline: `faults = { "2" = { error_rate = 0.05 } }`). The faults wrap the version's onnxruntime
call, so real requests through the real server (primary, canary and shadow runs alike) see them, while
the warm-up before READY runs clean. Extra latency is spent computing on the calling thread (hashing,
which releases the GIL as onnxruntime does), as a slower model would: it shows in wall time and in
the thread CPU time shadow stages compare. A version with latency or hang faults always runs in worker
threads: neither may block the event loop. Loading a faulty version logs a warning, and its
`describe()` (admin status) shows the faults, so they are never active by accident.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from modelserve.config import FaultSpec, parse_faults

log = logging.getLogger("modelserve.serving")

#: onnxruntime's `session.run(output_names, feeds)`.
SessionRun = Callable[..., Any]


class InjectedFault(RuntimeError):
    """Raised by a faulty version's run; the runtime reports it as an InferenceError (HTTP 500)."""


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
            compute(pause)
        return result


_BLOCK = bytes(16384)


def compute(seconds: float) -> None:
    """Burn `seconds` of this thread's CPU time without holding the GIL (bounded in wall time)."""
    done = time.thread_time() + seconds
    give_up = time.perf_counter() + 50 * seconds + 1.0  # a starved thread must still return
    while time.thread_time() < done and time.perf_counter() < give_up:
        hashlib.blake2b(_BLOCK)


def fault_for(testing: Mapping[str, Any], version: str, *, where: str = "config.toml") -> FaultSpec | None:
    """The faults configured for `version` in a model's `[testing]` table, or None (the usual case)."""
    if not testing:
        return None
    return parse_faults(testing, where=where).get(version)
