"""flagd flag definitions, parsed once into an immutable compiled `FlagSet`.

The format is flagd's flag-definition JSON (``flags``, ``$evaluators`` shared via ``{"$ref": name}``,
``metadata`` at flag-set and flag level). Structural problems raise `ConfigError` at load time. A
targeting rule that cannot be compiled (unknown operator, ``$ref`` to a missing evaluator) does not
reject the file, as in flagd: the flag evaluates to reason ERROR / PARSE_ERROR and the problem is
listed in `FlagSet.problems` (``strict=True`` turns it into a `ConfigError`).

Every flag's targeting is bounded in cost at load time: after ``$ref`` expansion it may nest at most
`MAX_RULE_DEPTH` levels and hold at most `MAX_RULE_NODES` JSON values (a fractional's buckets
included), else the file is refused with a `ConfigError` naming the flag. Expansion stops as soon as
the budget is spent, so exponential ``$ref`` chains cost nothing, and evaluation per request is bounded.

`FlagSet.evaluate` never raises. Reasons follow OpenFeature: STATIC (no targeting), TARGETING_MATCH,
SPLIT (the rule's outermost operator is `fractional`, a pseudorandom split; flagd itself reports
TARGETING_MATCH there), DEFAULT (the rule returned null), DISABLED and ERROR with an error code.
Evaluations that do not involve the caller's default value are built once, at load time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from modelserve.errors import ConfigError
from modelserve.routing.jsonlogic import CompiledRule, JsonLogicError, compile_rule
from modelserve.routing.jsvalues import to_string

STATIC, TARGETING_MATCH, SPLIT, DEFAULT, DISABLED, ERROR = (
    "STATIC",
    "TARGETING_MATCH",
    "SPLIT",
    "DEFAULT",
    "DISABLED",
    "ERROR",
)
FLAG_NOT_FOUND, PARSE_ERROR, TYPE_MISMATCH, GENERAL = (
    "FLAG_NOT_FOUND",
    "PARSE_ERROR",
    "TYPE_MISMATCH",
    "GENERAL",
)

#: Limits on one flag's targeting rule after `$ref` expansion (nesting levels, JSON values).
MAX_RULE_DEPTH = 64
MAX_RULE_NODES = 5_000
#: Flag files larger than this are refused.
MAX_FILE_BYTES = 4 * 1024 * 1024

Metadata = Mapping[str, str | int | float | bool]
_NO_METADATA: Metadata = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """The outcome of evaluating one flag for one context."""

    flag_key: str
    value: Any
    variant: str | None
    reason: str
    error_code: str | None = None
    error_message: str | None = None
    flag_metadata: Metadata = field(default_factory=lambda: _NO_METADATA)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledFlag:
    """One flag, compiled. `matches` holds the prebuilt evaluation of each variant."""

    key: str
    enabled: bool
    variants: Mapping[str, Any]
    default_variant: str | None
    rule: CompiledRule | None
    rule_error: str | None
    metadata: Metadata
    matches: Mapping[str, Evaluation]
    static: Evaluation | None
    fallback: Evaluation | None


class FlagSet:
    """An immutable set of compiled flags. Swap a whole FlagSet to change flags."""

    __slots__ = ("flags", "metadata", "problems", "source")

    def __init__(
        self, flags: Mapping[str, CompiledFlag], *, metadata: Metadata, problems: tuple[str, ...], source: str
    ) -> None:
        self.flags: Mapping[str, CompiledFlag] = MappingProxyType(dict(flags))
        self.metadata = metadata
        self.problems = problems
        self.source = source

    def __contains__(self, flag_key: object) -> bool:
        return flag_key in self.flags

    def cacheable(self, flag_key: str) -> bool:
        """Whether evaluations of `flag_key` depend only on the context (not on the clock)."""
        flag = self.flags.get(flag_key)
        return flag is None or flag.rule is None or not flag.rule.time_dependent

    def evaluate(
        self, flag_key: str, context: Mapping[str, Any] | None = None, *, default: Any = None
    ) -> Evaluation:
        """Evaluate `flag_key` for `context` (which holds ``targetingKey`` if there is one).

        `default` is the value reported when no variant applies (disabled flag, no default
        variant, errors). Never raises.
        """
        flag = self.flags.get(flag_key)
        if flag is None:
            return Evaluation(
                flag_key=flag_key,
                value=default,
                variant=None,
                reason=ERROR,
                error_code=FLAG_NOT_FOUND,
                error_message=f"flag {flag_key!r} not found in {self.source}",
            )
        if not flag.enabled:
            return _with_default(flag, DISABLED, default)
        rule = flag.rule
        if rule is None:
            if flag.rule_error is not None:
                return _error(flag, PARSE_ERROR, flag.rule_error, default)
            return flag.static or _with_default(flag, DEFAULT, default)
        try:
            result = rule.fn({} if context is None else context)
        except Exception as exc:  # a rule must never take the request down
            return _error(flag, GENERAL, f"targeting failed: {type(exc).__name__}: {exc}", default)
        if result is None:
            return flag.fallback or _with_default(flag, DEFAULT, default)
        if type(result) is not str:
            result = to_string(result)
        match = flag.matches.get(result)
        if match is None:
            known = ", ".join(sorted(flag.variants))
            message = f"targeting returned variant {result!r}, which is not one of: {known}"
            return _error(flag, GENERAL, message, default)
        return match

    # ---- typed resolution (OpenFeature style) ---------------------------------------------
    def resolve_boolean(
        self, flag_key: str, default: bool, context: Mapping[str, Any] | None = None
    ) -> Evaluation:
        """Evaluate expecting a boolean; TYPE_MISMATCH if the variant's value is not one."""
        return _typed(self.evaluate(flag_key, context, default=default), default, _is_bool, "boolean")

    def resolve_string(
        self, flag_key: str, default: str, context: Mapping[str, Any] | None = None
    ) -> Evaluation:
        """Evaluate expecting a string."""
        return _typed(self.evaluate(flag_key, context, default=default), default, _is_str, "string")

    def resolve_integer(
        self, flag_key: str, default: int, context: Mapping[str, Any] | None = None
    ) -> Evaluation:
        """Evaluate expecting an integer (booleans are not integers)."""
        return _typed(self.evaluate(flag_key, context, default=default), default, _is_int, "integer")

    def resolve_float(
        self, flag_key: str, default: float, context: Mapping[str, Any] | None = None
    ) -> Evaluation:
        """Evaluate expecting a number; integers are returned as floats."""
        evaluation = _typed(self.evaluate(flag_key, context, default=default), default, _is_number, "float")
        if type(evaluation.value) is int:
            return _replace_value(evaluation, float(evaluation.value))
        return evaluation

    def resolve_object(
        self, flag_key: str, default: Any, context: Mapping[str, Any] | None = None
    ) -> Evaluation:
        """Evaluate expecting a JSON object or array."""
        return _typed(self.evaluate(flag_key, context, default=default), default, _is_object, "object")


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _is_str(value: Any) -> bool:
    return type(value) is str


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_object(value: Any) -> bool:
    return isinstance(value, (Mapping, list))


