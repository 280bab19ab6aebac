"""`modelserve rollout start|status|pause|resume|abort|promote MODEL ...` (admin API clients).

modelserve rollout start credit 2 --plan default --time-scale 0.1
modelserve rollout start credit 2 --plan examples/plans/fast.toml
modelserve rollout status credit          # state, stage, gates and the timeline with their numbers
modelserve rollout plan --show default    # the default plan as TOML: a template for a plan file
modelserve rollout pause|resume|abort|promote credit
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from modelserve.cli import ClientError, admin_call, client_parser, show
from modelserve.errors import ConfigError
from modelserve.rollout.events import (
    events_from_log,
    format_gate,
    format_history,
    format_timeline,
    split_rollouts,
)
from modelserve.rollout.gates import GateResult
from modelserve.rollout.plan import plan_from_dict


def register(commands: Any) -> None:
    """Add the rollout commands to the `modelserve` parser."""
    rollout = commands.add_parser(
        "rollout",
        help="progressive rollout: shadow -> canary stages -> promote, gated, with automatic rollback",
        description="Run a rollout plan for a model's candidate version on a running server.",
    )
    actions = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    start = client_parser(actions, "start", "stage VERSION if needed and start rolling it out")
    start.add_argument("model")
    start.add_argument("version")
    start.add_argument(
        "--plan",
        default="default",
        help="'default', a TOML plan file, or a plan name in examples/plans/ (default: default)",
    )
    start.add_argument(
        "--time-scale", type=float, help="multiply every duration of the plan, e.g. 0.1 for a demo"
    )
    start.set_defaults(run=_start)

    plan = actions.add_parser(
        "plan",
        help="print a rollout plan as TOML (the default plan, or a plan file checked and normalised)",
        description="Print a rollout plan in the TOML plan format: a template for your own plan file.",
    )
    plan.add_argument("--show", default="default", metavar="default|FILE", help="the plan to print")
    plan.set_defaults(run=_plan)

    status = client_parser(actions, "status", "the rollout's state, gates and timeline with their numbers")
    status.add_argument("model")
    status.add_argument("--no-gates", action="store_true", help="timeline without each gate's numbers")
    status.set_defaults(run=_status)

    for action, text in (
        ("pause", "stop advancing (gates keep being evaluated; a failure still rolls back)"),
        ("resume", "resume a paused rollout"),
        ("abort", "stop the rollout; the candidate gets no traffic, the live version is untouched"),
        ("promote", "skip the current stage without its gates (--all: skip every stage)"),
    ):
        sub = client_parser(actions, action, text)
        sub.add_argument("model")
        if action == "promote":
            sub.add_argument("--all", action="store_true", help="skip every remaining stage: promote now")
        sub.set_defaults(run=_command(action))


def _plan(args: argparse.Namespace) -> int:
    from modelserve.errors import ConfigError
    from modelserve.rollout.plan import load_plan
    from modelserve.rollout.plan_toml import plan_to_toml

    try:
        plan = load_plan(args.show)
    except ConfigError as exc:
        raise ClientError(str(exc)) from None
    print(plan_to_toml(plan), end="")
    return 0


#: Where a plan named without a path is looked for (`--plan fast`), relative to the current folder.
PLANS_DIR = Path("examples") / "plans"


def read_plan(source: str) -> str | dict[str, Any]:
    """`default`, or the TOML plan file read here (the server may not see this machine's files); a bare
    name that is no file is looked for as `examples/plans/<name>.toml`."""
    if source == "default":
        return source
    path = Path(source)
    if not path.exists() and path.name == source and (PLANS_DIR / f"{source}.toml").exists():
        path = PLANS_DIR / f"{source}.toml"
    try:
        plan = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClientError(f"cannot read plan {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClientError(f"plan {path} is not valid TOML: {exc}") from None
    plan.setdefault("name", path.stem)
    try:  # checked here too: the message names the file, and TOML's inf/nan never reach JSON
        plan_from_dict(plan, where=str(path))
    except ConfigError as exc:
        raise ClientError(str(exc)) from None
    return plan


def _start(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"version": args.version, "plan": read_plan(args.plan)}
    if args.time_scale is not None:
        body["time_scale"] = args.time_scale
    data = admin_call(args, "POST", f"/admin/models/{args.model}/rollout", body)
    return show(args, data, lambda: summary(data))


def _status(args: argparse.Namespace) -> int:
    data = admin_call(args, "GET", f"/admin/models/{args.model}/rollout")
    gates = not args.no_gates

    def render() -> str:
        events = events_from_log(data.get("events", []))
        text = f"{summary(data, gates=gates)}\n\n{format_timeline(events, with_gates=gates)}"
        if len(split_rollouts(events)) > 1:
            text += f"\n\nrollouts of {args.model}, newest first:\n{format_history(events)}"
        return text

    return show(args, data, render)


def _command(action: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        body: dict[str, Any] = {}
        if getattr(args, "reason", None):
            body["reason"] = args.reason
        if getattr(args, "all", False):
            body["all"] = True
        data = admin_call(args, "POST", f"/admin/models/{args.model}/rollout/{action}", body)
        return show(args, data, lambda: summary(data))

    return run


def summary(data: dict[str, Any], *, gates: bool = False) -> str:
    """A few lines about a rollout from the admin API's answer."""
    rollout = data.get("rollout")
    if rollout is None:
        return f"{data.get('model')}: no rollout"
    mode = "shadow" if rollout["shadow"] and not rollout["weight"] else f"{rollout['weight']}% traffic"
    lines = [
        f"{rollout['model']}: rollout of {rollout['candidate']} against {rollout['baseline_version']} "
        f"(plan {rollout['plan']!r}): {rollout['state']}",
        f"  stage {rollout['stage_index'] + 1}/{rollout['stage_count']} {rollout['stage']!r} ({mode}), "
        f"{rollout['stage_elapsed_s']:.1f} s in stage",
    ]
    if rollout.get("reason"):
        lines.append(f"  reason: {rollout['reason']}")
    if gates:
        lines.extend(f"  {format_gate(GateResult(**g))}" for g in rollout.get("gates", []))
    hooks = data.get("webhooks")
    if hooks:
        lines.append(
            f"  webhooks: {hooks['sent']} sent, {hooks['queued']} queued, {hooks['failed']} failed, "
            f"{hooks['dropped']} dropped"
        )
    return "\n".join(lines)
