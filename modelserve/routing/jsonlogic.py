"""JsonLogic compiled once into Python closures, with flagd's operators.

`compile_rule(rule, flag_key=...)` walks the rule once, at load time, and returns a function of the
data (the evaluation context). Nothing is interpreted per evaluation: operators are bound, constant
sub-trees are folded, `var` paths are split, and `fractional` bucket tables and the flag key's part
of the hash are precomputed. An unknown operator raises `JsonLogicError` at compile time.

Semantics follow json-logic-js as flagd uses it: truthiness (`0`, `""`, `[]`, `null`, NaN are false;
objects are true), loose `==` with JS coercions, `and`/`or` returning operands, `var` with dotted
paths and defaults, plus flagd's `fractional` (see `hashing`), `sem_ver`, `starts_with`,
`ends_with`, and the context values ``$flagd.flagKey`` / ``$flagd.timestamp`` (unix seconds).
Operators fed bad input return null rather than raising, so a flag falls back to its default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelserve.routing import jsvalues as js
from modelserve.routing.fractional import compile_fractional
from modelserve.routing.jsvalues import Const as _Const
from modelserve.routing.jsvalues import Node, Rule
from modelserve.routing.jsvalues import as_fn as _fn
from modelserve.routing.semver import compare as semver_compare
from modelserve.routing.semver import parse_version


class JsonLogicError(ValueError):
    """A rule cannot be compiled (unknown operator, malformed arguments)."""


def compile_rule(rule: Any, *, flag_key: str | None = None) -> CompiledRule:
    """Compile a JsonLogic `rule` for the flag `flag_key` (used by ``$flagd.flagKey`` and shorthand
    `fractional`). Raises `JsonLogicError` for unknown operators."""
    compiler = _Compiler(flag_key)
    node = compiler.compile(rule, top=True)
    return CompiledRule(fn=_fn(node), root_op=_root_op(rule), time_dependent=compiler.time_dependent)


def _root_op(rule: Any) -> str | None:
    return next(iter(rule)) if isinstance(rule, dict) and len(rule) == 1 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledRule:
    """A compiled rule: `fn(data)` evaluates it. `time_dependent` rules read ``$flagd.timestamp``
    (their results must not be cached); `root_op` is the outermost operator, if any."""

    fn: Rule
    root_op: str | None
    time_dependent: bool


# Operators whose result is already a Python bool or None: Python truthiness equals JSON's there.
_BOOLISH = frozenset(
    {"==", "===", "!=", "!==", "<", "<=", ">", ">=", "!", "!!", "in", "starts_with", "ends_with", "sem_ver"}
)


class _Compiler:
    def __init__(self, flag_key: str | None) -> None:
        self.flag_key = flag_key
        self.time_dependent = False

    # ---- dispatch -------------------------------------------------------------------------
    def compile(self, rule: Any, *, top: bool) -> Node:
        if isinstance(rule, list):
            items = [self.compile(item, top=top) for item in rule]
            if all(isinstance(item, _Const) for item in items):
                return _Const([item.value for item in items])  # type: ignore[union-attr]
            fns = [_fn(item) for item in items]
            return lambda d: [f(d) for f in fns]
        if not isinstance(rule, dict) or len(rule) != 1:
            return _Const(rule)
        op, args = next(iter(rule.items()))
        if not isinstance(args, list):
            args = [args]
        special = _SPECIAL.get(op)
        if special is not None:
            return special(self, args, top)
        pure = _PURE.get(op)
        if pure is None:
            if op == "$ref":
                raise JsonLogicError(f"unknown evaluator $ref {args[0]!r}")
            raise JsonLogicError(f"unknown operator {op!r}")
        nodes = [self.compile(arg, top=top) for arg in args]
        if all(isinstance(n, _Const) for n in nodes):
            try:
                return _Const(pure(*[n.value for n in nodes]))  # type: ignore[union-attr]
            except Exception:
                pass
        fns = [_fn(n) for n in nodes]
        if len(fns) == 1:
            (f0,) = fns
            return lambda d: pure(f0(d))
        if len(fns) == 2:
            f0, f1 = fns
            return lambda d: pure(f0(d), f1(d))
        return lambda d: pure(*[f(d) for f in fns])

    def condition(self, rule: Any, top: bool) -> tuple[Node, bool]:
        """A compiled condition and whether its result may be tested with Python's `if`."""
        return self.compile(rule, top=top), _root_op(rule) in _BOOLISH

    # ---- control flow ---------------------------------------------------------------------
    def op_if(self, args: list[Any], top: bool) -> Node:
        if not args:
            return _Const(None)
        pairs = []
        for index in range(0, len(args) - 1, 2):
            cond, boolish = self.condition(args[index], top)
            pairs.append((cond, boolish, self.compile(args[index + 1], top=top)))
        otherwise = self.compile(args[-1], top=top) if len(args) % 2 else _Const(None)
        # Fold constant conditions away.
        live: list[tuple[Rule, bool, Rule]] = []
        for cond, boolish, then in pairs:
            if isinstance(cond, _Const):
                if js.truthy(cond.value):
                    otherwise = then
                    break
                continue
            live.append((cond, boolish, _fn(then)))
        if not live:
            return otherwise
        tail = _fn(otherwise)
        if len(live) == 1:
            c, boolish, t = live[0]
            if boolish:
                return lambda d: t(d) if c(d) else tail(d)
            truthy = js.truthy
            return lambda d: t(d) if truthy(c(d)) else tail(d)
        truthy = js.truthy

        def chain(d: Any) -> Any:
            for c, _, t in live:
                if truthy(c(d)):
                    return t(d)
            return tail(d)

        return chain

    def op_and(self, args: list[Any], top: bool) -> Node:
        fns = [_fn(self.compile(arg, top=top)) for arg in args]
        truthy = js.truthy

        def all_of(d: Any) -> Any:
            value = None
            for f in fns:
                value = f(d)
                if not truthy(value):
                    return value
            return value

        return all_of

    def op_or(self, args: list[Any], top: bool) -> Node:
        fns = [_fn(self.compile(arg, top=top)) for arg in args]
        truthy = js.truthy

        def any_of(d: Any) -> Any:
            value = None
            for f in fns:
                value = f(d)
                if truthy(value):
                    return value
            return value

        return any_of

    # ---- data access ----------------------------------------------------------------------
    def op_var(self, args: list[Any], top: bool) -> Node:
        key_node = self.compile(args[0], top=top) if args else _Const(None)
        default_node = self.compile(args[1], top=top) if len(args) > 1 else _Const(None)
        default_fn = _fn(default_node)
        if not isinstance(key_node, _Const):
            key_fn = key_node
            if top:
                self.time_dependent = True  # a computed key may name $flagd.timestamp
                flag_key = self.flag_key
                return lambda d: js.lookup(_with_flagd(d, flag_key), key_fn(d), default_fn(d))
            return lambda d: js.lookup(d, key_fn(d), default_fn(d))
        key = key_node.value
        if top and isinstance(key, str) and key.startswith("$flagd"):
            return self._flagd_var(key, default_fn)
        if not isinstance(key, str) or key == "" or "." in key:
            return lambda d: js.lookup(d, key, default_fn(d))
        default = default_node.value if isinstance(default_node, _Const) else None
        if isinstance(default_node, _Const):

            def get_plain(d: Any) -> Any:
                value = d.get(key) if type(d) is dict else js.lookup(d, key, None)
                return default if value is None else value

            return get_plain

        def get_with_default(d: Any) -> Any:
            value = d.get(key) if type(d) is dict else js.lookup(d, key, None)
            return default_fn(d) if value is None else value

        return get_with_default

    def _flagd_var(self, key: str, default_fn: Rule) -> Node:
        if key == "$flagd.flagKey":
            return _Const(self.flag_key) if self.flag_key is not None else default_fn
        if key == "$flagd.timestamp":
            self.time_dependent = True
            return lambda _d: int(time.time())
        self.time_dependent = True
        flag_key = self.flag_key
        return lambda d: js.lookup(_with_flagd(d, flag_key), key, default_fn(d))

    def op_missing(self, args: list[Any], top: bool) -> Node:
        fn = _fn(self.compile(args, top=top))
        return lambda d: js.missing(d, fn(d))

    def op_missing_some(self, args: list[Any], top: bool) -> Node:
        fn = _fn(self.compile(args, top=top))
        return lambda d: js.missing_some(d, fn(d))

    # ---- arrays ---------------------------------------------------------------------------
    def _array_op(self, args: list[Any], top: bool) -> tuple[Rule, Rule]:
        items = _fn(self.compile(args[0], top=top)) if args else (lambda _d: None)
        sub = _fn(self.compile(args[1], top=False)) if len(args) > 1 else (lambda _d: None)
        return items, sub

    def op_map(self, args: list[Any], top: bool) -> Node:
        items, sub = self._array_op(args, top)
        return lambda d: [sub(x) for x in v] if isinstance(v := items(d), list) else []

    def op_filter(self, args: list[Any], top: bool) -> Node:
        items, sub = self._array_op(args, top)
        truthy = js.truthy
        return lambda d: [x for x in v if truthy(sub(x))] if isinstance(v := items(d), list) else []

    def op_all(self, args: list[Any], top: bool) -> Node:
        items, sub = self._array_op(args, top)
        truthy = js.truthy
        return lambda d: (
            bool(v) and all(truthy(sub(x)) for x in v) if isinstance(v := items(d), list) else False
        )

    def op_some(self, args: list[Any], top: bool) -> Node:
        items, sub = self._array_op(args, top)
        truthy = js.truthy
        return lambda d: any(truthy(sub(x)) for x in v) if isinstance(v := items(d), list) else False

    def op_none(self, args: list[Any], top: bool) -> Node:
        items, sub = self._array_op(args, top)
        truthy = js.truthy
        return lambda d: not any(truthy(sub(x)) for x in v) if isinstance(v := items(d), list) else True

    def op_reduce(self, args: list[Any], top: bool) -> Node:
        items, sub = self._array_op(args, top)
        initial = _fn(self.compile(args[2], top=top)) if len(args) > 2 else (lambda _d: None)

        def reduce(d: Any) -> Any:
            values, accumulator = items(d), initial(d)
            if not isinstance(values, list):
                return accumulator
            for value in values:
                accumulator = sub({"current": value, "accumulator": accumulator})
            return accumulator

        return reduce

    # ---- flagd operators ------------------------------------------------------------------
    def op_fractional(self, args: list[Any], top: bool) -> Node:
        return compile_fractional(lambda rule: self.compile(rule, top=top), args, self.flag_key)

    def op_sem_ver(self, args: list[Any], top: bool) -> Node:
        if len(args) != 3:
            return _Const(None)
        left, op, right = (_fn(self.compile(arg, top=top)) for arg in args)
        return lambda d: _sem_ver(left(d), op(d), right(d))

    def op_starts_with(self, args: list[Any], top: bool) -> Node:
        return self._string_test(args, top, str.startswith)

    def op_ends_with(self, args: list[Any], top: bool) -> Node:
        return self._string_test(args, top, str.endswith)

    def _string_test(self, args: list[Any], top: bool, test: Callable[[str, str], bool]) -> Node:
        if len(args) != 2:
            return _Const(None)
        left, right = (_fn(self.compile(arg, top=top)) for arg in args)

        def string_test(d: Any) -> bool | None:
            a, b = left(d), right(d)
            return test(a, b) if type(a) is str and type(b) is str else None

        return string_test


