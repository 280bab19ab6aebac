"""The composition root: `build_services(config)` builds every object of a server, in dependency order.

Each service receives the concrete collaborators it uses through its constructor, and the
lifecycle is declared, not probed: `Hooks` lists the inference observers, status providers, startup
and shutdown hooks and background tasks, filled here in a fixed order. Nothing is global; nothing
looks another service up by name.

Order (each line uses only what the lines above built)::

    store -> registry -> policies -> windows -> telemetry? -> experiments? -> flags, router
          -> shadow? -> leader lease (a fleet) -> rollout? -> inference path (observers: windows,
          telemetry, shadow, experiments)

`?`: optional, chosen by `FeatureSet`. Routes and middleware are built from `Services` by the app
(`server/app.py`); an `Extension` adds routes, middleware and hooks of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from modelserve.config import ServerConfig
from modelserve.experiments.leader import ExperimentLeader
from modelserve.experiments.lifecycle import ExperimentSupervisor
from modelserve.experiments.service import ExperimentService
from modelserve.experiments.shared import FleetExperimentService
from modelserve.fleet.leader import LeaderLease
from modelserve.fleet.replica import Replica
from modelserve.fleet.sync import PolicySync
from modelserve.fleet.windows import FleetWindows
from modelserve.inference.path import InferencePath, InferenceRecord, Observer
from modelserve.middleware.routing import ArmDecider, Router
from modelserve.monitoring.collector import MonitoringCollector
from modelserve.monitoring.counters import EventCounters
from modelserve.monitoring.fleet import FleetMonitoring
from modelserve.monitoring.fleet_labels import FleetLabels
from modelserve.monitoring.service import MonitoringService
from modelserve.rollout.events import RolloutEvent
from modelserve.rollout.gates import ExperimentEvidence, OutcomeEvidence
from modelserve.rollout.guardrails import GUARDRAIL, GuardrailAction, Guardrails, Promotion
from modelserve.rollout.outbox import WebhookOutbox
from modelserve.rollout.plan import RolloutPlan
from modelserve.rollout.service import RolloutService
from modelserve.rollout.webhooks import WebhookNotifier
from modelserve.rollout.withdrawn import WithdrawnVersions
from modelserve.server.auth import ADMIN, Tokens
from modelserve.server.supervisor import TaskSupervisor
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import ModelRepository
from modelserve.shadow.service import ShadowService
from modelserve.shadow.sink import JsonlSink
from modelserve.state.audit import ROLLOUT, Actor, AuditLog
from modelserve.state.cached import CoordinatorStore
from modelserve.state.coordinator import open_coordinator, replica_id
from modelserve.state.flags import FlagFileSource
from modelserve.state.policies import PolicyTable
from modelserve.state.store import MemoryStateStore, StateStore
from modelserve.telemetry.fleet_metrics import WorkerMetrics
from modelserve.telemetry.service import TelemetryService, build_telemetry, rollout_readings
from modelserve.telemetry.windows import SlidingWindows

log = logging.getLogger("modelserve.server")

#: An async hook without arguments (startup, shutdown, background task).
Hook = Callable[[], Coroutine[object, object, None]]
#: `model -> extra keys for the model's status` (GET /admin/models/{model}).
StatusProvider = Callable[[str], dict[str, object]]

FLAG_POLL_INTERVAL_S = 1.0
WINDOW_S = 600.0
WINDOW_SLICES = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureSet:
    """Which optional services a server builds (all of them by default). Routing is always on."""

    telemetry: bool = True
    shadow: bool = True
    experiments: bool = True
    rollout: bool = True
    monitoring: bool = True


@dataclass(slots=True, kw_only=True)
class Hooks:
    """The declared extension points of the lifecycle and request path, each run in list order."""

    #: Run after every inference (after the response is sent); failures are logged, never raised.
    observers: list[Observer] = field(default_factory=list)
    status_providers: list[StatusProvider] = field(default_factory=list)
    #: Run before the models load (connect to the shared state, read the desired versions).
    prepare: list[Hook] = field(default_factory=list)
    #: Run once the models have loaded, before the server takes requests.
    startup: list[Hook] = field(default_factory=list)
    #: Long-running coroutines in the lifespan's task group, cancelled at shutdown.
    tasks: list[Hook] = field(default_factory=list)
    #: Run at shutdown after the tasks are cancelled; a failing hook does not stop the next.
    shutdown: list[Hook] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class Services:
    """Every object of one server; built once by `build_services` and passed to the route modules."""

    config: ServerConfig
    store: StateStore
    registry: ModelRegistry
    policies: PolicyTable
    windows: SlidingWindows
    flags: FlagFileSource | None
    router: Router
    inference: InferencePath
    hooks: Hooks
    #: What `/metrics` exposes; register your own `prometheus_client` collectors here.
    metrics_registry: CollectorRegistry
    #: Set with `config.metrics_dir`: `/metrics` reports every worker's counts summed.
    worker_metrics: WorkerMetrics | None = None
    replica: Replica
    telemetry: TelemetryService | None = None
    shadow: ShadowService | None = None
    experiments: ExperimentService | None = None
    rollout: RolloutService | None = None
    audit: AuditLog
    tokens: Tokens
    #: Versions rolled back for failing their gates: promoting one by hand needs force.
    withdrawn: WithdrawnVersions
    monitoring: MonitoringService | None = None
    started: bool = False
    #: Set when a shutdown began: readiness answers 503 so load balancers stop sending requests.
    draining: bool = False
    #: Inference requests received and not yet answered (readiness shows it while draining).
    requests_in_flight: int = 0
    load_errors: dict[str, str] = field(default_factory=dict)
    #: Runs `hooks.tasks`: a failing task is logged and restarted with backoff, never fatal.
    supervisor: TaskSupervisor = field(default_factory=TaskSupervisor)
    #: Model folders that do not follow the layout, with what was expected (`serving/layout.py`).
    layout_errors: dict[str, str] = field(default_factory=dict)

    def expected_models(self) -> list[str]:
        """The models this server loads at startup (and those whose folder does not fit the layout)."""
        names = expected_models(self.config, self.registry)
        return names + sorted(set(self.layout_errors) - set(names))

    def missing_models(self) -> dict[str, str]:
        """Expected models that cannot serve yet, each with why (readiness lists them)."""
        ready = set(self.registry.ready_models())
        missing = {}
        for name in self.expected_models():
            if name not in ready:
                missing[name] = self.layout_errors.get(name) or self.load_errors.get(name) or "not loaded yet"
        return missing

    def authorize(self, authorization: str | None, scope: str) -> str:
        """The scope the request's bearer token grants for `scope` (`server/auth.py`), else AuthError."""
        return self.tokens.authorize(authorization, scope)

    def wants_request_id(self, model: str) -> bool:
        """Whether responses of `model` need a generated request id (to post outcomes back to)."""
        return self.experiments is not None and self.experiments.running(model)

    def check_admin(self, authorization: str | None) -> None:
        """Raise AuthError unless the admin token is configured and presented as a bearer token."""
        self.tokens.authorize(authorization, ADMIN)

    async def load_model(self, name: str) -> None:
        """Load a model warm and give it a routing policy."""
        slots = await self.registry.load_model(name)
        if slots.live is not None:
            self.policies.ensure(name, slots.config, slots.live.version)
        self.load_errors.pop(name, None)


