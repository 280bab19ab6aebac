"""`modelserve experiment start|report|stop|feedback ...` (admin API clients).

modelserve experiment start MODEL --arms 1,2 [--weights 50,50] [--metric conversion]
    [--kind binary|continuous] [--lower-is-better] [--mde 0.05] [--alpha 0.05] [--power 0.8]
    [--policy fixed|thompson|epsilon_greedy] [--segments country,device]
    [--auto-stop] [--on-win rollout] [--max-duration SECONDS]
    [--floor 0.01] [--epsilon 0.1] [--epsilon-decay 0] [--min-outcomes 100] [--reweight-every 100]
modelserve experiment size MODEL --baseline B --mde M [--arms 2] [--kind binary|continuous] [--sd SD]
    [--alpha 0.05] [--power 0.8] [--daily-users N]     (N: else the model's traffic now, from the server)
modelserve experiment report MODEL [--json]
modelserve experiment stop MODEL [--json]
modelserve experiment feedback MODEL REQUEST_ID VALUE [--segment name=value ...]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from modelserve.cli import ClientError, admin_call, client_parser, show


def register(commands: Any) -> None:
    """Add the experiment commands to the `modelserve` parser."""
    experiment = commands.add_parser(
        "experiment",
        help="A/B/n tests and bandits over a model's warm versions",
        description="Start, read and stop an experiment; post outcomes by request id.",
    )
    actions = experiment.add_subparsers(dest="action", required=True, metavar="ACTION")

    start = client_parser(actions, "start", "start an experiment (arms must be warm: live, staged or loaded)")
    start.add_argument("model")
    start.add_argument("--arms", required=True, help="versions, control first, e.g. 1,2")
    start.add_argument("--weights", help="traffic shares per arm, e.g. 50,50 (default: equal)")
    start.add_argument("--metric", default="conversion", help="primary metric name (default conversion)")
    start.add_argument("--kind", choices=["binary", "continuous"], default="binary")
    start.add_argument("--lower-is-better", action="store_true", help="e.g. latency or error size")
    start.add_argument("--mde", type=float, default=0.05, help="relative minimum detectable effect")
    start.add_argument("--alpha", type=float, default=0.05)
    start.add_argument("--power", type=float, default=0.8)
    start.add_argument("--policy", choices=["fixed", "thompson", "epsilon_greedy"], default="fixed")
    start.add_argument("--segments", help="segment attributes to analyse, e.g. country,device")
    start.add_argument(
        "--auto-stop", action="store_true", help="stop when the always-valid test reaches a verdict"
    )
    start.add_argument(
        "--on-win", choices=["rollout"], help="hand a winning treatment arm to the rollout controller"
    )
    start.add_argument(
        "--on-win-plan",
        metavar="default|FILE|NAME",
        help="the plan of that rollout: a TOML plan file or a name in examples/plans/ (default: default)",
    )
    start.add_argument("--max-duration", type=float, metavar="SECONDS", help="stop after this long")
    bandit = start.add_argument_group("bandit policies")
    bandit.add_argument("--floor", type=float, help="traffic share every arm keeps (default 0.01)")
    bandit.add_argument("--epsilon", type=float, help="epsilon-greedy exploration share (default 0.1)")
    bandit.add_argument(
        "--epsilon-decay", type=float, help="epsilon / (1 + decay * outcomes so far) (default 0: none)"
    )
    bandit.add_argument("--min-outcomes", type=int, help="outcomes per arm before weights move (100)")
    bandit.add_argument("--reweight-every", type=int, help="outcomes between two reweights (100)")
    bandit.add_argument(
        "--cooldown",
        type=float,
        dest="cooldown_s",
        metavar="SECONDS",
        help="an arm the health gates removed returns on probation after this long (600; doubles each time)",
    )
    start.set_defaults(run=_start)

    size = client_parser(actions, "size", "users per arm and days needed, before starting (power analysis)")
    size.add_argument("model")
    size.add_argument("--baseline", type=float, required=True, help="control rate (binary) or mean")
    size.add_argument("--mde", type=float, required=True, help="relative minimum detectable effect")
    size.add_argument("--arms", type=int, default=2, help="arms including the control (default 2)")
    size.add_argument("--kind", choices=["binary", "continuous"], default="binary")
    size.add_argument("--sd", type=float, help="standard deviation of a continuous metric")
    size.add_argument("--alpha", type=float, default=0.05)
    size.add_argument("--power", type=float, default=0.8)
    size.add_argument(
        "--daily-users", type=float, help="traffic a day (default: the model's requests now, from the server)"
    )
    size.set_defaults(run=_size)

    report = client_parser(actions, "report", "the experiment's statistics as a readable table")
    report.add_argument("model")
    report.set_defaults(run=_report)

    stop = client_parser(actions, "stop", "stop the experiment and print the final report")
    stop.add_argument("model")
    stop.set_defaults(run=_stop)

    feedback = client_parser(actions, "feedback", "post one outcome for a request id")
    feedback.add_argument("model")
    feedback.add_argument("request_id", metavar="REQUEST_ID")
    feedback.add_argument("value", metavar="VALUE", type=float)
    feedback.add_argument(
        "--segment", action="append", default=[], metavar="NAME=VALUE", help="segment attribute (repeatable)"
    )
    feedback.set_defaults(run=_feedback)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The admin API's experiment spec from `experiment start` options."""
    arms = _split(args.arms)
    spec: dict[str, Any] = {
        "arms": arms,
        "metric": {"name": args.metric, "kind": args.kind, "higher_is_better": not args.lower_is_better},
        "mde": args.mde,
        "alpha": args.alpha,
        "power": args.power,
        "policy": args.policy,
    }
    if args.weights:
        try:
            weights = [float(w) for w in _split(args.weights)]
        except ValueError:
            raise ClientError(f"--weights must be numbers, got {args.weights!r}") from None
        if len(weights) != len(arms):
            raise ClientError(f"--weights gives {len(weights)} weights for {len(arms)} arms")
        spec["arms"] = [{"version": v, "weight": w} for v, w in zip(arms, weights, strict=True)]
    if args.segments:
        spec["segments"] = _split(args.segments)
    if args.auto_stop:
        spec["auto_stop"] = True
    if args.on_win:
        spec["on_win"] = args.on_win
    if args.on_win_plan:
        if args.on_win != "rollout":
            raise ClientError("--on-win-plan needs --on-win rollout")
        from modelserve.cli_rollout import read_plan

        spec["on_win_plan"] = read_plan(args.on_win_plan)  # read here: the server may not see this file
    if args.max_duration is not None:
        spec["max_duration_s"] = args.max_duration
    options = {
        key: getattr(args, key)
        for key in ("floor", "epsilon", "epsilon_decay", "min_outcomes", "reweight_every", "cooldown_s")
        if getattr(args, key) is not None
    }
    if options:
        spec["bandit"] = options
    return spec


