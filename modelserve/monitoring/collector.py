"""A `prometheus_client` custom collector exposing the monitoring state at scrape time.

Series (labels are bounded: model, version, role, output column, a fixed vocabulary of outcomes):

    modelserve_prediction_value_bucket{model,version,role,output,le}   score histogram per version
    modelserve_prediction_class_total{model,version,role,output,class}  predicted classes per version
    modelserve_drift_psi{model,version,kind,column}                     PSI of the current window
    modelserve_drift_alarm{model,version,kind,column}                   1 above the threshold, else 0
    modelserve_drift_alarms_total{model,version,kind,column}            times a column crossed it
    modelserve_output_shift_psi{model,version,baseline,column}          candidate vs live outputs
    modelserve_outcomes_total{model,version,result}                     labelled rows right / wrong
    modelserve_accuracy_ratio{model,version}                            accuracy from posted labels
    modelserve_rollouts_total{model,outcome}                            started, promoted, rolled_back...
    modelserve_guardrail_actions_total{model,action}
    modelserve_monitoring_dropped_total                                 requests not monitored (overload)
    modelserve_monitoring_sampled_out_total{model}                      requests left out by sampling
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from modelserve.monitoring.counters import EventCounters
from modelserve.monitoring.monitor import Monitor
from modelserve.monitoring.outcomes import ACCURACY, OutcomeTally


def _le(edge: float) -> str:
    return repr(float(edge))


class MonitoringCollector:
    """Collects from a `Monitor`, an `OutcomeTally` and `EventCounters` on every scrape."""

    def __init__(
        self,
        monitor: Monitor,
        tally: OutcomeTally | None = None,
        counters: EventCounters | None = None,
        *,
        shift_pairs: Callable[[], Iterable[tuple[str, str, str]]] | None = None,
    ) -> None:
        self.monitor = monitor
        self.tally = tally
        self.counters = counters
        #: `(model, live, candidate)` for every model with a candidate taking traffic or shadowing.
        self.shift_pairs = shift_pairs

    def describe(self) -> list[Any]:
        return []  # no collection at registration time

    def collect(self) -> Iterator[Any]:
        monitor = self.monitor
        monitor.flush()
        values = HistogramMetricFamily(
            "modelserve_prediction_value",
            "Distribution of score outputs by version",
            labels=["model", "version", "role", "output"],
        )
        for model, version, role, column, hist in monitor.histograms():
            cumulative = hist.counts.cumsum().tolist()
            buckets = [(_le(edge), cumulative[i]) for i, edge in enumerate(hist.edges)]
            buckets.append(("+Inf", cumulative[-1]))
            values.add_metric([model, version, role, column], buckets, hist.total)
        yield values
        classes = CounterMetricFamily(
            "modelserve_prediction_class",
            "Predicted classes by version",
            labels=["model", "version", "role", "output", "class"],
        )
        for model, version, role, output, counts in monitor.class_counts():
            for name, count in sorted(counts.items()):
                classes.add_metric([model, version, role, output, name], count)
        yield classes
        yield from self._drift()
        yield from self._outcomes()
        yield from self._events()
        dropped = CounterMetricFamily(
            "modelserve_monitoring_dropped", "Requests not monitored because the monitoring queue was full"
        )
        dropped.add_metric([], monitor.dropped)
        yield dropped
        sampled_out = CounterMetricFamily(
            "modelserve_monitoring_sampled_out",
            "Requests left out of monitoring by sampling (sample_every, past max_rate a second)",
            labels=["model"],
        )
        for model, skipped in sorted(monitor.sampled_out().items()):
            sampled_out.add_metric([model], skipped)
        yield sampled_out

    def _drift(self) -> Iterator[Any]:
        monitor = self.monitor
        labels = ["model", "version", "kind", "column"]
        psi = GaugeMetricFamily(
            "modelserve_drift_psi", "PSI of the current window against the reference", labels=labels
        )
        alarm = GaugeMetricFamily(
            "modelserve_drift_alarm", "1 while a column's PSI is above its threshold", labels=labels
        )
        for model in monitor.models():
            for version in monitor.versions(model):
                for kind, result in monitor.drift_results(model, version):
                    key = [model, version, kind, result.column]
                    if result.psi is not None:
                        psi.add_metric(key, result.psi)
                    alarm.add_metric(key, 1.0 if result.drifted else 0.0)
        yield psi
        yield alarm
        alarms = CounterMetricFamily(
            "modelserve_drift_alarms", "Times a column's drift crossed its threshold", labels=labels
        )
        for (model, version, kind, column), count in sorted(monitor.alarms.items()):
            alarms.add_metric([model, version, kind, column], count)
        yield alarms
        shift = GaugeMetricFamily(
            "modelserve_output_shift_psi",
            "PSI of a candidate's outputs against the live version's, current window",
            labels=["model", "version", "baseline", "column"],
        )
        for model, live, candidate in self.shift_pairs() if self.shift_pairs is not None else ():
            for result in monitor.output_shift(model, live, candidate):
                if result.psi is not None:
                    shift.add_metric([model, candidate, live, result.column], result.psi)
        yield shift

    def _outcomes(self) -> Iterator[Any]:
        outcomes = CounterMetricFamily(
            "modelserve_outcomes",
            "Labelled rows scored, by whether the version was right",
            labels=["model", "version", "result"],
        )
        accuracy = GaugeMetricFamily(
            "modelserve_accuracy_ratio", "Accuracy by version from posted labels", labels=["model", "version"]
        )
        error = GaugeMetricFamily(
            "modelserve_mean_abs_error",
            "Mean absolute error by version from posted values",
            labels=["model", "version"],
        )
        tally = self.tally
        for model in self.monitor.models() if tally is not None else ():
            for version in tally.versions(model) if tally is not None else ():
                summary = tally.summary(model, version) if tally is not None else None
                if summary is None or summary.kind is None:
                    continue
                if summary.kind == ACCURACY and summary.accuracy is not None:
                    outcomes.add_metric([model, version, "right"], summary.correct)
                    outcomes.add_metric([model, version, "wrong"], summary.samples - summary.correct)
                    accuracy.add_metric([model, version], summary.accuracy)
                elif summary.mean_abs_error is not None:
                    error.add_metric([model, version], summary.mean_abs_error)
        yield outcomes
        yield accuracy
        yield error

    def _events(self) -> Iterator[Any]:
        rollouts = CounterMetricFamily(
            "modelserve_rollouts",
            "Rollout events by outcome (started, advanced, promoted, rolled_back...)",
            labels=["model", "outcome"],
        )
        guardrails = CounterMetricFamily(
            "modelserve_guardrail_actions", "Actions taken by guardrails", labels=["model", "action"]
        )
        counters = self.counters
        if counters is not None:
            for labels, count in sorted(counters.snapshot(EventCounters.ROLLOUTS).items()):
                rollouts.add_metric(list(labels), count)
            for labels, count in sorted(counters.snapshot(EventCounters.GUARDRAILS).items()):
                guardrails.add_metric(list(labels), count)
        yield rollouts
        yield guardrails
