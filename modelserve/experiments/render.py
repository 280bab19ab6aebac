"""Plain-text rendering of an `ExperimentReport` (what `modelserve experiment report MODEL` prints)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelserve.experiments.stats import Interval

if TYPE_CHECKING:
    from modelserve.experiments.report import Comparison, ExperimentReport

DASH = "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def _num(value: float, *, percent: bool = False, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return DASH
    sign = "+" if signed else ""
    return f"{value * 100:{sign}.2f}%" if percent else f"{value:{sign}.4g}"


def _interval(iv: Interval, *, percent: bool = False, signed: bool = False) -> str:
    if not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return DASH
    return (
        f"[{_num(iv.low, percent=percent, signed=signed)}, {_num(iv.high, percent=percent, signed=signed)}]"
    )


def _p(value: float) -> str:
    if value is None or not math.isfinite(value):
        return DASH
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _verdict(c: Comparison) -> str:
    if c.samples_needed is not None:
        return f"{c.verdict} (need {c.samples_needed:,} more per arm)"
    return c.verdict


def _lift_cells(c: Comparison, binary: bool) -> list[str]:
    lift = c.lift
    absolute = _interval(lift.absolute_interval, percent=binary, signed=True)
    relative = _interval(lift.relative_interval, percent=True, signed=True)
    cells = [
        (_num(lift.absolute, percent=binary, signed=True), absolute),
        (_num(lift.relative, percent=True, signed=True), relative),
    ]
    return [value if interval == DASH else f"{value} {interval}" for value, interval in cells]


def render_report(report: ExperimentReport) -> str:
    """The report as aligned text: arms, comparisons, SRM, verdict, guardrails, segments, posterior."""
    metric = report.metric
    binary = metric.kind == "binary"
    level = f"{(1 - report.alpha) * 100:g}%"
    lines = [
        f"experiment {report.model}: metric {metric.name} ({metric.kind}, "
        f"{'higher' if metric.higher_is_better else 'lower'} is better), policy {report.policy}, "
        f"alpha {report.alpha:g}, MDE {report.mde * 100:g}% relative",
        "",
    ]
    by_arm = {c.arm: c for c in report.comparisons}
    header = [
        "arm",
        "weight",
        "assigned",
        "n",
        "rate" if binary else "mean",
        f"{level} CI",
        "abs lift",
        "rel lift",
        "p",
        "p (seq)",
        "verdict",
    ]
    rows = []
    for s in report.arms:
        c = by_arm.get(s.arm)
        cells = [
            s.arm + ("" if c else " (control)"),
            f"{s.weight * 100:.1f}%",
            f"{s.assigned:,}",
            f"{s.n:,}",
            _num(s.estimate, percent=binary),
            _interval(s.interval, percent=binary),
        ]
        if c is None:
            cells += [DASH, DASH, DASH, DASH, ""]
        else:
            cells += [*_lift_cells(c, binary), _p(c.p_adjusted), _p(c.always_valid_p_adjusted), _verdict(c)]
        rows.append(cells)
    lines += _table(header, rows)
    lines.append("")
    srm = report.srm.describe() if report.srm else "not applicable (bandit weights move on purpose)"
    lines.append(f"SRM: {srm}")
    verdict = report.verdict + (f": {report.winner}" if report.winner else "")
    if report.samples_needed is not None:
        verdict += f" (need about {report.samples_needed:,} more outcomes per arm)"
    lines.append(f"verdict: {verdict}")
    lines.append(
        "p = fixed-horizon (z-test / Welch); p (seq) = always-valid mSPRT, which decides; "
        "Holm-adjusted over arms"
    )
    if report.guardrails:
        lines += ["", "guardrails:"]
        rows = [
            [
                g.metric,
                g.comparison.arm,
                *_lift_cells(g.comparison, False),
                _p(g.comparison.always_valid_p_adjusted),
                "HARMED" if g.harmed else "ok",
            ]
            for g in report.guardrails
        ]
        lines += _table(["metric", "arm", "abs lift", "rel lift", "p (seq)", "status"], rows)
    if report.segments:
        lines += ["", "segments (Holm-adjusted within each attribute; exploratory, no verdict):"]
        rows = [
            [
                s.attribute,
                s.value,
                s.comparison.arm,
                f"{s.comparison.n_control:,}",
                f"{s.comparison.n_arm:,}",
                *_lift_cells(s.comparison, binary),
                _p(s.comparison.p_adjusted),
                _p(s.comparison.always_valid_p_adjusted),
            ]
            for s in report.segments
        ]
        lines += _table(
            ["attribute", "value", "arm", "n control", "n arm", "abs lift", "rel lift", "p", "p (seq)"], rows
        )
    if report.posterior:
        lines += ["", "bandit posterior:"]
        rows = [
            [
                p.arm,
                f"{p.outcomes:,}",
                _num(p.mean),
                f"[{_num(p.low)}, {_num(p.high)}]",
                f"{p.weight * 100:.1f}%",
            ]
            for p in report.posterior
        ]
        lines += _table(["arm", "outcomes", "mean", "95% credible", "weight"], rows)
        for arm, reason in report.removed:
            lines.append(f"arm {arm} removed from the draw: {reason}")
    return "\n".join(lines) + "\n"