def _sem_ver(left: Any, op: Any, right: Any) -> bool | None:
    a, b = parse_version(left), parse_version(right)
    if a is None or b is None or not isinstance(op, str):
        return None
    return semver_compare(a, b, op)


def _with_flagd(data: Any, flag_key: str | None) -> dict[str, Any]:
    merged = dict(data) if isinstance(data, Mapping) else {}
    merged["$flagd"] = {"flagKey": flag_key, "timestamp": int(time.time())}
    return merged


_SPECIAL: dict[str, Callable[[_Compiler, list[Any], bool], Node]] = {
    "if": _Compiler.op_if,
    "?:": _Compiler.op_if,
    "and": _Compiler.op_and,
    "or": _Compiler.op_or,
    "var": _Compiler.op_var,
    "missing": _Compiler.op_missing,
    "missing_some": _Compiler.op_missing_some,
    "map": _Compiler.op_map,
    "filter": _Compiler.op_filter,
    "all": _Compiler.op_all,
    "some": _Compiler.op_some,
    "none": _Compiler.op_none,
    "reduce": _Compiler.op_reduce,
    "fractional": _Compiler.op_fractional,
    "sem_ver": _Compiler.op_sem_ver,
    "starts_with": _Compiler.op_starts_with,
    "ends_with": _Compiler.op_ends_with,
}

#: Operators that are pure functions of their evaluated arguments.
_PURE: dict[str, Callable[..., Any]] = js.PURE_OPERATORS

__all__ = ["CompiledRule", "JsonLogicError", "Rule", "compile_rule"]
