"""`ExperimentService`: A/B/n tests and bandits over any subset of a model's warm versions.

One experiment runs per model at a time; `decide` is the router's arm decider, `observe` an inference
observer that remembers each served experiment decision by request id (with the request's
`x-segment-<name>` headers as segment attributes), and `record_outcome(s)` joins the outcomes posted
back by the server-issued request id. The assignment unit is the request (sticky per targeting key);
the SRM check counts assignments once per targeting key, so repeating one key cannot force it.
State (spec, counters, bandit) is saved as `experiment.<model>` at most every
`save_interval_s`, on stop and at shutdown, and restored at startup.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from modelserve.errors import ConfigError, Conflict, NotFound, RequestError
from modelserve.experiments.experiment import parse_experiment_spec
from modelserve.experiments.feedback import EXPERIMENT_REASONS, FeedbackJoin, parse_outcome, tally_outcomes
from modelserve.experiments.report import A_BETTER, INVALID
from modelserve.experiments.running import RunningExperiment
from modelserve.inference.path import InferenceRecord
from modelserve.routing.decision import RouteDecision
from modelserve.routing.policy import ModelPolicy
from modelserve.serving.registry import ModelRegistry
from modelserve.state.store import StateStore

log = logging.getLogger("modelserve.experiments")

Scope = MutableMapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidateVerdict:
    """A candidate arm against the control: significantly worse or not, on how many outcomes."""

    significantly_worse: bool
    samples: int
    detail: str


#: Where the observer leaves the request id of an experiment decision (for embedded `predict` callers).
REQUEST_ID_KEY = "modelserve.request_id"
SEGMENT_PREFIX = b"x-segment-"
SAVE_INTERVAL_S = 5.0
MAX_EVENTS = 100


class ExperimentService:
    """Experiments per model (one running at a time), the feedback join, and their persistence.

    Event loop only, like the join it holds. `decide` is the router's arm decider; `observe` is an
    inference observer.
    """

    #: Why `record_outcome(s)` cannot count here (outcomes join elsewhere: a fleet); None: they can.
    synchronous_outcomes_refused: str | None = None

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        store: StateStore,
        model_names: Callable[[], Iterable[str]],
        join: FeedbackJoin | None = None,
        rng: np.random.Generator | None = None,
        save_interval_s: float = SAVE_INTERVAL_S,
    ) -> None:
        self.registry = registry
        self.store = store
        self._model_names = model_names  # the models whose saved experiments `restore` reads
        self.join = join if join is not None else FeedbackJoin()
        self.experiments: dict[str, RunningExperiment] = {}  # the running or last stopped one per model
        self.save_interval_s = save_interval_s
        self._rng = rng if rng is not None else np.random.default_rng()
        self._dirty: set[str] = set()
        self.events: dict[str, list[dict[str, Any]]] = {}  # per model, the newest MAX_EVENTS
        self._save_limiter = anyio.CapacityLimiter(1)  # saves off the loop, one at a time, never anyio's

    # -- lifecycle -------------------------------------------------------------------------------

    def running(self, model: str) -> bool:
        """Whether `model` has a running experiment (its responses then carry a request id)."""
        experiment = self.experiments.get(model)
        return experiment is not None and experiment.running

    def get(self, model: str) -> RunningExperiment:
        """The model's running or last stopped experiment; NotFound if it never had one."""
        experiment = self.experiments.get(model)
        if experiment is None:
            raise NotFound(f"model {model!r} has no experiment: start one with `modelserve experiment start`")
        return experiment

    async def start(
        self, model: str, spec_data: Mapping[str, Any], *, experiment_id: str | None = None
    ) -> RunningExperiment:
        """Start an experiment on `model`; Conflict if one runs, RequestError if an arm is not in a slot."""
        experiment = self.new_experiment(model, spec_data, experiment_id=experiment_id)
        self.install(model, experiment)
        await self.save(model)
        log.info(
            "model %s: experiment %s started on arms %s",
            model,
            experiment.experiment_id,
            experiment.spec.versions,
        )
        return experiment

    def new_experiment(
        self, model: str, spec_data: Mapping[str, Any], *, experiment_id: str | None = None
    ) -> RunningExperiment:
        """A checked, not yet installed experiment: Conflict if one runs here, RequestError on a bad
        spec or an arm that is not a warm, READY version."""
        data = dict(spec_data)
        if data.setdefault("model", model) != model:
            raise RequestError(f"the spec names model {data['model']!r}, but the URL names {model!r}")
        try:
            spec = parse_experiment_spec(data)
        except ConfigError as exc:
            raise RequestError(str(exc)) from None
        current = self.experiments.get(model)
        if current is not None and current.running:
            raise Conflict(
                f"model {model!r} already runs experiment {current.experiment_id} "
                f"(arms {', '.join(current.spec.versions)}): "
                f"stop it first (`modelserve experiment stop {model}`)"
            )
        warm = self.registry.slots(model)
        missing = [version for version in spec.versions if version not in warm.ready_versions]
        if missing:
            held = ", ".join(f"{v} ({warm.role_of(v)})" for v in warm.warm_versions()) or "none"
            raise RequestError(
                f"arm {', '.join(missing)} of model {model!r} is not warm: arms must be warm, READY "
                f"versions (warm now: {held}); load it first (`modelserve load {model} {missing[0]}`)"
            )
        return RunningExperiment(
            spec, experiment_id=experiment_id or uuid.uuid4().hex[:12], started_at=time.time(), rng=self._rng
        )

    def install(self, model: str, experiment: RunningExperiment) -> None:
        """Make `experiment` the model's current one (joining outcomes while it runs)."""
        self.experiments[model] = experiment
        if experiment.running:
            self.join.attach(experiment.counters, experiment.bandit)
        else:
            self.join.detach(model)

    async def stop(self, model: str) -> RunningExperiment:
        """Stop the model's experiment (its report stays readable); later outcomes count as unknown."""
        experiment = self.get(model)
        if not experiment.running:
            raise Conflict(f"experiment {experiment.experiment_id} of model {model!r} is already stopped")
        experiment.stopped_at = time.time()
        self.join.detach(model)
        await self.save(model)
        log.info("model %s: experiment %s stopped", model, experiment.experiment_id)
        return experiment

    # -- per request -----------------------------------------------------------------------------

    def arms_in_use(self, model: str) -> frozenset[str]:
        """The arms of the model's running experiment: the registry must not unload them."""
        experiment = self.experiments.get(model)
        if experiment is None or not experiment.running:
            return frozenset()
        return frozenset(experiment.spec.versions)

    def decide(
        self, policy: ModelPolicy, targeting_key: str | None, ready: frozenset[str]
    ) -> RouteDecision | None:
        """The router's arm decider: an experiment or bandit assignment, or None to fall through."""
        experiment = self.experiments.get(policy.model)
        if experiment is None or experiment.stopped_at is not None:
            return None
        return experiment.assign(targeting_key, ready)

    def observe(self, record: InferenceRecord) -> None:
        """Remember each served experiment decision by request id, with its segment attributes."""
        decision = record.decision
        if record.status != 200 or decision.reason not in EXPERIMENT_REASONS:
            return
        scope = record.scope
        # The V2 endpoint issued this id itself; an embedded `predict` gets one the app reads back
        # (`request_id(scope)`). Never a client's id: reusing one would steal its outcome.
        request_id = record.request_id or uuid.uuid4().hex
        scope[REQUEST_ID_KEY] = request_id
        if self.join.record_decision(request_id, decision, segment_attributes(scope)):
            self._dirty.add(decision.model)

    @staticmethod
    def request_id(scope: Scope) -> str | None:
        """The id to post outcomes for, after `predict` served this request (its scope) from an experiment."""
        value = scope.get(REQUEST_ID_KEY)
        return value if isinstance(value, str) else None

    # -- outcomes --------------------------------------------------------------------------------

    def record_outcome(
        self,
        request_id: str,
        value: Any,
        segments: Mapping[str, Any] | None = None,
        *,
        guardrails: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> str:
        """Count one outcome: "accepted", "unknown" or "duplicate"; RequestError on a bad value."""
        self._refuse_synchronous_outcomes()
        duplicates = self.join.duplicate_outcomes
        outcome = self.join.record_outcome(request_id, value, segments, guardrails=guardrails, model=model)
        if outcome is not None:
            self._dirty.add(outcome.model)
            return "accepted"
        return "duplicate" if self.join.duplicate_outcomes > duplicates else "unknown"

    def record_outcomes(self, items: list[Mapping[str, Any]], *, model: str | None = None) -> dict[str, Any]:
        """Check every outcome, then count them all; a bad one fails the batch before anything counts."""
        self._refuse_synchronous_outcomes()
        parsed = [parse_outcome(item, i) for i, item in enumerate(items)]
        for request_id, value, _, guardrails in parsed:
            self.join.validate_outcome(request_id, value, guardrails=guardrails, model=model)
        statuses = [
            self.record_outcome(request_id, value, segments, guardrails=guardrails, model=model)
            for request_id, value, segments, guardrails in parsed
        ]
        return tally_outcomes((request_id for request_id, *_ in parsed), statuses)

    def _refuse_synchronous_outcomes(self) -> None:
        if self.synchronous_outcomes_refused is not None:
            raise ConfigError(self.synchronous_outcomes_refused)

    async def submit_outcomes(
        self, items: list[Mapping[str, Any]], *, model: str | None = None
    ) -> dict[str, Any]:
        """`record_outcomes` for callers on the event loop (the feedback route); a fleet joins through
        the shared decision store here."""
        return self.record_outcomes(items, model=model)

    def feedback_stats(self, model: str) -> dict[str, int]:
        """How outcomes fared (joined, unknown, duplicate, ...) for the report."""
        return self.join.stats()

    async def refresh(self, model: str) -> None:
        """Bring the model's experiment up to date before a read (a fleet re-reads the shared state)."""

    # -- persistence -----------------------------------------------------------------------------

    async def run(self) -> None:
        """The lifespan task: save changed experiments every `save_interval_s`."""
        await self.save_periodically()

    async def save(self, model: str) -> None:
        """Write `experiment.<model>` (snapshot on the loop, file write in a worker thread)."""
        experiment = self.experiments.get(model)
        if experiment is None:
            return
        data = experiment.to_dict()
        data["feedback"] = self.join.stats()
        self._dirty.discard(model)
        try:
            await anyio.to_thread.run_sync(
                self.store.write, f"experiment.{model}", data, limiter=self._save_limiter
            )
        except BaseException:
            self._dirty.add(model)  # try again next time
            raise

    async def save_dirty(self) -> None:
        for model in sorted(self._dirty):
            try:
                await self.save(model)
            except Exception:
                log.exception("saving the experiment of %s failed", model)

    async def save_periodically(self) -> None:
        while True:
            await anyio.sleep(self.save_interval_s)
            await self.save_dirty()

    async def save_all(self) -> None:
        self._dirty.update(self.experiments)
        await self.save_dirty()

    async def restore(self) -> None:
        """Load saved experiments of the repository's models; running ones resume joining outcomes."""
        for model in sorted({*self._model_names(), *self.registry.models}):
            try:
                data = self.store.read(f"experiment.{model}")
                if data is None:
                    continue
                experiment = RunningExperiment.from_dict(data, rng=self._rng)
            except ConfigError as exc:
                log.error("model %s: saved experiment not restored: %s", model, exc)
                continue
            self.install(model, experiment)
            log.info(
                "model %s: experiment %s restored (%s)",
                model,
                experiment.experiment_id,
                experiment.describe()["state"],
            )

    def mark_dirty(self, model: str) -> None:
        """Save the model's experiment at the next periodic save (its state changed)."""
        self._dirty.add(model)

    async def record_event(self, model: str, kind: str, **detail: Any) -> dict[str, Any]:
        """Log a lifecycle event (kept in memory for the report; appended to `experiment-events.<model>`)."""
        experiment = self.experiments.get(model)
        event = {
            "time": time.time(),
            "model": model,
            "experiment": experiment.experiment_id if experiment is not None else None,
            "kind": kind,
            **detail,
        }
        recent = self.events.setdefault(model, [])
        recent.append(event)
        del recent[:-MAX_EVENTS]
        log.info("model %s: experiment event %s %s", model, kind, detail)
        try:
            await anyio.to_thread.run_sync(
                self.store.append, f"experiment-events.{model}", event, limiter=self._save_limiter
            )
        except Exception:  # the event stays in memory and in the log line
            log.exception("appending the experiment event of %s failed", model)
        return event

    # -- views -----------------------------------------------------------------------------------

    def candidate_verdict(self, model: str, candidate: str) -> CandidateVerdict | None:
        """How `candidate` fares against the control in the model's running experiment (what the
        rollout's `experiment` gate reads); None when no running experiment has it as a non-control arm.
        A sample-ratio mismatch voids the comparison: no outcomes count then."""
        experiment = self.experiments.get(model)
        if experiment is None or not experiment.running:
            return None
        result = experiment.report()
        for comparison in result.comparisons:
            if comparison.arm != candidate:
                continue
            if result.verdict == INVALID:
                return CandidateVerdict(significantly_worse=False, samples=0, detail="invalid (SRM)")
            detail = (
                f"{comparison.verdict}: lift {comparison.lift.absolute:+.4g} vs {comparison.control}, "
                f"p (Holm) {comparison.p_adjusted:.3g}"
            )
            return CandidateVerdict(
                significantly_worse=comparison.verdict == A_BETTER, samples=comparison.n_arm, detail=detail
            )
        return None

    def report_document(self, model: str) -> dict[str, Any]:
        """`{"experiment": ..., "report": ..., "table": ..., "feedback": ...}` for the admin API."""
        experiment = self.get(model)
        result = experiment.report()
        return {
            "experiment": experiment.describe(),
            "report": result.to_dict(),
            "table": result.render_table(),
            "feedback": self.feedback_stats(model),
            "events": [
                e for e in self.events.get(model, []) if e.get("experiment") == experiment.experiment_id
            ],
        }

    def status(self, model: str) -> dict[str, Any]:
        experiment = self.experiments.get(model)
        if experiment is None:
            return {"experiment": None}
        slots = self.registry.models.get(model)
        try:
            line = experiment.summary(slots.ready_versions if slots is not None else frozenset())
        except Exception as exc:  # a status page must render even if the statistics fail
            line = f"experiment {experiment.experiment_id}: summary failed: {exc}"
        return {"experiment": line}


def segment_attributes(scope: Scope) -> dict[str, str]:
    """Request headers `x-segment-<name>: <value>` as `{name: value}`."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name.startswith(SEGMENT_PREFIX):
            found[name[len(SEGMENT_PREFIX) :].decode("latin-1")] = value.decode("latin-1")
    return found
