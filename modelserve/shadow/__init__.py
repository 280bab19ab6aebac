"""Shadow execution: run candidate versions beside the live one, compare, report; never hurt the primary.

`runner.ShadowRunner` (bounded, isolated execution), `compare` (pure output comparisons),
`stats.ShadowStats` (per-version figures), `report.recommend` (promotion verdict with evidence) and
`sink.JsonlSink` (rotating JSONL record of every outcome).
"""

from __future__ import annotations

from modelserve.shadow.compare import COMPARATORS, Comparison
from modelserve.shadow.report import Recommendation, recommend
from modelserve.shadow.runner import ShadowResult, ShadowRunner
from modelserve.shadow.sink import JsonlSink
from modelserve.shadow.stats import ShadowStats

__all__ = [
    "COMPARATORS",
    "Comparison",
    "JsonlSink",
    "Recommendation",
    "ShadowResult",
    "ShadowRunner",
    "ShadowStats",
    "recommend",
]