@dataclass(slots=True, kw_only=True)
class Extension:
    """What an extension adds to a server (see `ModelServe(extensions=...)`); its hooks run after ours."""

    routes: list[BaseRoute] = field(default_factory=list)
    #: Outermost first, inside modelserve's own middleware; each `Middleware(cls, **options)`.
    middleware: list[Middleware] = field(default_factory=list)
    hooks: Hooks = field(default_factory=Hooks)


#: Builds an extension from the server's services.
ExtensionFactory = Callable[[Services], Extension]


def build_services(
    config: ServerConfig,
    *,
    features: FeatureSet | None = None,
    store: StateStore | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Services:
    """Every object of one server, built in dependency order (see the module docstring)."""
    features = features if features is not None else FeatureSet()
    coordinator = open_coordinator(
        config.coordinator, state_dir=config.state_dir if store is None else None, replica=""
    )
    # The registry's and policies' own store only mirrors the shared desired state (see fleet.replica).
    local = store if store is not None else MemoryStateStore()
    if store is None:
        store = CoordinatorStore(coordinator)
    registry = ModelRegistry(ModelRepository(config.repository), local, memory_budget=config.memory_budget)
    policies = PolicyTable(local)
    registry.listeners.append(policies.on_switch)
    windows = SlidingWindows(window_s=WINDOW_S, sub_windows=WINDOW_SLICES)
    hooks = Hooks(observers=[partial(record_in_windows, windows)])
    metrics_registry = CollectorRegistry(auto_describe=False)
    replica = Replica(
        coordinator=coordinator, store=store, local=local, registry=registry, policies=policies,
        replica_id=config.replica_id or replica_id(), model_names=partial(expected_models, config, registry),
        exposure_ttl_s=config.exposure_ttl_s,
    )  # fmt: skip
    hooks.prepare.append(replica.open)
    hooks.startup.append(replica.start)
    hooks.tasks.extend(replica.tasks())
    hooks.status_providers.append(replica.status)

    telemetry = None
    if features.telemetry:
        telemetry = build_telemetry(
            registry,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            metrics_registry=metrics_registry,
        )
        hooks.observers.append(telemetry.observe)

    experiments: ExperimentService | None = None
    arm_deciders: list[ArmDecider] = []
    if features.experiments:
        names = partial(expected_models, config, registry)
        if replica.shared:  # one definition, decision store and set of counters for every replica
            experiments = FleetExperimentService(
                registry=registry, store=store, model_names=names, coordinator=coordinator,
                replica_id=replica.replica_id,
            )  # fmt: skip
        else:
            experiments = ExperimentService(registry=registry, store=store, model_names=names)
        arm_deciders.append(experiments.decide)
        registry.in_use.append(experiments.arms_in_use)

    flags = FlagFileSource(config.flags_file) if config.flags_file is not None else None
    router = Router(
        registry=registry,
        policies=policies,
        flags=flags,
        arm_deciders=arm_deciders,
        on_flag_evaluation=telemetry.on_flag_evaluation if telemetry is not None else None,
    )
    hooks.status_providers.append(partial(routing_status, router, flags))
    if flags is not None:
        hooks.tasks.append(partial(flags.watch, FLAG_POLL_INTERVAL_S))

    # Before shadow: its observer remembers a request's prediction before a shadow can answer for it.
    monitoring = None
    if features.monitoring:
        monitoring = MonitoringService(registry=registry, policies=policies, windows=windows)
        hooks.observers.append(monitoring.observe)
        hooks.status_providers.append(monitoring.status)
        hooks.startup.append(monitoring.apply_references)
        hooks.tasks.append(monitoring.run)
        metrics_registry.register(
            MonitoringCollector(
                monitoring.monitor, monitoring.tally, monitoring.counters, shift_pairs=monitoring.shift_pairs
            )
        )
        if replica.shared:  # every replica's figures merged; /metrics stays this replica's (Prometheus sums)
            fleet_monitoring = FleetMonitoring(
                coordinator=coordinator, monitor=monitoring.monitor, tally=monitoring.tally,
                labels=monitoring.labels, replica_id=replica.replica_id, config_for=monitoring.config_for,
            )  # fmt: skip
            fleet_labels = FleetLabels(coordinator, monitoring.labels)  # labels join on any replica
            monitoring.share(fleet_monitoring, fleet_labels)
            hooks.tasks.extend([fleet_monitoring.run, fleet_labels.run])
            hooks.shutdown.extend([fleet_labels.close, fleet_monitoring.close])

    shadow = None
    if features.shadow:
        sink = JsonlSink(config.state_dir / "shadow" / "comparisons.jsonl") if config.state_dir else None
        shadow = ShadowService(
            registry=registry, policies=policies, windows=windows, telemetry=telemetry, sink=sink
        )
        hooks.observers.append(shadow.observe)
        hooks.status_providers.append(shadow.status)
        hooks.tasks.append(shadow.watch_loop_lag)
        if monitoring is not None:
            monitoring.agreement = partial(shadow_agreement, shadow)
            shadow.result_listeners.append(monitoring.on_shadow_result)

    if experiments is not None:
        hooks.observers.append(experiments.observe)
        hooks.status_providers.append(experiments.status)
        hooks.startup.append(experiments.restore)
        hooks.tasks.append(experiments.run)
        hooks.shutdown.append(experiments.save_all)
    if shadow is not None:
        hooks.shutdown.append(partial(anyio.to_thread.run_sync, shadow.close))

    # Rollout events and audit entries go to the same webhooks.
    webhooks = WebhookNotifier(config.webhooks) if config.webhooks else None
    if webhooks is not None:
        hooks.tasks.append(webhooks.run)
    audit = AuditLog(store, notify=webhooks.notify if webhooks is not None else None)
    hooks.tasks.append(audit.run)
    hooks.status_providers.append(audit.status)
    hooks.shutdown.append(audit.flush)
    shared_store = store if isinstance(store, CoordinatorStore) else None
    withdrawn = WithdrawnVersions(
        store,
        reload=(lambda keys: shared_store.reload(keys)) if shared_store is not None else None,
        preload=(lambda keys: shared_store.preload(keys)) if shared_store is not None else None,
    )
    hooks.prepare.append(lambda: withdrawn.load(expected_models(config, registry)))

    # One leader among the replicas runs the automation: rollouts, guardrails, bandit weights and
    # the experiments' lifecycle rules.
    lease: LeaderLease | None = None
    fleet_windows = None
    leader_work: list[Hook] = []
    if replica.shared and isinstance(store, CoordinatorStore):
        lease = LeaderLease(
            coordinator, replica.replica_id, name="rollout", ttl_s=config.leader_lease_s,
            renew_s=config.leader_lease_s / 5,
        )  # fmt: skip
        fleet_windows = FleetWindows(coordinator=coordinator, windows=windows, replica_id=replica.replica_id)
        hooks.tasks.append(fleet_windows.run)
        hooks.status_providers.append(partial(leader_status, lease))

    rollout = None
    if features.rollout:
        rollout = RolloutService(
            registry=registry, policies=policies, windows=windows, store=store, shadow=shadow,
            webhooks=webhooks, record_event=partial(record_rollout_event, telemetry, monitoring),
            experiment=partial(experiment_evidence, experiments) if experiments is not None else None,
            outcomes=partial(outcome_evidence, monitoring) if monitoring is not None else None,
            commands=replica.commands,
            on_change=partial(on_rollout_change, audit, withdrawn),
        )  # fmt: skip
        hooks.status_providers.append(rollout.summary)
        if lease is not None and isinstance(store, CoordinatorStore):
            outbox = None
            if webhooks is not None:
                outbox = WebhookOutbox(coordinator=coordinator, notifier=webhooks, read_log=store.read_log)
            rollout.share(lease, store, fleet_windows, outbox)
            leader_work.append(rollout.lead)
        else:
            hooks.startup.append(rollout.restore)
            hooks.tasks.append(rollout.controller.run)
    guardrails = Guardrails(
        registry=registry, policies=policies, commands=replica.commands, withdrawn=withdrawn,
        windows=(lambda: rollout.controller.windows) if rollout is not None else (lambda: windows),
        rollout_active=(lambda model: model in rollout.controller.active_models()) if rollout else no_rollout,
        last_promotion=partial(last_promotion, replica.sync),
        experiments=GuardedExperiments(experiments) if experiments is not None else None,
        on_action=partial(record_guardrail_action, audit, telemetry, monitoring, webhooks),
    )  # fmt: skip
    hooks.status_providers.append(guardrails.status)
    if lease is not None:  # in a fleet, the leader runs them
        leader_work.append(guardrails.run)
    else:
        hooks.tasks.append(guardrails.run)
    if experiments is not None:
        supervisor = ExperimentSupervisor(
            experiments,
            windows=fleet_windows if fleet_windows is not None else windows,
            hand_over=partial(hand_over_to_rollout, rollout) if rollout is not None else None,
        )
        if isinstance(experiments, FleetExperimentService):
            leader_work.append(ExperimentLeader(experiments, supervisor).run)
        else:
            hooks.tasks.append(supervisor.run)
    if lease is not None:
        hooks.tasks.append(partial(lease.run, partial(run_together, leader_work)))
    if telemetry is not None:
        progress = rollout.status if rollout is not None else None
        telemetry.metrics.set_rollout_source(partial(rollout_readings, registry, policies, progress))

    worker_metrics = None
    if config.metrics_dir is not None:
        worker_metrics = WorkerMetrics(metrics_registry, config.metrics_dir)
        hooks.tasks.append(worker_metrics.run)

    hooks.shutdown.append(replica.close)  # last: the hooks before it may still write state
    return Services(
        config=config, store=store, registry=registry, policies=policies, windows=windows, flags=flags,
        router=router, inference=InferencePath(registry, hooks.observers, policies), hooks=hooks,
        replica=replica,
        metrics_registry=metrics_registry, worker_metrics=worker_metrics,
        telemetry=telemetry, shadow=shadow, experiments=experiments, rollout=rollout, audit=audit,
        monitoring=monitoring, withdrawn=withdrawn,
        tokens=Tokens(
            admin=config.admin_token, read=config.read_token, feedback=config.feedback_token,
            inference=config.inference_token,
        ),
    )  # fmt: skip


async def run_together(work: list[Hook]) -> None:
    """Run every coroutine of `work` side by side until all return (or the leader's term ends)."""
    async with anyio.create_task_group() as group:
        for hook in work:
            group.start_soon(hook)


def last_promotion(sync: PolicySync, model: str) -> Promotion | None:
    """The promotion behind the live version this replica applied, if it was one (not a rollback)."""
    desired = sync.applied.get(model)
    if desired is None or desired.promoted_at is None or desired.previous is None:
        return None
    return Promotion(previous=desired.previous, live=desired.live, at=desired.promoted_at)


def no_rollout(model: str) -> bool:
    """Without the rollout feature no rollout is ever active."""
    return False


class GuardedExperiments:
    """The running A/B tests as the guardrails see them (bandits have their own health gates)."""

    def __init__(self, experiments: ExperimentService) -> None:
        self.experiments = experiments

    def running_ab(self, model: str) -> tuple[str, tuple[str, ...], float] | None:
        experiment = self.experiments.experiments.get(model)
        if experiment is None or not experiment.running or experiment.bandit is not None:
            return None
        spec = experiment.spec
        return spec.control, tuple(v for v in spec.versions if v != spec.control), experiment.started_at

    async def stop(self, model: str, reason: str, evidence: list[dict[str, Any]]) -> None:
        await self.experiments.stop(model)
        await self.experiments.record_event(model, "guardrail_stopped", reason=reason, gates=evidence)


def record_guardrail_action(
    audit: AuditLog,
    telemetry: TelemetryService | None,
    monitoring: MonitoringService | None,
    webhooks: WebhookNotifier | None,
    action: GuardrailAction,
) -> None:
    """A guardrail's action: in the audit log with its evidence, counted, as a span event and a webhook."""
    evidence = action.to_dict()
    audit.record(
        action.model,
        f"guardrail.{action.action}",
        actor=Actor(scope=GUARDRAIL),
        before={"version": action.version, "baseline_version": action.baseline_version},
        after={"watched": action.watched, "gates": evidence["gates"]},
        detail=action.message,
    )
    if monitoring is not None:
        monitoring.counters.count(EventCounters.GUARDRAILS, action.model, action.action)
    if telemetry is not None:
        attributes = dict(evidence)  # gates keyed by name flatten to `gates.<name>.observed`...
        gates = [dict(gate) for gate in evidence["gates"]]
        attributes["gates"] = {gate.pop("gate"): gate for gate in gates}
        telemetry.record_event(f"modelserve.guardrail.{action.action}", attributes)
    if webhooks is not None:
        webhooks.notify({"kind": "guardrail", **evidence})


async def hand_over_to_rollout(rollout: RolloutService, model: str, version: str, plan: RolloutPlan) -> str:
    """An experiment's winner goes to the rollout controller with the experiment's plan."""
    status = await rollout.start(model, version, plan)
    return f"rollout of {version} (plan {plan.name}): {status.state}, stage {status.stage}"


def expected_models(config: ServerConfig, registry: ModelRegistry) -> list[str]:
    """The models a server loads at startup: `config.load_models`, else every model in the repository."""
    if config.load_models is not None:
        return list(config.load_models)
    return registry.repository.model_names()


#: Rollout events that change nothing (observations, refusals) or echo an operator's call, which is
#: audited as the call itself; every other kind (advanced, rolled_back, promoted, restored, a guardrail)
#: is a change the controller made on its own.
NOT_AUDITED = frozenset(
    {"gates", "dry_run_failure", "error", "started", "skipped", "paused", "resumed", "aborted"}
)


def on_rollout_change(audit: AuditLog, withdrawn: WithdrawnVersions, event: RolloutEvent) -> None:
    """A rollout decision: in the audit log, and a rolled-back candidate withdrawn (a passed one cleared)."""
    audit_rollout_event(audit, event)
    if event.kind == "rolled_back":
        evidence = [gate.to_dict() for gate in event.gates]
        withdrawn.record(event.model, event.candidate, by=ROLLOUT, reason=event.message, evidence=evidence)
    elif event.kind == "promoted":
        withdrawn.clear(event.model, event.candidate)


def audit_rollout_event(audit: AuditLog, event: RolloutEvent) -> None:
    """Record a rollout decision taken by the controller itself (advance, rollback, promotion, guardrail)."""
    if event.kind in NOT_AUDITED:
        return
    audit.record(
        event.model,
        f"rollout.{event.kind}",
        actor=Actor(scope=ROLLOUT),
        after={"candidate": event.candidate, "stage": event.stage, "weight_percent": event.weight},
        detail=event.message,
    )


def experiment_evidence(
    experiments: ExperimentService, model: str, candidate: str
) -> ExperimentEvidence | None:
    """The rollout `experiment` gate's input: the candidate's verdict in the model's running experiment."""
    verdict = experiments.candidate_verdict(model, candidate)
    if verdict is None:
        return None
    return ExperimentEvidence(
        significantly_worse=verdict.significantly_worse, samples=verdict.samples, detail=verdict.detail
    )


def outcome_evidence(
    monitoring: MonitoringService, model: str, candidate: str, baseline: str, since: float, shadow: bool
) -> OutcomeEvidence:
    """The rollout `accuracy` gate's input: both versions' labelled rows since the rollout began.

    Like with like: in a shadow stage, the rows both predicted (the shadow's runs that were not shed);
    in a canary stage, the requests each served (split by targeting key)."""
    tally = monitoring.outcomes  # in a fleet: every replica's labels (zeros while one is missing: hold)
    if shadow:
        base_correct, correct, rows = tally.paired_since(model, baseline, candidate, since)
        return OutcomeEvidence(
            correct=correct, samples=rows, baseline_correct=base_correct, baseline_samples=rows
        )
    correct, samples = tally.labelled_since(model, candidate, since)
    base_correct, base_samples = tally.labelled_since(model, baseline, since)
    return OutcomeEvidence(
        correct=correct, samples=samples, baseline_correct=base_correct, baseline_samples=base_samples
    )


def record_in_windows(windows: SlidingWindows, record: InferenceRecord) -> None:
    """Per-version sliding windows (rollout gates, status): server errors count, client errors don't;
    a request past its deadline counts as an error and a timeout (what the timeout gates read).

    Latency is the model run alone (canary stages compare it between two primaries); the run's thread
    CPU time goes beside it, measured as a shadow run's is (shadow stages compare those).
    """
    if record.loaded is not None and (record.status < 400 or record.status >= 500):
        latency = record.inference_s if record.inference_s is not None else record.latency_s
        windows.record(
            record.model, record.decision.version, "primary", latency, error=record.status >= 500,
            timeout=record.timed_out, compute_s=record.compute_s,
        )  # fmt: skip


def shadow_agreement(shadow: ShadowService, model: str, version: str) -> tuple[float | None, int]:
    """A shadow version's agreement with the primary so far, for the monitoring history."""
    found = shadow.agreement(model, version)
    return found.rate, found.samples


def record_rollout_event(
    telemetry: TelemetryService | None,
    monitoring: MonitoringService | None,
    name: str,
    attributes: dict[str, Any],
) -> None:
    """A rollout decision as a span event (telemetry) and in the alerting counters (monitoring)."""
    if telemetry is not None:
        telemetry.record_event(name, attributes)
    if monitoring is not None:
        monitoring.counters.rollout_event(str(attributes.get("model", "")), name.rsplit(".", 1)[-1])


def leader_status(lease: LeaderLease, model: str) -> dict[str, object]:
    """Whether this replica runs the rollouts, for the model's status."""
    leading = lease.is_leader
    elected_at = lease.term_started_at if leading else None
    return {"rollout_leader": leading, "rollout_leader_elected_at": elected_at}


def routing_status(router: Router, flags: FlagFileSource | None, model: str) -> dict[str, object]:
    """Routing errors and the flags file's last reload error, for the model's status."""
    return {"routing_errors": router.errors, "flags_error": flags.last_error if flags else None}


def install_extensions(services: Services, factories: Sequence[ExtensionFactory]) -> list[Extension]:
    """Build each extension and append its hooks after the server's own."""
    extensions = [factory(services) for factory in factories]
    for extension in extensions:
        hooks = extension.hooks
        services.hooks.observers.extend(hooks.observers)
        services.hooks.status_providers.extend(hooks.status_providers)
        services.hooks.prepare.extend(hooks.prepare)
        services.hooks.startup.extend(hooks.startup)
        services.hooks.tasks.extend(hooks.tasks)
        services.hooks.shutdown.extend(hooks.shutdown)
    return extensions
