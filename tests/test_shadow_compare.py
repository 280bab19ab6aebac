"""Output comparison: label / allclose / topk, max abs difference, Jensen-Shannon distance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from modelserve.errors import ConfigError
from modelserve.shadow.compare import COMPARATORS, allclose, js_distance, label, resolve, topk


def _probabilities(rng: np.random.Generator, rows: int, classes: int) -> np.ndarray:
    return rng.dirichlet(np.ones(classes), rows).astype(np.float32)


def test_label_counts_rows_whose_argmax_differs() -> None:
    primary = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    shadow = np.array([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.4, 0.6]], dtype=np.float32)
    result = label({"p": primary}, {"p": shadow})
    assert (result.rows, result.agreeing_rows, result.agreement, result.agree) == (4, 3, 0.75, False)
    assert result.max_abs_diff == pytest.approx(0.4, abs=1e-6)


def test_label_compares_integer_and_string_labels_by_equality() -> None:
    ints = label({"label": np.array([1, 2, 3])}, {"label": np.array([1, 0, 3])})
    strings = label(
        {"label": np.array([b"cat", b"dog"], dtype=object)},
        {"label": np.array([b"cat", b"dog"], dtype=object)},
    )
    assert (ints.agreeing_rows, ints.rows) == (2, 3)
    assert strings.agree and strings.max_abs_diff is None


def test_label_reads_a_single_column_as_positive_class_probability() -> None:
    result = label({"p": np.array([[0.7], [0.4], [0.55]])}, {"p": np.array([[0.6], [0.6], [0.45]])})
    assert result.agreeing_rows == 1


def test_a_row_agrees_only_when_every_output_agrees() -> None:
    primary = {"label": np.array([0, 1, 1]), "scores": np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])}
    shadow = {"label": np.array([0, 1, 0]), "scores": np.array([[0.1, 0.9], [0.1, 0.9], [0.2, 0.8]])}
    assert label(primary, shadow).agreeing_rows == 1


def test_allclose_uses_rtol_and_atol_and_treats_nan_as_equal() -> None:
    primary = {"y": np.array([[1.0, np.nan], [1.0, 2.0], [np.inf, 0.0]])}
    near = {"y": np.array([[1.0 + 5e-5, np.nan], [1.0, 2.0 + 1e-3], [np.inf, 1e-7]])}
    result = allclose(primary, near, rtol=1e-4, atol=1e-6)
    assert result.agreeing_rows == 2
    assert allclose(primary, near, rtol=1e-3, atol=1e-6).agree


def test_topk_reports_overlap_fraction_of_top_indices() -> None:
    primary = np.array([[0.5, 0.3, 0.15, 0.05], [0.4, 0.3, 0.2, 0.1]])
    shadow = np.array([[0.3, 0.5, 0.05, 0.15], [0.1, 0.2, 0.3, 0.4]])
    result = topk({"p": primary}, {"p": shadow}, k=2)
    assert result.overlap == pytest.approx((2 / 2 + 0 / 2) / 2)
    assert result.agreeing_rows == 1
    assert topk({"p": primary}, {"p": shadow}, k=2, min_overlap=0.0).agree
    assert topk({"p": primary}, {"p": shadow}, k=10).agree  # k clipped to the number of classes


def test_topk_small_and_large_outputs_give_the_same_overlap() -> None:
    rng = np.random.default_rng(3)
    primary, shadow = rng.random((200, 12)), rng.random((200, 12))
    large = topk({"p": primary}, {"p": shadow}, k=3)
    small = [
        topk({"p": primary[i : i + 1]}, {"p": shadow[i : i + 1]}, k=3).overlap or 0.0 for i in range(200)
    ]
    assert large.overlap == pytest.approx(float(np.mean(small)))


@pytest.mark.parametrize("rows", [1, 3, 64])  # 64 x 10 takes the scipy path, the others plain floats
def test_js_distance_matches_scipy_base_2(rows: int) -> None:
    rng = np.random.default_rng(rows)
    p, q = _probabilities(rng, rows, 10), _probabilities(rng, rows, 10)
    expected = float(np.max(jensenshannon(p.astype(np.float64), q.astype(np.float64), base=2, axis=1)))
    assert js_distance(p, q) == pytest.approx(expected, abs=1e-9)
    assert label({"p": p}, {"p": q}).js_distance == pytest.approx(expected, abs=1e-9)


def test_js_distance_is_absent_for_scores_that_are_not_probabilities() -> None:
    logits = {"p": np.array([[-1.0, 2.0]])}
    assert label(logits, {"p": np.array([[-0.5, 1.0]])}).js_distance is None
    assert label({"p": np.array([[0.2, 0.2]])}, {"p": np.array([[0.5, 0.5]])}).js_distance is None


@pytest.mark.parametrize("shape", [(2, 3), (40, 5)])
def test_max_abs_diff_matches_numpy_including_nan(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=shape), rng.normal(size=shape)
    assert label({"y": a}, {"y": b}).max_abs_diff == pytest.approx(float(np.max(np.abs(a - b))))
    b[1, 1] = np.nan
    diff = label({"y": a}, {"y": b}).max_abs_diff
    assert diff is not None and np.isnan(diff)


@pytest.mark.parametrize("compare", sorted(COMPARATORS))
def test_mismatches_are_disagreements_with_a_reason_never_exceptions(compare: str) -> None:
    fn = COMPARATORS[compare]
    primary = {"p": np.array([[0.2, 0.8], [0.5, 0.5]])}
    missing = fn(primary, {"other": np.array([[0.2, 0.8], [0.5, 0.5]])})
    shape = fn(primary, {"p": np.array([[0.2, 0.8]])})
    kind = fn(primary, {"p": np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object)})
    for result in (missing, shape, kind):
        assert not result.agree and result.agreement == 0.0 and result.rows == 2 and result.reason
    assert "missing" in missing.reason and "shape" in shape.reason
    assert fn({}, {}).reason


def test_outputs_only_the_shadow_has_are_ignored() -> None:
    primary = {"p": np.array([[0.2, 0.8]])}
    assert label(primary, {**primary, "extra": np.array([1, 2, 3])}).agree


def test_empty_batch_agrees_with_zero_rows() -> None:
    empty = {"p": np.zeros((0, 2), dtype=np.float32)}
    result = label(empty, empty)
    assert (result.agree, result.rows, result.agreement, result.max_abs_diff) == (True, 0, 1.0, None)


def test_resolve_names_a_comparator_or_passes_a_callable_through() -> None:
    assert resolve("topk") is topk
    assert resolve(label) is label
    with pytest.raises(ConfigError, match="unknown shadow comparison"):
        resolve("cosine")


def test_comparison_is_frozen() -> None:
    result = label({"p": np.array([1])}, {"p": np.array([1])})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.agree = False  # type: ignore[misc]