def _typed(evaluation: Evaluation, default: Any, check: Any, type_name: str) -> Evaluation:
    if evaluation.variant is None or check(evaluation.value):
        return evaluation
    return Evaluation(
        flag_key=evaluation.flag_key,
        value=default,
        variant=None,
        reason=ERROR,
        error_code=TYPE_MISMATCH,
        error_message=f"flag {evaluation.flag_key!r} variant {evaluation.variant!r} is not a {type_name}",
        flag_metadata=evaluation.flag_metadata,
    )


def _replace_value(evaluation: Evaluation, value: Any) -> Evaluation:
    return Evaluation(
        flag_key=evaluation.flag_key,
        value=value,
        variant=evaluation.variant,
        reason=evaluation.reason,
        error_code=evaluation.error_code,
        error_message=evaluation.error_message,
        flag_metadata=evaluation.flag_metadata,
    )


def _with_default(flag: CompiledFlag, reason: str, default: Any) -> Evaluation:
    return Evaluation(
        flag_key=flag.key, value=default, variant=None, reason=reason, flag_metadata=flag.metadata
    )


def _error(flag: CompiledFlag, code: str, message: str, default: Any) -> Evaluation:
    return Evaluation(
        flag_key=flag.key,
        value=default,
        variant=None,
        reason=ERROR,
        error_code=code,
        error_message=f"flag {flag.key!r}: {message}",
        flag_metadata=flag.metadata,
    )


# ---- parsing ------------------------------------------------------------------------------


def load_flagset(text: str | bytes, *, source: str = "<flags>", strict: bool = False) -> FlagSet:
    """Parse flagd flag-definition JSON text. Raises `ConfigError` naming `source` on any problem."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: {len(text)} bytes; a flags file may hold at most {MAX_FILE_BYTES}")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to parse") from None
    return parse_flagset(data, source=source, strict=strict)


def parse_flagset(data: Any, *, source: str = "<flags>", strict: bool = False) -> FlagSet:
    """Compile a parsed flag-definition document into a `FlagSet`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a flag definition file must hold a JSON object")
    raw_flags = data.get("flags")
    if not isinstance(raw_flags, dict):
        raise ConfigError(f"{source}: missing a 'flags' object")
    evaluators = data.get("$evaluators") or {}
    if not isinstance(evaluators, dict):
        raise ConfigError(f"{source}: '$evaluators' must be an object")
    metadata = set_metadata(data.get("metadata"), source)
    flags: dict[str, CompiledFlag] = {}
    problems: list[str] = []
    for key, spec in raw_flags.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: flag {key!r} must be an object")
        budget = _Budget(f"{source}: flag {key!r}")
        spec = dict(spec, targeting=_resolve_refs(spec.get("targeting"), evaluators, (), budget, 0))
        flag = compile_flag(key, spec, set_metadata=metadata, source=source)
        if flag.rule_error is not None:
            problems.append(f"flag {key!r}: {flag.rule_error}")
        flags[key] = flag
    if strict and problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return FlagSet(flags, metadata=metadata, problems=tuple(problems), source=source)


