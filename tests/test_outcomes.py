"""Accuracy and error by version from posted labels: matches a direct computation, intervals, the join."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from modelserve.monitoring.outcomes import (
    ACCURACY,
    ERROR,
    LabelJoin,
    OutcomeTally,
    Prediction,
    predicted_values,
)


def test_accuracy_by_version_matches_a_direct_computation_with_a_wilson_interval() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 400)
    predictions = {"1": np.where(rng.random(400) < 0.8, truth, 1 - truth), "2": rng.integers(0, 2, 400)}
    tally = OutcomeTally()
    join = LabelJoin(tally)
    for i in range(400):
        version = "1" if i % 2 else "2"
        join.remember(
            f"r{i}",
            Prediction(model="m", version=version, kind=ACCURACY, values=predictions[version][i : i + 1]),
        )
    for i in range(400):
        assert join.resolve(f"r{i}", int(truth[i])) is not None
    for version, rows in (("1", slice(1, None, 2)), ("2", slice(0, None, 2))):
        right = int((predictions[version][rows] == truth[rows]).sum())
        summary = tally.summary("m", version)
        assert summary.kind == ACCURACY and summary.samples == 200 and summary.correct == right
        assert summary.accuracy == pytest.approx(right / 200)
        low, high = proportion_confint(right, 200, method="wilson")
        assert summary.accuracy_interval is not None
        assert (summary.accuracy_interval.low, summary.accuracy_interval.high) == pytest.approx((low, high))


def test_regression_error_has_a_t_interval() -> None:
    rng = np.random.default_rng(1)
    errors = rng.normal(0.5, 2.0, 300)
    tally = OutcomeTally()
    for chunk in np.array_split(errors, 7):  # merged in batches
        tally.record_errors("m", "3", chunk, experiment=False)
    summary = tally.summary("m", "3")
    absolute = np.abs(errors)
    low, high = stats.t.interval(0.95, absolute.size - 1, loc=absolute.mean(), scale=stats.sem(absolute))
    assert summary.kind == ERROR and summary.samples == 300
    assert summary.mean_abs_error == pytest.approx(absolute.mean())
    assert summary.rmse == pytest.approx(float(np.sqrt(np.mean(errors**2))))
    assert summary.abs_error_interval is not None
    assert (summary.abs_error_interval.low, summary.abs_error_interval.high) == pytest.approx((low, high))


def test_experiment_outcomes_are_counted_apart_and_overall() -> None:
    tally = OutcomeTally()
    tally.record_labels("m", "1", 3, 4, experiment=True)
    tally.record_labels("m", "1", 1, 4, experiment=False)
    assert tally.summary("m", "1").samples == 8 and tally.summary("m", "1").correct == 4
    assert tally.summary("m", "1", experiment_only=True).samples == 4
    assert tally.summary("m", "2").kind is None and tally.summary("m", "2").samples == 0


def test_unknown_and_duplicate_labels_are_counted_not_joined() -> None:
    join = LabelJoin(OutcomeTally())
    join.remember("a", Prediction(model="m", version="1", kind=ACCURACY, values=np.array([1])))
    assert join.resolve("nope", 1) is None and join.unknown == 1
    assert join.resolve("a", 1) is not None
    assert join.resolve("a", 1) is None and join.duplicate == 1


def test_a_prediction_kept_under_two_ids_is_labelled_once_by_either() -> None:
    join = LabelJoin(OutcomeTally())
    join.remember(
        "issued", Prediction(model="m", version="1", kind=ACCURACY, values=np.array([1])), also="mine"
    )
    assert join.resolve("mine", 1) is not None
    assert join.resolve("issued", 1) is None and join.duplicate == 1
    # A client id reused by a later request belongs to that request: labelling the first leaves it.
    join.remember("i2", Prediction(model="m", version="1", kind=ACCURACY, values=np.array([1])), also="same")
    join.remember("i3", Prediction(model="m", version="2", kind=ACCURACY, values=np.array([0])), also="same")
    assert join.resolve("i2", 1) is not None
    joined = join.resolve("same", 1)
    assert joined is not None and joined.prediction.version == "2"


def test_shadow_predictions_are_scored_against_the_same_label() -> None:
    tally = OutcomeTally()
    join = LabelJoin(tally)
    join.remember("a", Prediction(model="m", version="1", kind=ACCURACY, values=np.array([0, 1])))
    join.add_shadow("a", "2", np.array([1, 1]))
    result = join.resolve("a", [1, 1])
    assert result is not None
    assert result.right["1"].tolist() == [False, True] and result.right["2"].tolist() == [True, True]
    assert tally.summary("m", "2").accuracy == 1.0 and tally.summary("m", "1").accuracy == 0.5


def test_a_label_of_the_wrong_length_is_refused() -> None:
    join = LabelJoin(OutcomeTally())
    join.remember("a", Prediction(model="m", version="1", kind=ACCURACY, values=np.array([0, 1])))
    with pytest.raises(ValueError, match="one value per row"):
        join.resolve("a", 1)


def test_predicted_values_prefers_label_outputs_then_argmax_then_values() -> None:
    label = {"label": np.array([1, 0], dtype=np.int64), "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]])}
    kind, values = predicted_values(label)  # type: ignore[misc]
    assert kind == ACCURACY and values.tolist() == [1, 0]
    kind, values = predicted_values({"p": np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32)})  # type: ignore[misc]
    assert kind == ACCURACY and values.tolist() == [1, 0]
    kind, values = predicted_values({"y": np.array([[2.5]], dtype=np.float32)})  # type: ignore[misc]
    assert kind == ERROR and values.tolist() == [2.5]
    assert predicted_values({"s": np.array([b"x"], dtype=object)}, label_output="other") is None
