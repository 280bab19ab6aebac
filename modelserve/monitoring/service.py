"""`MonitoringService`: feeds the monitor from inference, joins posted labels, samples history.

- `observe` (an inference observer) hands each successful inference to `Monitor.submit` (references
  only) and, when the request has an id, remembers the prediction for the label join;
- `record_labels` joins posted true labels/values to those predictions (accuracy by version);
- `run` (a lifespan task) flushes the monitor twice a second in a worker thread, loads file references for the
  versions it sees, and appends one history point per version every `history_interval_s`.

Reads (`status`, `snapshot`) are JSON-ready. Event loop only, except what `Monitor`, `OutcomeTally`
and `History` document as thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np

from modelserve.config import MonitoringConfig
from modelserve.errors import ConfigError, RequestError
from modelserve.inference.path import InferenceRecord
from modelserve.monitoring.counters import EventCounters
from modelserve.monitoring.drift import ColumnDrift, DriftConfig
from modelserve.monitoring.fleet import FleetMonitoring
from modelserve.monitoring.fleet_labels import FleetLabels
from modelserve.monitoring.history import History
from modelserve.monitoring.monitor import Monitor, MonitorConfig
from modelserve.monitoring.outcomes import LabelJoin, OutcomeTally, Prediction, predicted_values
from modelserve.monitoring.reference_file import load_reference
from modelserve.serving.registry import ModelRegistry
from modelserve.state.policies import PolicyTable
from modelserve.telemetry.windows import SlidingWindows

log = logging.getLogger("modelserve.monitoring")

FLUSH_INTERVAL_S = 0.5
HISTORY_INTERVAL_S = 5.0
#: Window of the latency quantiles in a history point.
HISTORY_LATENCY_WINDOW_S = 30.0
MAX_LABEL_BATCH = 10_000
#: Agreement of a shadow version with the primary: `(model, version) -> (rate or None, samples)`.
AgreementSource = Callable[[str, str], tuple[float | None, int]]
EXPERIMENT_REASONS = ("experiment", "bandit")


def monitor_config(config: MonitoringConfig) -> MonitorConfig:
    """The monitor's options from a model's `[monitoring]` table."""
    return MonitorConfig(
        enabled=config.enabled,
        drift=DriftConfig(
            bins=config.bins,
            threshold=config.threshold,
            min_samples=config.min_samples,
            window_s=config.window_s,
            reference_rows=config.reference_rows,
            reference_period_s=config.reference_period_s,
        ),
        sample_every=config.sample_every,
        max_rate=config.max_rate,
        label_output=config.label_output,
    )


class MonitoringService:
    """Monitoring of every model version served by one server."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        policies: PolicyTable,
        windows: SlidingWindows,
        agreement: AgreementSource | None = None,
        history_interval_s: float = HISTORY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.policies = policies
        self.windows = windows
        self.agreement = agreement
        self.history_interval_s = history_interval_s
        self.monitor = Monitor(config_for=self.config_for, clock=clock)
        self.tally = OutcomeTally()
        self.labels = LabelJoin(self.tally)
        self.counters = EventCounters()
        self.history = History()
        self._configs: dict[str, MonitorConfig] = {}
        self._references: dict[str, dict[str, np.ndarray] | None] = {}
        self._referenced: set[tuple[str, str]] = set()
        self._totals: dict[tuple[str, str], tuple[int, int, float]] = {}
        self._agreements: dict[tuple[str, str], tuple[float, int]] = {}
        self.reference_errors: dict[str, str] = {}
        #: Set in a fleet (`share`): every replica's figures, merged; labels joined on any replica.
        self.fleet: FleetMonitoring | None = None
        self.fleet_labels: FleetLabels | None = None
        self._flush_limiter: anyio.CapacityLimiter | None = None

    def share(self, fleet: FleetMonitoring, labels: FleetLabels) -> None:
        """In a fleet: publish this replica's figures and read everyone's (the accuracy gate too), and
        join labels posted to any replica."""
        self.fleet, self.fleet_labels = fleet, labels

    def fleet_view(self, model: str) -> dict[str, Any] | None:
        """The fleet's figures of `model` (None in one process), with candidate vs live output shifts."""
        if self.fleet is None:
            return None
        pairs = [(live, candidate) for m, live, candidate in self.shift_pairs() if m == model]
        return self.fleet.view(model, pairs)

    @property
    def outcomes(self) -> OutcomeTally | FleetMonitoring:
        """What the accuracy gate reads: this process's labels, or the fleet's when in one."""
        return self.fleet if self.fleet is not None else self.tally

    # -- configuration ---------------------------------------------------------------------------

    def config_for(self, model: str) -> MonitorConfig:
        config = self._configs.get(model)
        if config is None:
            slots = self.registry.models.get(model)
            config = monitor_config(slots.config.monitoring) if slots is not None else MonitorConfig()
            self._configs[model] = config
        return config

    # -- request path ----------------------------------------------------------------------------

    def observe(self, record: InferenceRecord) -> None:
        """Inference observer: queue inputs and outputs; remember the prediction of an identified request."""
        outputs = record.outputs
        if outputs is None or record.inputs is None or record.status >= 400:
            return
        model, decision = record.model, record.decision
        config = self._configs.get(model) or self.config_for(model)
        if not config.enabled:
            return
        self.monitor.submit(model, decision.version, record.inputs, outputs)
        if record.request_id is not None:
            found = predicted_values(outputs, config.label_output)
            if found is not None:
                prediction = Prediction(
                    model=model,
                    version=decision.version,
                    kind=found[0],
                    values=found[1],
                    experiment=decision.reason in EXPERIMENT_REASONS,
                )
                self.labels.remember(record.request_id, prediction, also=record.client_request_id)
                if self.fleet_labels is not None:
                    self.fleet_labels.remember(record.request_id, prediction, also=record.client_request_id)

    def record_labels(self, model: str, items: list[Mapping[str, Any]]) -> dict[str, int]:
        """Join posted `{"request_id", "label"}` items (`"value"` for a regression) to this process's
        predictions; RequestError if bad."""
        parsed = parse_labels(items)
        before = (self.labels.joined, self.labels.unknown, self.labels.duplicate)
        for index, (request_id, truth) in enumerate(parsed):
            try:
                self.labels.resolve(request_id, truth, model=model)
            except ValueError as exc:
                raise RequestError(f"label {index}: {exc}") from None
        return {
            "accepted": self.labels.joined - before[0],
            "unknown": self.labels.unknown - before[1],
            "duplicate": self.labels.duplicate - before[2],
        }

    async def submit_labels(self, model: str, items: list[Mapping[str, Any]]) -> dict[str, int]:
        """`record_labels`, or in a fleet joined once to the prediction of whichever replica served it."""
        if self.fleet_labels is None:
            return self.record_labels(model, items)
        return await self.fleet_labels.resolve(model, parse_labels(items))

    def on_shadow_result(self, result: Any) -> None:
        """A settled shadow run (`ShadowService.result_listeners`; any thread): remember its prediction
        for the label join, so labels say which version was right where they disagreed."""
        outputs = getattr(result, "outputs", None)
        if outputs is None:
            return
        config = self.config_for(result.model)
        if config.enabled:  # the shadow version's prediction distribution (role "shadow")
            self.monitor.submit_shadow(result.model, result.shadow_version, outputs)
        request_id = getattr(result, "request_id", None)
        if request_id is None:
            return
        found = predicted_values(outputs, config.label_output)
        if found is not None:
            self.labels.add_shadow(request_id, result.shadow_version, found[1])

    def disagreements(self, model: str) -> list[dict[str, Any]]:
        """Labelled rows where a shadow version disagreed with the primary, and which one was right."""
        return self.labels.disagreements(model)

    # -- background work -------------------------------------------------------------------------

    async def run(self) -> None:
        """Flush twice a second in a worker thread (the numpy work never blocks the event loop in one
        piece); file references and history points as they fall due."""
        next_point = time.monotonic()
        while True:
            await anyio.sleep(min(FLUSH_INTERVAL_S, self.history_interval_s))
            await self.flush()
            await self.apply_references()
            if time.monotonic() >= next_point:
                next_point = time.monotonic() + self.history_interval_s
                self.sample_history()

    async def flush(self) -> None:
        """Count what is pending, in a worker thread (our own limiter: never anyio's default pool).

        Nothing pending, no thread hop: an idle server's ticks cost next to nothing."""
        if not self.monitor.has_pending():
            return
        if self._flush_limiter is None:
            self._flush_limiter = anyio.CapacityLimiter(1)
        await anyio.to_thread.run_sync(self.monitor.flush, limiter=self._flush_limiter)

    async def apply_references(self) -> None:
        """Give each ready version a file reference (its outputs: the version run over the inputs).

        A startup hook (so traffic is compared from the first request) and again on every tick, for
        versions staged later.
        """
        for model, slots in list(self.registry.models.items()):
            for version in sorted(slots.ready_versions):
                if (model, version) in self._referenced:
                    continue
                self._referenced.add((model, version))
                inputs = self._reference_inputs(model)
                if inputs is None:
                    continue
                try:
                    outputs = await slots.get(version).infer(
                        {k: v.astype(np.float32) for k, v in inputs.items()}
                    )
                except Exception as exc:  # a reference the model cannot run: say so, keep serving
                    self.reference_errors[model] = f"version {version} cannot run the reference: {exc}"
                    log.warning("%s", self.reference_errors[model])
                    continue
                self.monitor.set_reference(model, version, inputs, outputs, source="file")

    def _reference_inputs(self, model: str) -> dict[str, np.ndarray] | None:
        if model in self._references:
            return self._references[model]
        tensors = None
        slots = self.registry.models.get(model)
        if slots is not None and slots.config.monitoring.reference:
            path = Path(self.registry.repository.root) / model / slots.config.monitoring.reference
            try:
                names = [spec.name for spec in slots.get().inputs]
                tensors = load_reference(path, names)
            except ConfigError as exc:
                self.reference_errors[model] = str(exc)
                log.warning("model %s: %s", model, exc)
        self._references[model] = tensors
        return tensors

    def sample_history(self, now: float | None = None) -> None:
        """Append one point per version: rates since the last point, quantiles, agreement, drift, accuracy.

        Versions that served as primary get their serving figures; versions that ran as a shadow get
        their agreement with the primary (so a shadow-only candidate has a history too).
        """
        t = time.time() if now is None else now
        points: dict[tuple[str, str], dict[str, float | None]] = {}
        for model, version, role in list(self.windows.keys()):
            if role == "shadow":
                point = points.setdefault((model, version), {})
                if self.agreement is not None:
                    point.update(self._agreement_point(model, version))
                shadow_mean = self._prediction_point(model, version, role="shadow")
                if shadow_mean:  # what a shadow-only candidate predicts (a served version's own wins)
                    point.setdefault("prediction_mean", shadow_mean["prediction_mean"])
                continue
            totals = self.windows.totals(model, version, role)
            last = self._totals.get((model, version))
            self._totals[(model, version)] = (totals.requests, totals.errors, t)
            if last is None:
                continue
            snapshot = self.windows.snapshot(model, version, role, HISTORY_LATENCY_WINDOW_S)
            requests, errors = totals.requests - last[0], totals.errors - last[1]
            point = points.setdefault((model, version), {})
            point.update(
                requests_per_s=requests / max(t - last[2], 1e-9),
                error_rate=errors / requests if requests else None,
                p50_s=snapshot.p50,
                p99_s=snapshot.p99,
            )
            point.update(self._prediction_point(model, version))
            drift = self.monitor.drift(model, version)
            for kind in ("inputs", "outputs"):
                values = [r.psi for r in drift[kind] if r.psi is not None and r.drifted is not None]
                point[f"drift_{kind}"] = max(values) if values else None
        for (model, version), point in points.items():
            point["accuracy"] = self.tally.summary(model, version).accuracy
        if self.fleet is not None:  # the fleet's accuracy and input drift beside (`fleet_` series)
            for model in sorted({model for model, _ in points}):
                for version, data in self.fleet.view(model)["versions"].items():
                    judged = [
                        d["psi"]
                        for d in data["drift"]["inputs"]
                        if d["psi"] is not None and d["drifted"] is not None
                    ]
                    points.setdefault((model, version), {}).update(
                        fleet_accuracy=data["accuracy"]["accuracy"],
                        fleet_drift_inputs=max(judged, default=None),
                    )
        for (model, version), point in points.items():
            self.history.append(model, version, t, point)

    def _agreement_point(self, model: str, version: str) -> dict[str, float | None]:
        """Shadow agreement since the last point (a time window), and since the shadow started."""
        assert self.agreement is not None
        rate, samples = self.agreement(model, version)
        agreeing = (rate or 0.0) * samples
        last = self._agreements.get((model, version))
        self._agreements[(model, version)] = (agreeing, samples)
        window: float | None = None
        if last is not None and samples > last[1]:
            window = (agreeing - last[0]) / (samples - last[1])
        elif last is not None and samples < last[1]:  # stats were reset (a new shadow period)
            window = rate
        return {"agreement": window, "agreement_cumulative": rate, "shadow_compared": float(samples)}

    def _prediction_point(self, model: str, version: str, role: str = "primary") -> dict[str, float | None]:
        """Mean of the version's main score column over the drift window (from its bucket centres).

        The main column is `name[1]` of a two-column output (P(class 1) of a binary classifier), else
        the first score column.
        """
        found = self.monitor.windowed_outputs(model, version, scores_only=True, role=role)
        if not found:
            return {}
        column = next((name for name in found if name.endswith("[1]")), next(iter(found)))
        counts = found[column]
        total = int(counts.sum())
        if total == 0:
            return {"prediction_mean": None}
        edges = np.asarray(self.config_for(model).output_edges)
        centres = np.concatenate([[edges[0]], (edges[1:] + edges[:-1]) / 2, [edges[-1]]])
        return {"prediction_mean": float((centres * counts).sum() / total)}

    # -- reads -----------------------------------------------------------------------------------

    def shift_pairs(self) -> list[tuple[str, str, str]]:
        """`(model, live, candidate)` for models with a candidate taking traffic or shadowing."""
        pairs = []
        for model, slots in list(self.registry.models.items()):
            policy = self.policies.get(model)
            live = slots.live.version if slots.live is not None else None
            if policy is None or live is None:
                continue
            for candidate in {policy.candidate, *policy.shadow_versions} - {None, live}:
                pairs.append((model, live, str(candidate)))
        return pairs

    def versions(self, model: str) -> dict[str, Any]:
        """Per monitored version: distribution, drift, reference state and accuracy (JSON-ready)."""
        out: dict[str, Any] = {}
        for version in sorted(
            set(self.monitor.versions(model)) | set(self.tally.versions(model)), key=_order
        ):
            drift = self.monitor.drift(model, version)
            out[version] = {
                "distribution": self.monitor.distribution(model, version),
                "shadow_distribution": self.monitor.distribution(model, version, role="shadow"),
                "reference": drift["reference"],
                "drift": {
                    "inputs": [r.to_dict() for r in _worst_first(drift["inputs"])],
                    "outputs": [r.to_dict() for r in _worst_first(drift["outputs"])],
                },
                "accuracy": self.tally.summary(model, version).to_dict(),
                "accuracy_in_experiments": self.tally.summary(model, version, experiment_only=True).to_dict(),
            }
        return out

    def status(self, model: str) -> dict[str, Any]:
        """A short monitoring summary for the model's status: drifted columns and accuracy per version
        (and the fleet's, in a fleet)."""
        versions = {version: _summary(data) for version, data in self.versions(model).items()}
        status: dict[str, Any] = {
            "versions": versions,
            "reference_error": self.reference_errors.get(model),
            "sampling": self.monitor.sampling(model),
        }
        fleet = self.fleet_view(model)
        if fleet is not None:
            fleet["versions"] = {
                version: {**_summary(data), "not_mergeable": data["not_mergeable"]}
                for version, data in fleet["versions"].items()
            }
            status["fleet"] = fleet
        return {"monitoring": status}

    def output_shift(self, model: str) -> list[dict[str, Any]]:
        return [
            {"version": candidate, "baseline": live, **result.to_dict()}
            for m, live, candidate in self.shift_pairs()
            if m == model
            for result in self.monitor.output_shift(model, live, candidate)
        ]


