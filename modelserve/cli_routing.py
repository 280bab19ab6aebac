"""`modelserve canary MODEL PERCENT` and `modelserve policy MODEL KEY=VALUE ...` (admin API clients)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from modelserve.cli import ClientError, admin_call, client_parser, show


def register(commands: Any) -> None:
    canary = client_parser(commands, "canary", "send PERCENT of targeting keys (sticky) to the candidate")
    canary.add_argument("model")
    canary.add_argument("percent", type=float)
    canary.add_argument("--candidate", help="candidate version (default: the staged one)")
    canary.set_defaults(run=_canary)

    policy = client_parser(commands, "policy", "change routing policy fields, e.g. flag=credit-model")
    policy.add_argument("model")
    policy.add_argument(
        "changes", nargs="+", metavar="KEY=VALUE", help="VALUE is JSON when it parses as JSON"
    )
    policy.set_defaults(run=_policy)


def _canary(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"percent": args.percent}
    if args.candidate:
        body["candidate"] = args.candidate
    status = admin_call(args, "POST", f"/admin/models/{args.model}/canary", body)
    policy = status["policy"]
    return show(
        args,
        status,
        lambda: (
            f"{args.model}: {policy['canary_weight']:g}% of targeting keys -> version "
            f"{policy['candidate']} (live {status['live_version']})"
        ),
    )


def _policy(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    for item in args.changes:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ClientError(f"expected KEY=VALUE, got {item!r}")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    status = admin_call(args, "POST", f"/admin/models/{args.model}/policy", changes)
    policy = status["policy"]
    return show(
        args, status, lambda: "\n".join(f"{args.model}: {k} = {json.dumps(v)}" for k, v in policy.items())
    )
