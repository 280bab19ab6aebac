"""`InferencePath`: the one way an inference runs, for the V2 endpoint and for `ModelServe.predict`.

A call goes through three steps, each in one place:

1. `begin(scope, model, pinned)` resolves the route decision (from the routing middleware's context
   in the scope, a version pinned by the caller, or the live version) and the warm version serving it;
   NotFound / NotReady otherwise. The result is the call's `InferenceRecord`.
2. `run(record, inputs, output_names)` runs the version and times the model run alone.
3. `finish(record)` hands the record to every observer (shadow, windows, metrics, experiments). The
   V2 endpoint calls it after the response has been sent, so observers never delay the client.

`infer(...)` is the three steps for callers with decoded inputs. The V2 endpoint decodes the body
between steps 1 and 2 (it needs the version's input metadata to decode).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserve.errors import DeadlineExceeded, ModelServeError, NotFound, http_status
from modelserve.routing.decision import ROUTE_KEY, RouteDecision, RouteSource
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.runtime import LoadedVersion
from modelserve.state.policies import PolicyTable

log = logging.getLogger("modelserve.inference")

#: An ASGI scope (or any per-request mapping): where the route decision and request data live.
Scope = MutableMapping[str, Any]


@dataclass(slots=True)
class InferenceRecord:
    """What one inference did; handed to observers once it is finished (after the response)."""

    scope: Scope
    model: str
    decision: RouteDecision
    loaded: LoadedVersion | None
    started: float  # perf_counter() when the call began
    inputs: dict[str, np.ndarray] | None = None
    outputs: dict[str, np.ndarray] | None = None
    latency_s: float = 0.0  # the whole call, as the client sees it (set by `finish`)
    status: int = 200  # HTTP status of the answer
    error: str | None = None
    #: The id the answer carries (`X-Request-Id`): the client's, or one the server issued (outcomes of
    #: experiment-routed requests join by a server-issued id only).
    request_id: str | None = None
    #: The id the client gave (V2 `id`, else `X-Request-Id`) when it differs from `request_id`:
    #: labels may join by either.
    client_request_id: str | None = None
    inference_s: float | None = None  # the model run alone (wall): what canary stages compare
    compute_s: float | None = None  # the model run's thread CPU time: what shadow stages compare
    timed_out: bool = False  # no answer within the request deadline (504)

    def fail(self, exc: BaseException) -> None:
        """Record that the call failed with `exc` (status from the error tree)."""
        self.status = http_status(exc)
        self.error = str(exc) if isinstance(exc, ModelServeError) else "internal error"


Observer = Callable[[InferenceRecord], None]


class InferencePath:
    """Resolve, run, observe: see the module docstring. Holds configuration only."""

    def __init__(
        self, registry: ModelRegistry, observers: Sequence[Observer], policies: PolicyTable | None = None
    ) -> None:
        self.registry = registry
        #: Called in order after each inference; an observer's failure is logged, never raised.
        self.observers = observers
        #: A model's policy may carry a request deadline (a running rollout plan's) that replaces each
        #: version's own (`[serving] request_timeout_ms`) for as long as it is set.
        self.policies = policies

    def begin(self, scope: Scope, model: str, pinned: str | None = None) -> InferenceRecord:
        """The call's record: the route decision and the loaded version serving it.

        A version the routing context chose that is no longer ready (a switch raced the request)
        falls back to the live one, and the decision says so.
        """
        started = time.perf_counter()
        slots = self.registry.models.get(model)
        if slots is None:
            self.registry.slots(model)  # raises NotFound / NotReady with the right message
            raise NotFound(f"unknown model {model!r}")
        if pinned is not None:
            decision = RouteDecision(model=model, version=pinned, reason="pinned")
            return InferenceRecord(scope, model, decision, slots.get(pinned), started)
        route: RouteSource | None = scope.get(ROUTE_KEY)
        chosen = route.decide(model) if route is not None else None
        if chosen is not None and chosen.version in slots.ready_versions:
            return InferenceRecord(scope, model, chosen, slots.get(chosen.version), started)
        loaded = slots.get()
        if chosen is None:
            decision = RouteDecision(model=model, version=loaded.version, reason="stable")
            return InferenceRecord(scope, model, decision, loaded, started)
        fallback = RouteDecision(
            model=model,
            version=loaded.version,
            reason="fallback",
            targeting_key=chosen.targeting_key,
            detail=f"chosen version {chosen.version} is not ready",
        )
        if route is not None:
            route.decisions[model] = fallback
        return InferenceRecord(scope, model, fallback, loaded, started)

    async def run(
        self,
        record: InferenceRecord,
        inputs: dict[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the record's version on `inputs`; the model run alone is timed into `inference_s`.

        A run past the request deadline raises DeadlineExceeded (504) and marks the record `timed_out`.
        """
        loaded = record.loaded
        assert loaded is not None
        record.inputs = inputs
        timeout_s = loaded.timeout_s
        policy = self.policies.get(record.model) if self.policies is not None else None
        if policy is not None and policy.request_timeout_s is not None:
            timeout_s = policy.request_timeout_s
        run_started = time.perf_counter()
        try:
            outputs, record.compute_s = await loaded.infer_measured(inputs, output_names, timeout_s)
        except DeadlineExceeded as exc:
            record.timed_out = True
            record.inference_s = time.perf_counter() - run_started
            record.fail(exc)
            raise
        except Exception as exc:
            record.fail(exc)
            raise
        record.inference_s = time.perf_counter() - run_started
        record.outputs = outputs
        return outputs

    def finish(self, record: InferenceRecord) -> None:
        """Stamp the call's latency and hand the record to every observer."""
        record.latency_s = time.perf_counter() - record.started
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.exception("inference observer failed")

    async def infer(
        self,
        scope: Scope,
        model: str,
        version: str | None,
        inputs: Mapping[str, np.ndarray],
        *,
        request_id: str | None = None,
    ) -> InferenceRecord:
        """Resolve, run and observe one call with decoded inputs; raises the modelserve errors.

        Observers see a failed run too, but not a call the caller cancelled.
        """
        record = self.begin(scope, model, version)
        record.request_id = request_id
        try:
            await self.run(record, dict(inputs))
        except Exception:
            self.finish(record)
            raise
        self.finish(record)
        return record
