"""Metrics against hand-computed values, the withholding rules and bad predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxr_tutorial.errors import FormatError
from cxr_tutorial.metrics import MetricsSettings, compute_metrics, evaluate
from cxr_tutorial.predictions import read_predictions, write_predictions

# Ten cases, two classes. Probability of class 1 per case; the first five are class 0.
P1 = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.35, 0.9, 0.65]
TRUE = [0] * 5 + [1] * 5


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    y_true = np.eye(2, dtype=int)[TRUE]
    y_prob = np.stack([1 - np.array(P1), np.array(P1)], axis=1)
    return y_true, y_prob


def _settings(**kw) -> MetricsSettings:
    return MetricsSettings(labels_list=("normal", "pneumonia"), **kw)


def test_multi_class_figures_match_hand_computation():
    result = compute_metrics(*_arrays(), _settings())
    # Argmax misses case 4 (0.6) and case 8 (0.35): 8 of 10 right.
    assert result["overall"]["accuracy"] == 0.8
    assert result["overall"]["balanced_accuracy"] == 0.8
    # Of 25 (positive, negative) pairs, 23 are ranked right: 0.35 beats only 3 negatives.
    assert result["per_class"]["pneumonia"]["auc"] == 0.92
    assert result["per_class"]["normal"]["auc"] == 0.92
    assert result["overall"]["auc_macro"] == 0.92
    assert result["overall"]["auc_macro_n_classes"] == 2
    assert result["per_class"]["pneumonia"]["sensitivity"] == 0.8
    assert result["per_class"]["pneumonia"]["specificity"] == 0.8
    assert result["per_class"]["pneumonia"]["f1"] == 0.8
    p_true = [1 - p for p in P1[:5]] + P1[5:]
    loss = -sum(math.log(p) for p in p_true) / 10
    assert result["overall"]["loss"] == round(loss, 4)
    assert "withheld" not in result


def test_multi_label_figures_match_hand_computation():
    y_true = np.array([[1, 0], [1, 1], [1, 0], [0, 1], [0, 0], [0, 1]])
    y_prob = np.array([[0.9, 0.2], [0.8, 0.7], [0.4, 0.6], [0.3, 0.8], [0.2, 0.1],
                       [0.6, 0.4]])
    settings = MetricsSettings(labels_list=("a", "b"), label_type="multi_label",
                               min_cases=3)
    result = compute_metrics(y_true, y_prob, settings)
    assert result["overall"]["subset_accuracy"] == round(4 / 6, 4)
    assert result["per_class"]["a"]["auc"] == round(8 / 9, 4)
    assert result["per_class"]["b"]["auc"] == round(8 / 9, 4)
    assert result["per_class"]["a"]["sensitivity"] == round(2 / 3, 4)
    assert result["per_class"]["a"]["specificity"] == round(2 / 3, 4)
    clipped = np.clip(y_prob, 1e-7, 1 - 1e-7)
    bce = -(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped)).mean()
    assert result["overall"]["loss"] == round(float(bce), 4)


def test_small_classes_are_withheld_and_left_out_of_the_macro_average():
    with pytest.warns(UserWarning, match="no class has enough cases"):
        result = compute_metrics(*_arrays(), _settings(min_cases=6))
    assert result["per_class"] == {}
    assert result["overall"]["auc_macro"] is None
    assert result["overall"]["auc_macro_n_classes"] == 0
    assert len(result["withheld"]) == 2
    assert "per_class.normal: fewer than 6" in result["withheld"][0]


def test_a_site_below_the_minimum_releases_nothing_but_that_fact():
    result = compute_metrics(*_arrays(), _settings(min_cases=11))
    assert result["n_cases"] == "<11"
    assert "overall" not in result and "per_class" not in result
    assert result["withheld"] == ["all figures: 10 case(s) is fewer than min_cases"]


def test_single_valued_class_has_no_auc_and_is_not_averaged():
    y_true = np.array([[1, 0, 1]] * 3 + [[0, 1, 1]] * 3)
    y_prob = np.array([[0.8, 0.3, 0.9]] * 3 + [[0.3, 0.7, 0.8]] * 3)
    settings = MetricsSettings(labels_list=("a", "b", "c"), label_type="multi_label",
                               min_cases=1)
    result = compute_metrics(y_true, y_prob, settings)
    assert "c" not in result["per_class"]
    assert result["overall"]["auc_macro_n_classes"] == 2
    assert result["overall"]["auc_macro"] == 1.0


def test_rounding_follows_decimals():
    result = compute_metrics(*_arrays(), _settings(decimals=1))
    assert result["overall"]["loss"] == round(result["overall"]["loss"], 1)


def _write_case(tmp_path: Path, predictions: object, labels: str) -> tuple[Path, Path]:
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "predictions.json").write_text(
        predictions if isinstance(predictions, str) else json.dumps(predictions))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "labels.csv").write_text(labels)
    return tmp_path / "pred", tmp_path / "labels"


LABELS = "case_id,normal,pneumonia\n" + "".join(
    f"c{i},{1 - t},{t}\n" for i, t in enumerate(TRUE))
GOOD = {f"c{i}": [1 - p, p] for i, p in enumerate(P1)}


def test_evaluate_writes_results_yaml(tmp_path):
    pred, labels = _write_case(tmp_path, GOOD, LABELS)
    result = evaluate(pred, labels, tmp_path / "results.yaml", _settings())
    assert yaml.safe_load((tmp_path / "results.yaml").read_text()) == result
    text = (tmp_path / "results.yaml").read_text()
    assert "c0" not in text and "0.35" not in text  # no ids, no per-case values


@pytest.mark.parametrize(
    "predictions,expected",
    [
        ({k: v for k, v in GOOD.items() if k not in ("c1", "c2")},
         r"2 labelled case\(s\) have no prediction"),
        ({**GOOD, "x9": [0.5, 0.5]}, r"1 predicted case\(s\) have no label \(e.g. 'x9'\)"),
        ({**GOOD, "c3": [0.5]}, r"1 case\(s\) do not have exactly 2 probabilities"),
        ({**GOOD, "c3": [float("nan"), 0.5], "c4": [0.1, float("inf")]},
         r"2 case\(s\) have NaN, infinite or non-numeric"),
        ({**GOOD, "c3": [1.5, -0.5]}, r"1 case\(s\) have probabilities outside \[0, 1\]"),
        ({}, r"no predictions"),
        ("{not json", r"not valid JSON"),
        ([[0.1, 0.9]], r"expected a JSON object"),
    ],
)
def test_bad_predictions_fail_and_leave_no_results(tmp_path, predictions, expected):
    pred, labels = _write_case(tmp_path, predictions, LABELS)
    with pytest.raises(FormatError, match=expected):
        evaluate(pred, labels, tmp_path / "results.yaml", _settings())
    assert not (tmp_path / "results.yaml").exists()


def test_predictions_are_validated_before_writing(tmp_path):
    with pytest.raises(FormatError, match="outside"):
        write_predictions(tmp_path, {"c0": [0.2, 1.2]}, 2)
    assert not (tmp_path / "predictions.json").exists()
    write_predictions(tmp_path, GOOD, 2)
    assert read_predictions(tmp_path, 2)["c7"].tolist() == [0.65, 0.35]
