"""`modelserve history [MODEL]`: the audit log — what changed, when, by whom and why (read token).

modelserve history credit              # the newest 20 changes of credit, oldest first
modelserve history --limit 100 --json  # every model's, as the server answers
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from modelserve.cli import admin_call, client_parser, show


def register(commands: Any) -> None:
    """Add the `history` command to the `modelserve` parser."""
    history = client_parser(
        commands, "history", "the audit log: every change with its time, actor, reason, before and after"
    )
    history.add_argument("model", nargs="?", help="one model (default: every model)")
    history.add_argument("--limit", type=int, default=20, help="how many of the newest entries (default 20)")
    history.set_defaults(run=_history)


def _history(args: argparse.Namespace) -> int:
    path = f"/admin/models/{args.model}/history" if args.model else "/admin/history"
    data = admin_call(args, "GET", f"{path}?limit={args.limit}")
    return show(args, data, lambda: render_history(data.get("entries", [])))


def render_history(entries: list[dict[str, Any]]) -> str:
    """One line per entry (UTC time, model, action, actor and reason), the changed fields below it."""
    if not entries:
        return "(no changes recorded)"
    lines = []
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(entry["time"])))
        actor = entry["actor"] + (f" ({entry['reason']})" if entry.get("reason") else "")
        lines.append(f"{when} UTC  {entry['model']:<12} {entry['action']:<16} by {actor}")
        before, after = entry.get("before") or {}, entry.get("after") or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key) and before:
                lines.append(f"{'':26}{key}: {_value(before.get(key))} -> {_value(after.get(key))}")
        if entry.get("detail"):
            lines.append(f"{'':26}{entry['detail']}")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
