"""The pre-promotion check (Argo's prePromotionAnalysis): replay labelled rows through the candidate.

`promote MODEL --check FILE.jsonl` sends labelled rows (the `examples/labelled_traffic.jsonl`
format: `{"input": [...], "label": 1}`, or one key per input name) with the promotion. Before the
switch, every row runs through the live version and the candidate, and the rollout gates judge the
result with the same code as a rollout (`evaluate_gates`):

- `accuracy_vs_live`: the candidate's accuracy may fall below the live version's by at most
  `max(0, floor 0.02)` (the relative accuracy gate of a plan);
- `error_rate_absolute`: at most 1 % of the rows may fail in the candidate.

The promotion goes ahead only when every gate passes; a failing or inconclusive check (fewer than
`MIN_ROWS` rows) answers 409 with the numbers, unless forced. A row is predicted right when the
version's `label` output (or else the argmax of its first output) equals the row's label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserve.errors import ModelServeError, RequestError
from modelserve.rollout.gates import FAIL, PASS, GateResult, OutcomeEvidence, evaluate_gates
from modelserve.rollout.plan import GateSpec, Stage
from modelserve.rollout.sample import Sample
from modelserve.serving.runtime import LoadedVersion

MIN_ROWS = 100
MAX_ROWS = 10_000
#: The gates of the check (the accuracy floor as in a plan's relative accuracy gate).
CHECK_STAGE = Stage(
    name="pre-promotion",
    min_samples=MIN_ROWS,
    min_duration_s=0.0,
    gates=(
        GateSpec(name="accuracy_vs_live", metric="accuracy", mode="relative", threshold=1.0, floor=0.02),
        GateSpec(name="error_rate_absolute", metric="error_rate", mode="absolute", threshold=0.01),
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The check's verdict (`pass` only when every gate passed) and each gate's evidence."""

    version: str
    live_version: str
    rows: int
    verdict: str
    accuracy: float
    live_accuracy: float
    errors: int
    gates: tuple[GateResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "live_version": self.live_version,
            "rows": self.rows,
            "verdict": self.verdict,
            "accuracy": self.accuracy,
            "live_accuracy": self.live_accuracy,
            "errors": self.errors,
            "gates": [gate.to_dict() for gate in self.gates],
        }

    def summary(self) -> str:
        gates = "; ".join(f"{g.gate}: {g.verdict} ({g.detail})" for g in self.gates)
        return (
            f"pre-promotion check of {self.version} on {self.rows} labelled rows: {self.verdict} "
            f"(accuracy {self.accuracy:.4f} vs live {self.live_accuracy:.4f}, {self.errors} errors): {gates}"
        )


def parse_rows(raw: Any) -> list[Mapping[str, Any]]:
    """The `rows` of a check: a list of objects, each with a `label`; RequestError otherwise."""
    if not isinstance(raw, list) or not raw:
        raise RequestError('"check" needs "rows": a non-empty list of labelled rows')
    if len(raw) > MAX_ROWS:
        raise RequestError(f"a check takes at most {MAX_ROWS} rows, got {len(raw)}")
    for index, row in enumerate(raw):
        if not isinstance(row, dict) or "label" not in row:
            raise RequestError(f"check row {index} must be an object with a \"label\"")
    return raw


async def replay(
    live: LoadedVersion, candidate: LoadedVersion, rows: Sequence[Mapping[str, Any]]
) -> CheckResult:
    """Run every row through both versions and judge the candidate (see the module docstring)."""
    right = live_right = errors = 0
    for index, row in enumerate(rows):
        live_prediction = await _predict(live, row, index)
        live_right += int(live_prediction == _label(row, index))
        try:
            prediction = await _predict(candidate, row, index)
        except ModelServeError:
            errors += 1
            continue
        right += int(prediction == _label(row, index))
    n = len(rows)
    outcomes = OutcomeEvidence(correct=right, samples=n, baseline_correct=live_right, baseline_samples=n)
    sample = Sample(requests=n, errors=errors)
    gates = evaluate_gates(CHECK_STAGE, sample, Sample(requests=n), outcomes=outcomes)
    verdict = FAIL if any(g.verdict == FAIL for g in gates) else PASS
    if any(g.verdict not in (PASS, FAIL) for g in gates) and verdict == PASS:
        verdict = "inconclusive"
    return CheckResult(
        version=candidate.version, live_version=live.version, rows=n, verdict=verdict, accuracy=right / n,
        live_accuracy=live_right / n, errors=errors, gates=gates,
    )  # fmt: skip


def _label(row: Mapping[str, Any], index: int) -> int:
    try:
        return int(row["label"])
    except (TypeError, ValueError):
        raise RequestError(f"check row {index}: label must be an integer class") from None


def _feeds(loaded: LoadedVersion, row: Mapping[str, Any], index: int) -> dict[str, np.ndarray]:
    specs = loaded.inputs
    if len(specs) == 1 and specs[0].name not in row and "input" in row:
        values = {specs[0].name: row["input"]}
    else:
        missing = [spec.name for spec in specs if spec.name not in row]
        if missing:
            raise RequestError(f"check row {index} has no input {missing[0]!r}")
        values = {spec.name: row[spec.name] for spec in specs}
    feeds = {}
    for spec in specs:
        try:
            array = np.asarray(values[spec.name], dtype=spec.dtype)
        except (TypeError, ValueError):
            raise RequestError(f"check row {index}: input {spec.name!r} is not {spec.datatype}") from None
        if array.ndim == len(spec.shape) - 1:
            array = array[np.newaxis, ...]  # one row: the batch dimension
        feeds[spec.name] = array
    return feeds


async def _predict(loaded: LoadedVersion, row: Mapping[str, Any], index: int) -> int:
    outputs = await loaded.infer(_feeds(loaded, row, index))
    if "label" in outputs:
        return int(np.asarray(outputs["label"]).ravel()[0])
    first = np.asarray(outputs[loaded.output_names[0]])
    return int(np.argmax(first.reshape(first.shape[0], -1)[0]) if first.ndim else first)
