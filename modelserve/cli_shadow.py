"""`modelserve shadow start|stop|report MODEL ...` (admin API clients).

    modelserve shadow start MODEL VERSION [VERSION ...] [--rate R]   shadow versions (loaded + ready)
    modelserve shadow stop MODEL                                     stop shadowing
    modelserve shadow report MODEL [--min-samples N] [--min-agreement A]   stats + recommendation

(`shadow MODEL VERSION...` and `shadow MODEL --off`, the spellings before, still work: see
`cli.old_spellings`.)
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from modelserve.cli import admin_call, client_parser, show


def register(commands: Any) -> None:
    """Add the shadow commands to the `modelserve` parser."""
    shadow = commands.add_parser(
        "shadow",
        help="run versions in shadow beside the live one, stop, or show the shadow report",
        description="Shadow candidate versions on live traffic and compare them with the live one.",
    )
    actions = shadow.add_subparsers(dest="shadow_command", required=True, metavar="ACTION")

    start = client_parser(actions, "start", "shadow VERSION(s) of MODEL (each loaded and ready, none live)")
    start.add_argument("model")
    start.add_argument("versions", nargs="+", metavar="VERSION")
    start.add_argument("--rate", type=float, help="fraction of requests shadowed, 0..1 (default: keep)")
    start.set_defaults(run=_start)

    stop = client_parser(actions, "stop", "stop shadowing MODEL (its shadow stats stay readable)")
    stop.add_argument("model")
    stop.set_defaults(run=_stop)

    report = client_parser(actions, "report", "shadow stats per version with a promotion recommendation")
    report.add_argument("model")
    report.add_argument("--min-samples", type=int, help="samples needed for a verdict (default 1000)")
    report.add_argument("--min-agreement", type=float, help="agreement needed (default 0.85)")
    report.set_defaults(run=_report)


def _start(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"versions": args.versions}
    if args.rate is not None:
        body["rate"] = args.rate
    status = admin_call(args, "POST", f"/admin/models/{args.model}/shadow", body)
    return show(args, status, lambda: _summary(args.model, status))


def _stop(args: argparse.Namespace) -> int:
    status = admin_call(args, "POST", f"/admin/models/{args.model}/shadow", {"off": True})
    return show(args, status, lambda: _summary(args.model, status))


def _summary(model: str, status: dict[str, Any]) -> str:
    summary = status.get("shadow", {})
    versions = summary.get("versions") or []
    if not versions:
        return f"{model}: shadow off"
    rate = summary.get("sample_rate")
    live = status.get("live_version")
    return f"{model}: shadowing {', '.join(versions)} at {rate:.0%} of requests (live {live})"


def _report(args: argparse.Namespace) -> int:
    query = []
    if args.min_samples is not None:
        query.append(f"min_samples={args.min_samples}")
    if args.min_agreement is not None:
        query.append(f"min_agreement={args.min_agreement}")
    path = f"/admin/models/{args.model}/shadow/report" + ("?" + "&".join(query) if query else "")
    report = admin_call(args, "GET", path)
    return show(args, report, lambda: render(report))


def _num(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _ms(seconds: Any) -> str:
    return "-" if seconds is None else format(seconds * 1e3, ".3f")


def render(report: dict[str, Any]) -> str:
    """The report as a readable table per shadow version, with the verdict and its checks."""
    primary = report["primary"]
    lines = [
        f"model {report['model']}: live {report['live_version']}, shadowing "
        f"{', '.join(report['shadow_versions']) or 'nothing'} at rate {_num(report['sample_rate'], '.2f')}; "
        f"primary error rate {_num(primary['error_rate'], '.4f')} over {primary['requests']} requests"
    ]
    if not report["shadows"]:
        lines.append("no shadow results yet")
    for shadow in report["shadows"]:
        low, high = shadow["agreement_interval"]
        lat_p, lat_s = shadow["primary_latency_s"], shadow["shadow_latency_s"]  # seconds; shown in ms
        rows = [
            ("samples", f"{shadow['samples']} ({shadow['rows']} rows)"),
            ("agreement", f"{_num(shadow['agreement_rate'], '.4f')}  "
                          f"[{_num(low, '.4f')}, {_num(high, '.4f')}]"),
            ("max abs diff p50/p99", f"{_num(shadow['max_abs_diff'].get('p50'), '.3g')} / "
                                      f"{_num(shadow['max_abs_diff'].get('p99'), '.3g')}"),
            ("primary latency p50/p95/p99 ms", "/".join(_ms(lat_p.get(q)) for q in ("p50", "p95", "p99"))),
            ("shadow latency p50/p95/p99 ms", "/".join(_ms(lat_s.get(q)) for q in ("p50", "p95", "p99"))),
            ("errors / timeouts / dropped",
             f"{shadow['errors']} / {shadow['timeouts']} / {shadow['dropped']}"),
            ("disagreements kept", f"{len(shadow['disagreements'])} of {shadow['disagreements_seen']}"),
        ]  # fmt: skip
        windows = shadow.get("windows") or []
        if windows:
            recent = ", ".join(
                f"{time.strftime('%H:%M', time.gmtime(w['start']))} {_num(w['agreement_rate'], '.3f')} "
                f"({w['samples']})"
                for w in windows[-5:]
            )
            rows.append((f"agreement per {shadow['window_s']:g} s (UTC)", recent))
        if shadow.get("last_error"):
            rows.append(("last error", shadow["last_error"]))
        width = max(len(name) for name, _ in rows)
        state = "" if shadow.get("active", True) else " (no longer shadowed)"
        lines.append(f"\nshadow version {shadow['shadow_version']}{state}")
        lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
        verdict = shadow["recommendation"]
        measure = verdict.get("latency_measure", "compute")
        lines.append(f"  verdict: {verdict['verdict'].upper()}  (rollout gates; latency as {measure})")
        for check in verdict["checks"]:
            mark = {"pass": "pass", "fail": "FAIL"}.get(check.get("verdict", ""), "hold")
            lines.append(f"    [{mark}] {check['name']}: {check['detail']}")
    return "\n".join(lines)