def parse_labels(items: list[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """`(request id, truth)` of each posted label; RequestError naming the first bad one."""
    parsed = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or set(item) - {"request_id", "label", "value"}:
            raise RequestError(f"label {index}: must be an object with request_id and label (or value)")
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= 128:
            raise RequestError(f"label {index}: 'request_id' must be a string of 1..128 characters")
        truth = item["label"] if "label" in item else item.get("value")
        if truth is None or isinstance(truth, dict):
            raise RequestError(f"label {index}: give the true 'label' (or 'value')")
        parsed.append((request_id, truth))
    return parsed


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    """What the status shows of one version's figures (this replica's or the fleet's)."""
    drift = data["drift"]
    return {
        "reference": data["reference"],
        "drifted": [d["column"] for kind in ("inputs", "outputs") for d in drift[kind] if d["drifted"]],
        "accuracy": data["accuracy"]["accuracy"],
        "labelled": data["accuracy"]["samples"],
        "predictions": {
            "primary": _shares(data["distribution"]),
            "shadow": _shares(data["shadow_distribution"]),
        },
    }


def _shares(distribution: dict[str, Any]) -> dict[str, Any]:
    """Rows and class shares of one prediction distribution (what the status shows of it)."""
    shares = {}
    for output, counts in distribution["classes"].items():
        total = sum(counts.values()) or 1
        shares[output] = {name: count / total for name, count in sorted(counts.items())}
    return {"rows": distribution["rows"], "class_shares": shares}


def _order(version: str) -> tuple[int, str]:
    return (len(version), version)


def _worst_first(results: list[ColumnDrift]) -> list[ColumnDrift]:
    return sorted(results, key=lambda r: -(r.psi or 0.0))