class _Budget:
    """What one flag's targeting may still hold; `spend` raises ConfigError once it is exceeded."""

    __slots__ = ("left", "where")

    def __init__(self, where: str) -> None:
        self.where = where
        self.left = MAX_RULE_NODES

    def spend(self, depth: int) -> None:
        if depth > MAX_RULE_DEPTH:
            raise ConfigError(
                f"{self.where}: targeting nests more than {MAX_RULE_DEPTH} levels deep (after $ref expansion)"
            )
        self.left -= 1
        if self.left < 0:
            raise ConfigError(
                f"{self.where}: targeting holds more than {MAX_RULE_NODES} values (after $ref expansion); "
                "split it or simplify it"
            )


def _resolve_refs(
    node: Any, evaluators: Mapping[str, Any], seen: tuple[str, ...], budget: _Budget, depth: int
) -> Any:
    """Replace every ``{"$ref": name}`` by the named evaluator, within `budget`; unknown names stay
    (and fail to compile, so the flag reports PARSE_ERROR)."""
    budget.spend(depth)
    if isinstance(node, list):
        return [_resolve_refs(item, evaluators, seen, budget, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1 and "$ref" in node:
        name = node["$ref"]
        if isinstance(name, str) and name in evaluators:
            if name in seen:
                raise ConfigError(f"$evaluators: {name!r} refers to itself through {' -> '.join(seen)}")
            return _resolve_refs(evaluators[name], evaluators, (*seen, name), budget, depth)
        return node
    return {key: _resolve_refs(value, evaluators, seen, budget, depth + 1) for key, value in node.items()}


def compile_flag(key: str, spec: Mapping[str, Any], *, set_metadata: Metadata, source: str) -> CompiledFlag:
    """Compile one flag definition (``$ref`` already resolved). Raises `ConfigError` if malformed."""
    where = f"{source}: flag {key!r}"
    state = spec.get("state")
    if state not in ("ENABLED", "DISABLED"):
        raise ConfigError(f'{where}: \'state\' must be "ENABLED" or "DISABLED", got {state!r}')
    variants = spec.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{where}: 'variants' must be a non-empty object")
    for name, value in variants.items():
        if value is None:
            raise ConfigError(f"{where}: variant {name!r} has a null value")
    default_variant = spec.get("defaultVariant")
    if isinstance(default_variant, bool):
        default_variant = "true" if default_variant else "false"
    if default_variant == "":
        default_variant = None
    if default_variant is not None and (
        not isinstance(default_variant, str) or default_variant not in variants
    ):
        raise ConfigError(f"{where}: defaultVariant {default_variant!r} is not one of its variants")
    metadata = _metadata({**set_metadata, **_check_metadata(spec.get("metadata"), where)})
    targeting = spec.get("targeting")
    if targeting is not None and not isinstance(targeting, dict):
        raise ConfigError(f"{where}: 'targeting' must be a JsonLogic object")
    rule: CompiledRule | None = None
    rule_error: str | None = None
    if targeting:
        try:
            rule = compile_rule(targeting, flag_key=key)
        except (JsonLogicError, RecursionError) as exc:
            rule_error = f"invalid targeting: {exc}"
    reason = SPLIT if rule is not None and rule.root_op == "fractional" else TARGETING_MATCH
    matches = {
        name: Evaluation(flag_key=key, value=value, variant=name, reason=reason, flag_metadata=metadata)
        for name, value in variants.items()
    }

    def prebuilt(reason: str) -> Evaluation | None:
        if default_variant is None:
            return None
        value = variants[default_variant]
        return Evaluation(
            flag_key=key, value=value, variant=default_variant, reason=reason, flag_metadata=metadata
        )

    return CompiledFlag(
        key=key,
        enabled=state == "ENABLED",
        variants=MappingProxyType(dict(variants)),
        default_variant=default_variant,
        rule=rule,
        rule_error=rule_error,
        metadata=metadata,
        matches=MappingProxyType(matches),
        static=prebuilt(STATIC),
        fallback=prebuilt(DEFAULT),
    )


def _check_metadata(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'metadata' must be an object")
    for name, value in raw.items():
        if not name or not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"{where}: metadata {name!r} must be a string, number or boolean")
    return raw


def _metadata(values: Mapping[str, Any]) -> Metadata:
    return MappingProxyType(dict(values)) if values else _NO_METADATA


def set_metadata(raw: Any, source: str) -> Metadata:
    """Validated flag-set level metadata."""
    return _metadata(_check_metadata(raw, source))