def _start(args: argparse.Namespace) -> int:
    data = admin_call(args, "POST", f"/admin/models/{args.model}/experiment", spec_from_args(args))
    experiment = data["experiment"]
    arms = ", ".join(f"{a['version']} {a['weight'] * 100:g}%" for a in experiment["spec"]["arms"])
    lines = [f"{args.model}: experiment {experiment['id']} started ({experiment['spec']['policy']}): {arms}"]
    lines += [f"warning: {warning}" for warning in data.get("warnings", [])]
    return show(args, data, lambda: "\n".join(lines))


def _size(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from modelserve.experiments.sizing import plan

    daily = args.daily_users
    if daily is None:
        daily = _daily_requests(admin_call(args, "GET", f"/admin/models/{args.model}"))
    try:
        sized = plan(
            kind=args.kind, baseline=args.baseline, mde_relative=args.mde, alpha=args.alpha,
            power=args.power, arms=args.arms, sd=args.sd, daily_users=daily,
        )  # fmt: skip
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    return show(args, asdict(sized), lambda: f"{args.model}: {sized.describe()}")


def _daily_requests(status: dict[str, Any]) -> float | None:
    """Requests a day at the rate of the last status window (primary requests of every version)."""
    rows = [row for row in status.get("metrics") or [] if row.get("role") == "primary"]
    requests = sum(row["requests"] for row in rows)
    window = max((row.get("window_s") or 0 for row in rows), default=0)
    return requests * 86_400 / window if requests and window else None


def render_report(data: dict[str, Any]) -> str:
    """The experiment report as text: heading, the statistics table, the feedback counters."""
    experiment = data["experiment"]
    feedback = data["feedback"]
    return (
        f"experiment {experiment['id']} ({experiment['state']})\n{data['table']}"
        f"feedback: {feedback['unknown_outcomes']:,} unknown, {feedback['duplicate_outcomes']:,} duplicate, "
        f"{feedback['pending']:,} pending"
    )


def _report(args: argparse.Namespace) -> int:
    data = admin_call(args, "GET", f"/admin/models/{args.model}/experiment")
    return show(args, data, lambda: render_report(data))


def _stop(args: argparse.Namespace) -> int:
    data = admin_call(args, "POST", f"/admin/models/{args.model}/experiment/stop")
    return show(args, data, lambda: render_report(data))


def _feedback(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"request_id": args.request_id, "value": args.value}
    if args.segment:
        segments = {}
        for item in args.segment:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ClientError(f"--segment expects NAME=VALUE, got {item!r}")
            segments[name] = value
        body["segments"] = segments
    data = admin_call(args, "POST", f"/v2/models/{args.model}/feedback", body)
    show(args, data, lambda: json.dumps({k: data[k] for k in ("accepted", "unknown", "duplicate")}))
    return 0 if data["accepted"] else 1
