"""Compare a shadow version's outputs with the primary's: pure functions over numpy outputs.

Outputs are dicts `name -> ndarray`, batch first (axis 0 is the row). Three comparisons:

- `label`: class agreement. Float outputs whose last axis has >= 2 entries are scores: the class is
  their argmax over the last axis. A float output with one column (or 1-D) is a positive-class
  probability read against `threshold`. Integer, bool and string outputs are labels: equality.
- `allclose`: numeric outputs equal within `rtol`/`atol` (NaN equals NaN); others by equality.
- `topk`: the top-`k` class indices of score outputs overlap; a row agrees when the overlap fraction
  reaches `min_overlap` (1.0: the same set). `Comparison.overlap` is the mean overlap.

Every primary output is compared; a row agrees when it agrees on all of them. Outputs the shadow adds
are ignored (a candidate may add outputs). Every comparison also gives the max absolute difference over
numeric outputs and, when both sides are probability vectors (non-negative, rows summing to ~1), the
largest per-row Jensen-Shannon distance (base 2, as `scipy.spatial.distance.jensenshannon`). Missing
outputs or mismatched shapes or kinds are a disagreement with a `reason`, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.spatial.distance import jensenshannon

from modelserve.errors import ConfigError

Outputs = Mapping[str, np.ndarray]
#: Per-row agreement (bool, one per row) and optional per-row overlap fraction.
_RowResult = tuple[np.ndarray, np.ndarray | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """The result of comparing one request's primary and shadow outputs."""

    agree: bool  # every row agrees
    agreement: float  # fraction of rows agreeing
    rows: int
    agreeing_rows: int
    max_abs_diff: float | None  # None when no output is numeric or shapes differ
    js_distance: float | None  # None unless both sides are probability vectors
    overlap: float | None = None  # `topk` only: mean top-k overlap fraction
    reason: str = ""  # why the outputs could not be compared, when they could not


Comparator = Callable[[Outputs, Outputs], Comparison]

_PROBABILITY_SUM_TOLERANCE = 1e-3
_SMALL = 64  # up to this many values, plain Python floats beat numpy's per-call overhead


def _disagreement(reason: str, rows: int) -> Comparison:
    return Comparison(
        agree=False, agreement=0.0, rows=rows, agreeing_rows=0, max_abs_diff=None, js_distance=None,
        reason=reason,
    )  # fmt: skip


def _rows_of(array: np.ndarray) -> int:
    return int(array.shape[0]) if array.ndim else 1


def _per_row(equal: np.ndarray, rows: int) -> np.ndarray:
    return np.asarray(equal.reshape(rows, -1).all(axis=1) if equal.ndim > 1 else equal.reshape(rows))


