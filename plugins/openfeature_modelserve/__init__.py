"""OpenFeature provider backed by modelserve's compiled flagd evaluator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata

from modelserve.routing.flagd import Evaluation, FlagSet

__all__ = ["ModelServeProvider"]


class _HasFlagSet(Protocol):
    flagset: FlagSet


def _context(evaluation_context: EvaluationContext | None) -> dict[str, Any]:
    if evaluation_context is None:
        return {}
    context = dict(evaluation_context.attributes)
    if evaluation_context.targeting_key is not None:
        context["targetingKey"] = evaluation_context.targeting_key
    return context


def _details(evaluation: Evaluation) -> FlagResolutionDetails[Any]:
    return FlagResolutionDetails(
        value=evaluation.value,
        variant=evaluation.variant,
        reason=Reason(evaluation.reason),
        error_code=ErrorCode(evaluation.error_code) if evaluation.error_code else None,
        error_message=evaluation.error_message,
        flag_metadata=dict(evaluation.flag_metadata),
    )


class ModelServeProvider(AbstractProvider):
    """Resolve OpenFeature flags from a `FlagSet`, or from anything with a current `.flagset`
    (e.g. `modelserve.state.flags.FlagFileSource`, so hot reloads apply immediately)."""

    def __init__(self, flags: FlagSet | _HasFlagSet) -> None:
        super().__init__()
        self._flags = flags

    @property
    def flagset(self) -> FlagSet:
        """The FlagSet evaluated now."""
        return self._flags if isinstance(self._flags, FlagSet) else self._flags.flagset

    def get_metadata(self) -> Metadata:
        return Metadata(name="modelserve")

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return _details(self.flagset.resolve_boolean(flag_key, default_value, _context(evaluation_context)))

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return _details(self.flagset.resolve_string(flag_key, default_value, _context(evaluation_context)))

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return _details(self.flagset.resolve_integer(flag_key, default_value, _context(evaluation_context)))

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return _details(self.flagset.resolve_float(flag_key, default_value, _context(evaluation_context)))

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return _details(self.flagset.resolve_object(flag_key, default_value, _context(evaluation_context)))
