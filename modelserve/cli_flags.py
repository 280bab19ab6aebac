"""`modelserve flags eval`: which variant does a key get? Evaluates a flags file locally.

modelserve flags eval FLAGS.json FLAG_KEY --key K [--context JSON]
modelserve flags eval FLAGS.json FLAG_KEY --keys-from FILE|-      # prints key,variant CSV lines
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from modelserve.errors import ConfigError
from modelserve.routing.flagd import FLAG_NOT_FOUND, FlagSet, load_flagset


def register(subparsers: Any) -> None:
    """Add the `flags` command (with `eval`) to an argparse subparsers object."""
    flags = subparsers.add_parser("flags", help="evaluate flagd flag files locally")
    commands = flags.add_subparsers(dest="flags_command", required=True)
    evaluate = commands.add_parser(
        "eval",
        help="print the variant and reason a flag gives a targeting key",
        description="Evaluate FLAG_KEY from a flagd flag-definition file for one key (--key) or many "
        "(--keys-from, one key per line, '-' for stdin; prints key,variant CSV).",
    )
    evaluate.add_argument("flags_file", metavar="FLAGS.json")
    evaluate.add_argument("flag_key", metavar="FLAG_KEY")
    evaluate.add_argument("--key", help="the targeting key (e.g. the user id)")
    evaluate.add_argument("--context", default="{}", help="extra evaluation context as a JSON object")
    evaluate.add_argument(
        "--keys-from", metavar="FILE", help="file of targeting keys, one a line ('-' = stdin)"
    )
    evaluate.set_defaults(run=run_flags)


def _fail(message: str) -> int:
    print(f"modelserve flags: error: {message}", file=sys.stderr)
    return 2


def run_flags(args: argparse.Namespace) -> int:
    """Run `flags eval`; 0 on success, 2 for a bad file, context, flag key or arguments."""
    if args.key is None and args.keys_from is None:
        return _fail("give --key K or --keys-from FILE")
    try:
        context = json.loads(args.context)
    except ValueError as exc:
        return _fail(f"--context is not valid JSON: {exc}")
    if not isinstance(context, dict):
        return _fail("--context must be a JSON object")
    path = Path(args.flags_file)
    try:
        flagset = load_flagset(path.read_bytes(), source=str(path))
    except OSError as exc:
        return _fail(f"cannot read {path}: {exc.strerror or exc}")
    except ConfigError as exc:
        return _fail(str(exc))
    if args.flag_key not in flagset:
        known = ", ".join(sorted(flagset.flags)) or "none"
        return _fail(f"{FLAG_NOT_FOUND}: flag {args.flag_key!r} is not in {path} (flags: {known})")
    for problem in flagset.problems:
        print(f"modelserve flags: warning: {problem}", file=sys.stderr)
    if args.keys_from is not None:
        return _eval_many(flagset, args.flag_key, context, args.keys_from)
    evaluation = flagset.evaluate(args.flag_key, {**context, "targetingKey": args.key})
    print(f"variant: {evaluation.variant if evaluation.variant is not None else '-'}")
    print(f"reason: {evaluation.reason}")
    print(f"value: {json.dumps(evaluation.value)}")
    if evaluation.error_code is not None:
        print(f"error: {evaluation.error_code}: {evaluation.error_message}")
    return 0


def _eval_many(flagset: FlagSet, flag_key: str, context: dict[str, Any], source: str) -> int:
    if source == "-":
        _write_csv(flagset, flag_key, context, sys.stdin)
        return 0
    try:
        with open(source, encoding="utf-8") as stream:
            _write_csv(flagset, flag_key, context, stream)
    except OSError as exc:
        return _fail(f"cannot read {source}: {exc.strerror or exc}")
    return 0


def _write_csv(flagset: FlagSet, flag_key: str, context: dict[str, Any], lines: TextIO) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    evaluate = flagset.evaluate
    for line in lines:
        key = line.rstrip("\r\n")
        if not key:
            continue
        context["targetingKey"] = key
        variant = evaluate(flag_key, context).variant
        writer.writerow((key, "" if variant is None else variant))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point holding only the `flags` command (``python -m modelserve.cli_flags``)."""
    parser = argparse.ArgumentParser(prog="modelserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
