"""`modelserve shadow ...` commands (admin API clients).

    modelserve shadow MODEL VERSION [VERSION ...] [--rate R]   shadow versions (loaded + ready)
    modelserve shadow MODEL --off                              stop shadowing
    modelserve shadow report MODEL [--json] [--min-samples N]  stats + promotion recommendation

One parser takes the words positionally and decides: `report MODEL` (exactly two words, the first
"report", and neither --rate nor --off) is the report; anything else is MODEL VERSION... A model
literally named "report" can still be shadowed with `--model report VERSION`.
"""

from __future__ import annotations

import argparse
from typing import Any

from modelserve.cli import ClientError, admin_call, client_parser, print_json


def register(commands: Any) -> None:
    """Add the shadow commands to the `modelserve` parser."""
    shadow = client_parser(
        commands, "shadow", "run versions in shadow beside the live one, or show the shadow report"
    )
    shadow.usage = (
        "modelserve shadow MODEL VERSION [VERSION ...] [--rate R] | shadow MODEL --off | "
        "shadow report MODEL [--json]"
    )
    shadow.add_argument("words", nargs="*", metavar="WORD", help="MODEL VERSION..., MODEL, or report MODEL")
    shadow.add_argument("--model", help="the model (when it is literally named 'report')")
    shadow.add_argument("--rate", type=float, help="fraction of requests shadowed, 0..1 (default: keep)")
    shadow.add_argument("--off", action="store_true", help="stop shadowing MODEL")
    shadow.add_argument("--json", action="store_true", help="report: print the raw JSON")
    shadow.add_argument("--min-samples", type=int, help="report: samples needed for a verdict (default 1000)")
    shadow.add_argument("--min-agreement", type=float, help="report: agreement needed (default 0.85)")
    shadow.set_defaults(run=_shadow)


def _shadow(args: argparse.Namespace) -> int:
    words: list[str] = list(args.words)
    if args.model is None and len(words) == 2 and words[0] == "report" and args.rate is None and not args.off:
        return _report(args, words[1])
    model = args.model if args.model is not None else (words.pop(0) if words else None)
    if model is None:
        raise ClientError("name a model: shadow MODEL VERSION | shadow MODEL --off | shadow report MODEL")
    if args.off:
        if words:
            raise ClientError("--off takes no versions")
        body: dict[str, Any] = {"off": True}
    else:
        if not words:
            raise ClientError(f"name the version(s) to shadow: modelserve shadow {model} VERSION")
        body = {"versions": words}
        if args.rate is not None:
            body["rate"] = args.rate
    status = admin_call(args, "POST", f"/admin/models/{model}/shadow", body)
    summary = status.get("shadow", {})
    versions = summary.get("versions") or []
    if versions:
        rate = summary.get("sample_rate")
        print(
            f"{model}: shadowing {', '.join(versions)} at {rate:.0%} of requests "
            f"(live {status.get('live_version')})"
        )
    else:
        print(f"{model}: shadow off")
    return 0


def _report(args: argparse.Namespace, model: str) -> int:
    query = []
    if args.min_samples is not None:
        query.append(f"min_samples={args.min_samples}")
    if args.min_agreement is not None:
        query.append(f"min_agreement={args.min_agreement}")
    path = f"/admin/models/{model}/shadow/report" + ("?" + "&".join(query) if query else "")
    report = admin_call(args, "GET", path)
    if args.json:
        print_json(report)
        return 0
    print(render(report))
    return 0


def _num(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


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
        lat_p, lat_s = shadow["primary_latency_ms"], shadow["shadow_latency_ms"]
        rows = [
            ("samples", f"{shadow['samples']} ({shadow['rows']} rows)"),
            ("agreement", f"{_num(shadow['agreement_rate'], '.4f')}  "
                          f"[{_num(low, '.4f')}, {_num(high, '.4f')}]"),
            ("max abs diff p50/p99", f"{_num(shadow['max_abs_diff'].get('p50'), '.3g')} / "
                                      f"{_num(shadow['max_abs_diff'].get('p99'), '.3g')}"),
            ("primary latency p50/p95/p99 ms", "/".join(_num(lat_p.get(q)) for q in ("p50", "p95", "p99"))),
            ("shadow latency p50/p95/p99 ms", "/".join(_num(lat_s.get(q)) for q in ("p50", "p95", "p99"))),
            ("errors / timeouts / dropped",
             f"{shadow['errors']} / {shadow['timeouts']} / {shadow['dropped']}"),
            ("disagreements kept", f"{len(shadow['disagreements'])} of {shadow['disagreements_seen']}"),
        ]  # fmt: skip
        if shadow.get("last_error"):
            rows.append(("last error", shadow["last_error"]))
        width = max(len(name) for name, _ in rows)
        state = "" if shadow.get("active", True) else " (no longer shadowed)"
        lines.append(f"\nshadow version {shadow['shadow_version']}{state}")
        lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
        verdict = shadow["recommendation"]
        lines.append(f"  verdict: {verdict['verdict'].upper()}")
        for check in verdict["checks"]:
            mark = "pass" if check["passed"] else "FAIL"
            observed = _num(check["observed"], ".4g")
            detail = f"  ({check['detail']})" if check["detail"] else ""
            lines.append(
                f"    [{mark}] {check['name']}: {observed} {check['rule']} {check['threshold']:.4g}{detail}"
            )
    return "\n".join(lines)