def _is_scores(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" and array.ndim >= 2 and array.shape[-1] >= 2


def _equal_rows(a: np.ndarray, b: np.ndarray, rows: int) -> np.ndarray:
    return _per_row(np.asarray(a == b), rows)


def _label_rows(a: np.ndarray, b: np.ndarray, rows: int, *, threshold: float) -> _RowResult:
    if _is_scores(a):
        return _per_row(a.argmax(axis=-1) == b.argmax(axis=-1), rows), None
    if a.dtype.kind == "f":
        return _per_row((a >= threshold) == (b >= threshold), rows), None
    return _equal_rows(a, b, rows), None


def _allclose_rows(a: np.ndarray, b: np.ndarray, rows: int, *, rtol: float, atol: float) -> _RowResult:
    if a.dtype.kind not in "fiub":
        return _equal_rows(a, b, rows), None
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: handled just below
        close = np.abs(a64 - b64) <= atol + rtol * np.abs(b64)  # numpy.isclose's rule, minus its overhead
    if not close.all():  # equal infinities and NaN == NaN count as close, as with isclose(equal_nan=True)
        close |= (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    return _per_row(close, rows), None


def _top_indices(row: list[float], k: int) -> set[int]:
    return set(sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k])


def _topk_rows(a: np.ndarray, b: np.ndarray, rows: int, *, k: int, min_overlap: float) -> _RowResult:
    if not _is_scores(a):
        equal = _equal_rows(a, b, rows)
        return equal, equal.astype(np.float64)
    classes = a.shape[-1]
    kk = min(k, classes)
    flat_a, flat_b = a.reshape(-1, classes), b.reshape(-1, classes)
    if a.size <= _SMALL:
        common = np.array(
            [
                len(_top_indices(ra, kk) & _top_indices(rb, kk))
                for ra, rb in zip(flat_a.tolist(), flat_b.tolist(), strict=True)
            ]
        )
    else:
        top_a = np.argpartition(-flat_a, kk - 1, axis=1)[:, :kk]
        top_b = np.argpartition(-flat_b, kk - 1, axis=1)[:, :kk]
        common = (top_a[:, :, None] == top_b[:, None, :]).any(axis=2).sum(axis=1)
    overlap = (common / kk).reshape(rows, -1).mean(axis=1)
    return overlap >= min_overlap - 1e-12, overlap


def _is_probability_rows(rows: list[list[float]]) -> bool:
    return all(min(r) >= 0.0 and abs(sum(r) - 1.0) <= _PROBABILITY_SUM_TOLERANCE for r in rows)


def _is_probability(array: np.ndarray) -> bool:
    if not _is_scores(array) or array.size == 0:
        return False
    return bool((array >= 0).all()) and bool(
        (np.abs(array.sum(axis=-1, dtype=np.float64) - 1.0) <= _PROBABILITY_SUM_TOLERANCE).all()
    )


def _js_small(p: list[float], q: list[float]) -> float:
    # Same definition as scipy's jensenshannon(base=2): both rows renormalised, sqrt of the mean KL to m.
    sp, sq = sum(p), sum(q)
    total = 0.0
    for pi, qi in zip(p, q, strict=True):
        pi, qi = pi / sp, qi / sq
        mi = (pi + qi) / 2.0
        if pi > 0.0:
            total += pi * math.log2(pi / mi)
        if qi > 0.0:
            total += qi * math.log2(qi / mi)
    return math.sqrt(max(total / 2.0, 0.0))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """The largest per-row Jensen-Shannon distance (base 2) between two probability arrays."""
    classes = p.shape[-1]
    if p.size <= _SMALL:
        rows_p, rows_q = p.reshape(-1, classes).tolist(), q.reshape(-1, classes).tolist()
        return max(_js_small(a, b) for a, b in zip(rows_p, rows_q, strict=True))
    distances = jensenshannon(
        p.reshape(-1, classes).astype(np.float64), q.reshape(-1, classes).astype(np.float64), base=2, axis=1
    )
    return float(np.nanmax(distances))


def _magnitudes(a: np.ndarray, b: np.ndarray) -> tuple[float, float | None]:
    """Max absolute difference, and the JS distance when both are probability vectors."""
    if a.size <= _SMALL:  # plain floats: numpy's per-call overhead dominates tiny outputs
        flat_a, flat_b = a.ravel().tolist(), b.ravel().tolist()
        diffs = [abs(x - y) for x, y in zip(flat_a, flat_b, strict=True)]
        diff = float(max(diffs))
        if diff != diff or any(d != d for d in diffs):
            diff = math.nan  # NaN wins, as in numpy
        if not _is_scores(a):
            return diff, None
        width = a.shape[-1]
        rows_a = [flat_a[i : i + width] for i in range(0, len(flat_a), width)]
        rows_b = [flat_b[i : i + width] for i in range(0, len(flat_b), width)]
        if _is_probability_rows(rows_a) and _is_probability_rows(rows_b):
            return diff, max(_js_small(ra, rb) for ra, rb in zip(rows_a, rows_b, strict=True))
        return diff, None
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, which is the answer
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return diff, js_distance(a, b) if _is_probability(a) and _is_probability(b) else None


def _compare(primary: Outputs, shadow: Outputs, row_fn: Callable[..., _RowResult]) -> Comparison:
    if not primary:
        return _disagreement("the primary returned no outputs", 0)
    first = next(iter(primary.values()))
    rows = _rows_of(np.asarray(first))
    agreeing: list[bool] | None = None  # plain lists: numpy's per-call cost dominates small batches
    overlaps: list[np.ndarray] = []
    max_diff: float | None = None
    js: float | None = None
    for name, raw_a in primary.items():
        raw_b = shadow.get(name)
        if raw_b is None:
            return _disagreement(f"shadow output {name!r} is missing (has {sorted(shadow)})", rows)
        a, b = np.asarray(raw_a), np.asarray(raw_b)
        if a.shape != b.shape:
            return _disagreement(
                f"output {name!r} shape {b.shape} differs from the primary's {a.shape}", rows
            )
        numeric_a, numeric_b = a.dtype.kind in "fiub", b.dtype.kind in "fiub"
        if numeric_a != numeric_b:
            return _disagreement(f"output {name!r} dtype {b.dtype} is not comparable with {a.dtype}", rows)
        if a.size == 0:
            continue
        output_rows = _rows_of(a)
        row_agree, overlap = row_fn(a, b, output_rows)
        flags = row_agree.tolist() if output_rows == rows else [bool(row_agree.all())] * rows
        agreeing = flags if agreeing is None else [x and y for x, y in zip(agreeing, flags, strict=True)]
        if overlap is not None:
            overlaps.append(overlap)
        if numeric_a:
            diff, distance = _magnitudes(a, b)
            max_diff = diff if max_diff is None or math.isnan(diff) else max(max_diff, diff)
            if distance is not None:
                js = distance if js is None else max(js, distance)
    agreeing_rows = rows if agreeing is None else sum(agreeing)
    return Comparison(
        agree=agreeing_rows == rows,
        agreement=agreeing_rows / rows if rows else 1.0,
        rows=rows,
        agreeing_rows=agreeing_rows,
        max_abs_diff=max_diff,
        js_distance=js,
        overlap=float(np.concatenate(overlaps).mean()) if overlaps else None,
    )


def _label_small_scores(primary: Outputs, shadow: Outputs) -> Comparison | None:
    """`label` for the common case — one small 2-D float score output — in plain Python (~4x faster).

    None when the case does not apply; the general path then gives the identical result.
    """
    if len(primary) != 1:
        return None
    name, a = next(iter(primary.items()))
    b = shadow.get(name)
    if (
        type(a) is not np.ndarray
        or type(b) is not np.ndarray
        or a.ndim != 2
        or a.shape != b.shape
        or a.dtype.kind != "f"
        or b.dtype.kind != "f"
        or a.size > _SMALL
        or a.shape[1] < 2
    ):
        return None
    rows_a, rows_b = a.tolist(), b.tolist()
    agreeing = 0
    diff = 0.0
    probabilities = True
    js = 0.0
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            if x != x or y != y:
                return None  # NaN semantics (argmax, max) are numpy's: let the general path decide
            d = x - y if x > y else y - x
            if d > diff:
                diff = d
        top_a, top_b = max(ra), max(rb)
        if ra.index(top_a) == rb.index(top_b):  # argmax as numpy: the first maximum
            agreeing += 1
        if probabilities:
            if (
                min(ra) < 0.0 or min(rb) < 0.0
                or abs(sum(ra) - 1.0) > _PROBABILITY_SUM_TOLERANCE
                or abs(sum(rb) - 1.0) > _PROBABILITY_SUM_TOLERANCE
            ):  # fmt: skip
                probabilities = False
            else:
                distance = _js_small(ra, rb)
                if distance > js:
                    js = distance
    rows = len(rows_a)
    return Comparison(
        agree=agreeing == rows, agreement=agreeing / rows if rows else 1.0, rows=rows,
        agreeing_rows=agreeing, max_abs_diff=diff if rows else None,
        js_distance=js if probabilities and rows else None,
    )  # fmt: skip


def label(primary: Outputs, shadow: Outputs, *, threshold: float = 0.5) -> Comparison:
    """Class agreement: argmax of scores, `>= threshold` of single-column probabilities, label equality."""
    fast = _label_small_scores(primary, shadow)
    if fast is not None:
        return fast
    return _compare(primary, shadow, partial(_label_rows, threshold=threshold))


def allclose(primary: Outputs, shadow: Outputs, *, rtol: float = 1e-4, atol: float = 1e-6) -> Comparison:
    """Numeric outputs equal within `rtol`/`atol` (as `numpy.isclose`); other outputs equal."""
    return _compare(primary, shadow, partial(_allclose_rows, rtol=rtol, atol=atol))


def topk(primary: Outputs, shadow: Outputs, *, k: int = 5, min_overlap: float = 1.0) -> Comparison:
    """Top-`k` class overlap of score outputs; a row agrees when its overlap reaches `min_overlap`."""
    if k < 1:
        raise ValueError("k must be at least 1")
    return _compare(primary, shadow, partial(_topk_rows, k=k, min_overlap=min_overlap))


#: Comparison names accepted in `config.toml [shadow] compare`.
COMPARATORS: dict[str, Comparator] = {"label": label, "allclose": allclose, "topk": topk}


def resolve(spec: str | Comparator) -> Comparator:
    """The comparator named by `spec` (or `spec` itself when it is callable); ConfigError otherwise."""
    if callable(spec):
        return spec
    try:
        return COMPARATORS[spec]
    except KeyError:
        raise ConfigError(
            f"unknown shadow comparison {spec!r}; choose one of {sorted(COMPARATORS)}"
        ) from None
