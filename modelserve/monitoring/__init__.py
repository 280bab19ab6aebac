"""Model monitoring by version: prediction distributions, data drift, accuracy from posted labels.

Pure (no HTTP): the server wires an inference observer into `Monitor.submit`, labels into
`LabelJoin.resolve`, and exposes `MonitoringCollector` on `/metrics`. Gates read `OutcomeTally.summary`.
"""

from __future__ import annotations

from modelserve.monitoring.drift import ColumnDrift, DriftConfig
from modelserve.monitoring.monitor import Monitor, MonitorConfig
from modelserve.monitoring.outcomes import LabelJoin, OutcomeSummary, OutcomeTally

__all__ = [
    "ColumnDrift",
    "DriftConfig",
    "LabelJoin",
    "Monitor",
    "MonitorConfig",
    "OutcomeSummary",
    "OutcomeTally",
]
