"""Metrics against hand-computed values, the withholding rules and bad inputs.

Every expected figure below is worked out by hand in the comment beside it; scikit-learn
computes the module's figures, so these tests check both the arithmetic and the choices
(decisions, clipping, which classes a macro average covers, what is withheld).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxr_tutorial import logger
from cxr_tutorial.errors import ConfigError, FormatError
from cxr_tutorial.metrics import (
    CLASS_KEYS,
    MACRO_FIGURES,
    THRESHOLD_FIGURES,
    WITHHELD,
    MetricsSettings,
    UndefinedMetricWarning,
    compute_metrics,
    evaluate,
    load_cases,
    load_metrics_settings,
    plot_local_views,
)
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


def _quiet(y_true, y_prob, settings) -> dict:
    """compute_metrics, failing on any warning (a fixture with no degenerate class)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return compute_metrics(y_true, y_prob, settings)


# --- Hand-computed figures -----------------------------------------------------------------


def test_two_class_figures_match_hand_computation():
    result = _quiet(*_arrays(), _settings(min_cases=1))
    overall, pneumonia = result["overall"], result["per_class"]["pneumonia"]
    # Argmax misses case 3 (0.6, a normal) and case 7 (0.35, a pneumonia): 8 of 10 right.
    assert overall["accuracy"] == 0.8
    assert overall["balanced_accuracy"] == 0.8 and overall["balanced_accuracy_n_classes"] == 2
    # Of 25 (positive, negative) pairs, 23 are ranked right: 0.35 beats only 3 negatives.
    assert pneumonia["auc"] == 0.92 and result["per_class"]["normal"]["auc"] == 0.92
    # At 0.5: TP 4, FN 1 (0.35), FP 1 (0.6), TN 4.
    assert pneumonia["n_positive"] == 5 and pneumonia["n_negative"] == 5
    assert pneumonia["sensitivity"] == 0.8 and pneumonia["specificity"] == 0.8
    assert pneumonia["accuracy"] == 0.8 and pneumonia["balanced_accuracy"] == 0.8
    assert pneumonia["f1"] == 0.8  # 2*4 / (2*4 + 1 + 1)
    p_true = [1 - p for p in P1[:5]] + P1[5:]
    loss = -sum(math.log(p) for p in p_true) / 10
    assert overall["loss"] == round(loss, 4)
    # With two classes, one class against the rest is the same binary problem.
    assert pneumonia["loss"] == result["per_class"]["normal"]["loss"] == round(loss, 4)
    for figure in MACRO_FIGURES:
        assert overall[f"{figure}_macro_n_classes"] == 2
    assert overall["f1_macro"] == 0.8 and overall["auc_macro"] == 0.92
    assert result["withheld"] == [] and result["undefined"] == []


def test_threshold_moves_per_class_figures_but_not_the_argmax():
    result = _quiet(*_arrays(), _settings(min_cases=1, threshold=0.25))
    pneumonia = result["per_class"]["pneumonia"]
    # p >= 0.25: 0.3, 0.6 and 0.4 become false positives; every positive is found.
    # TP 5, FN 0, FP 3, TN 2.
    assert pneumonia["sensitivity"] == 1.0 and pneumonia["specificity"] == 0.4
    assert pneumonia["accuracy"] == 0.7 and pneumonia["balanced_accuracy"] == 0.7
    assert pneumonia["f1"] == round(10 / 13, 4)
    # Normal: 1 - p >= 0.25 also flags 0.7, 0.35 and 0.65 (three pneumonias).
    assert result["per_class"]["normal"]["specificity"] == 0.4
    # The overall multi_class figures judge the argmax, whatever the threshold.
    assert result["overall"]["accuracy"] == 0.8
    assert result["threshold"] == 0.25


# Three classes, six cases; rows are softmax outputs.
THREE_TRUE = np.eye(3, dtype=int)[[0, 0, 1, 1, 2, 2]]
THREE_PROB = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1],
                       [0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.3, 0.1, 0.6]])


def test_three_class_figures_match_hand_computation():
    settings = MetricsSettings(labels_list=("a", "b", "c"), min_cases=1)
    result = _quiet(THREE_TRUE, THREE_PROB, settings)
    overall, per = result["overall"], result["per_class"]
    # Argmax: a->a, a->b, b->b, b->c, c->c, c->c. Recalls 1/2, 1/2, 2/2.
    assert overall["accuracy"] == round(4 / 6, 4)
    assert overall["balanced_accuracy"] == round(2 / 3, 4)
    # One against the rest at 0.5:
    #   a: flagged {1}        TP 1 FN 1 FP 0 TN 4
    #   b: flagged {2, 3}     TP 1 FN 1 FP 1 TN 3 (case 2 sits exactly on 0.5)
    #   c: flagged {4, 5, 6}  TP 2 FN 0 FP 1 TN 3
    assert [per[c]["sensitivity"] for c in "abc"] == [0.5, 0.5, 1.0]
    assert [per[c]["specificity"] for c in "abc"] == [1.0, 0.75, 0.75]
    assert [per[c]["accuracy"] for c in "abc"] == [round(5 / 6, 4), round(4 / 6, 4),
                                                  round(5 / 6, 4)]
    assert [per[c]["balanced_accuracy"] for c in "abc"] == [0.75, 0.625, 0.875]
    assert [per[c]["f1"] for c in "abc"] == [round(2 / 3, 4), 0.5, 0.8]
    # b: positives 0.8 and 0.3; 0.3 is below the negative 0.5 only: 7 of 8 pairs.
    assert [per[c]["auc"] for c in "abc"] == [1.0, 0.875, 1.0]
    assert overall["auc_macro"] == round((1 + 0.875 + 1) / 3, 4)
    assert overall["sensitivity_macro"] == round(2 / 3, 4)
    assert overall["specificity_macro"] == round(2.5 / 3, 4)
    assert overall["f1_macro"] == round((2 / 3 + 0.5 + 0.8) / 3, 4)
    assert overall["accuracy_macro_n_classes"] == 3
    p_true = [0.7, 0.4, 0.8, 0.3, 0.8, 0.6]
    assert overall["loss"] == round(-sum(math.log(p) for p in p_true) / 6, 4)
    # Class a's own loss: binary cross-entropy of column a against "is a".
    column = [0.7, 0.4, 0.1, 0.2, 0.1, 0.3]
    bce = -(math.log(0.7) + math.log(0.4) + sum(math.log(1 - p) for p in column[2:])) / 6
    assert per["a"]["loss"] == round(bce, 4)


ML_TRUE = np.array([[1, 0], [1, 1], [1, 0], [0, 1], [0, 0], [0, 1]])
ML_PROB = np.array([[0.9, 0.2], [0.8, 0.7], [0.4, 0.6], [0.3, 0.8], [0.2, 0.1], [0.6, 0.4]])


def _ml_settings(**kw) -> MetricsSettings:
    return MetricsSettings(labels_list=("a", "b"), label_type="multi_label", **kw)


def test_multi_label_figures_match_hand_computation():
    result = _quiet(ML_TRUE, ML_PROB, _ml_settings(min_cases=1))
    overall, a, b = result["overall"], result["per_class"]["a"], result["per_class"]["b"]
    # Rows 3 and 6 have one class wrong: 4 of 6 cases entirely right.
    assert overall["subset_accuracy"] == round(4 / 6, 4)
    assert "accuracy" not in overall
    # Each class: TP 2 FN 1 FP 1 TN 2.
    for figures in (a, b):
        assert figures["auc"] == round(8 / 9, 4)
        assert figures["sensitivity"] == figures["specificity"] == round(2 / 3, 4)
        assert figures["balanced_accuracy"] == figures["f1"] == round(2 / 3, 4)
        assert figures["accuracy"] == round(4 / 6, 4)
    # The loss is binary cross-entropy over all 12 (case, class) pairs, hand-written.
    terms = [-math.log(p if y else 1 - p)
             for ys, ps in zip(ML_TRUE.tolist(), ML_PROB.tolist()) for y, p in zip(ys, ps)]
    assert overall["loss"] == round(sum(terms) / 12, 4)
    assert a["loss"] == round(sum(terms[0::2]) / 6, 4)
    assert b["loss"] == round(sum(terms[1::2]) / 6, 4)


def test_multi_label_threshold_changes():
    result = _quiet(ML_TRUE, ML_PROB, _ml_settings(min_cases=1, threshold=0.35))
    # At 0.35, a flags 0.4 too and b flags 0.4 too: TP 3 FN 0 FP 1 TN 2 for each class.
    for name in ("a", "b"):
        figures = result["per_class"][name]
        assert figures["sensitivity"] == 1.0 and figures["specificity"] == round(2 / 3, 4)
        assert figures["f1"] == round(6 / 7, 4) and figures["accuracy"] == round(5 / 6, 4)
    assert result["overall"]["subset_accuracy"] == round(4 / 6, 4)


def test_loss_clips_hard_zeros_like_keras():
    y_true = np.eye(2, dtype=int)[[0, 1, 0, 1, 0]]
    y_prob = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    result = _quiet(y_true, y_prob, _settings(min_cases=1, decimals=6))
    # Case 1 gives its true class 0: -log(1e-7) = 16.118, not infinity.
    expected = (-math.log(1e-7) + 3 * -math.log(1 - 1e-7) + -math.log(0.5)) / 5
    assert result["overall"]["loss"] == pytest.approx(expected, abs=2e-6)


def test_rounding_follows_decimals():
    for decimals in (0, 1, 3):
        result = _quiet(THREE_TRUE, THREE_PROB,
                        MetricsSettings(labels_list=("a", "b", "c"), min_cases=1,
                                        decimals=decimals))
        values = [v for v in result["overall"].values() if isinstance(v, float)]
        values += [v for e in result["per_class"].values() for v in e.values()
                   if isinstance(v, float)]
        assert values and all(v == round(v, decimals) for v in values)
    assert result["overall"]["loss"] == 0.572  # -mean(log p_true) = 0.57233... to 3


def test_inputs_are_not_modified():
    y_true, y_prob = _arrays()
    y_prob[0] = [1.0, 0.0]
    before = y_prob.copy(), y_true.copy()
    compute_metrics(y_true, y_prob, _settings(min_cases=1))
    assert np.array_equal(y_prob, before[0]) and np.array_equal(y_true, before[1])


# --- Classes whose labels hold a single value ------------------------------------------------


def _capture_log() -> tuple[logging.Handler, list[str]]:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore
    logger.addHandler(handler)
    return handler, records


# Ten cases: five of class a, five of b, none of c; the model never flags c.
ABSENT_TRUE = np.eye(3, dtype=int)[[0] * 5 + [1] * 5]
ABSENT_PROB = np.array([[0.8, 0.15, 0.05]] * 5 + [[0.1, 0.85, 0.05]] * 5)


@pytest.mark.parametrize("min_cases", [1, 5])
def test_a_class_without_cases_has_no_auc_and_is_left_out_of_the_macros(min_cases):
    settings = MetricsSettings(labels_list=("a", "b", "c"), min_cases=min_cases)
    handler, records = _capture_log()
    try:
        with pytest.warns(UndefinedMetricWarning, match=r"class 'c'.*no positive case"):
            result = compute_metrics(ABSENT_TRUE, ABSENT_PROB, settings)
    finally:
        logger.removeHandler(handler)
    assert any("class 'c'" in message for message in records)
    c, overall = result["per_class"]["c"], result["overall"]
    # Zero cases of c is not a small count: c stays in the file, its AUC is null.
    assert c["n_positive"] == 0 and c["n_negative"] == 10
    assert c["auc"] is None and c["sensitivity"] is None and c["balanced_accuracy"] is None
    assert c["f1"] is None  # no positive case and nothing flagged: 0/0
    assert c["specificity"] == 1.0 and c["accuracy"] == 1.0
    # The macros average a and b only, and say so; nothing divides by 3.
    assert overall["auc_macro"] == 1.0 and overall["auc_macro_n_classes"] == 2
    assert overall["sensitivity_macro_n_classes"] == 2
    assert overall["specificity_macro_n_classes"] == 3
    assert overall["balanced_accuracy_n_classes"] == 2
    assert "per_class.c.auc: the labels hold a single value (no positive case); left out " \
           "of auc_macro" in result["undefined"]
    assert len(result["undefined"]) == 4  # auc, balanced_accuracy, sensitivity, f1
    assert result["withheld"] == []


def test_an_absent_class_with_few_false_alarms_keeps_its_auc_null_and_withholds_the_rest():
    y_prob = ABSENT_PROB.copy()
    y_prob[:2] = [0.3, 0.1, 0.6]  # two cases of a flagged as c: a cell of 2
    settings = MetricsSettings(labels_list=("a", "b", "c"), min_cases=5)
    with pytest.warns(UndefinedMetricWarning):
        result = compute_metrics(ABSENT_TRUE, y_prob, settings)
    c = result["per_class"]["c"]
    assert c["auc"] is None and c["n_positive"] == 0
    assert all(c[f] == WITHHELD for f in THRESHOLD_FIGURES)
    assert result["overall"]["accuracy"] == WITHHELD  # a: 3 right, 2 wrong


def test_a_class_with_every_case_positive_has_no_specificity():
    y_true = np.array([[1, 0, 1]] * 3 + [[0, 1, 1]] * 3)
    y_prob = np.array([[0.8, 0.3, 0.9]] * 3 + [[0.3, 0.7, 0.8]] * 3)
    settings = MetricsSettings(labels_list=("a", "b", "c"), label_type="multi_label",
                               min_cases=1)
    with pytest.warns(UndefinedMetricWarning, match=r"class 'c'.*no negative case"):
        result = compute_metrics(y_true, y_prob, settings)
    c = result["per_class"]["c"]
    assert c["auc"] is None and c["specificity"] is None and c["balanced_accuracy"] is None
    assert c["sensitivity"] == 1.0 and c["f1"] == 1.0
    assert result["overall"]["auc_macro"] == 1.0
    assert result["overall"]["auc_macro_n_classes"] == 2
    assert result["overall"]["sensitivity_macro_n_classes"] == 3


def test_a_single_valued_class_on_a_site_below_the_minimum_is_still_warned_about():
    with pytest.warns(UndefinedMetricWarning):
        result = compute_metrics(ABSENT_TRUE, ABSENT_PROB,
                                 MetricsSettings(labels_list=("a", "b", "c"), min_cases=20))
    assert result["per_class"]["c"]["auc"] == WITHHELD
    assert result["undefined"] == []


# --- What is withheld ------------------------------------------------------------------------


def test_a_site_below_the_minimum_releases_nothing_but_that_fact():
    result = compute_metrics(*_arrays(), _settings(min_cases=11))
    assert result["n_cases"] == "<11"
    assert set(result["overall"].values()) == {WITHHELD}
    for figures in result["per_class"].values():
        assert list(figures) == list(CLASS_KEYS) and set(figures.values()) == {WITHHELD}
    assert result["withheld"] == ["all figures: fewer than 11 cases in total"]


def test_figures_that_would_reveal_a_small_cell_are_withheld():
    # Cells at 0.5 are TP 4, FN 1, FP 1, TN 4: a sensitivity of 0.8 over 5 positives says
    # exactly one pneumonia was missed.
    result = _quiet(*_arrays(), _settings(min_cases=2))
    pneumonia = result["per_class"]["pneumonia"]
    assert all(pneumonia[f] == WITHHELD for f in THRESHOLD_FIGURES)
    assert pneumonia["auc"] == 0.92 and pneumonia["n_positive"] == 5
    assert result["overall"]["accuracy"] == WITHHELD
    assert result["overall"]["loss"] != WITHHELD
    assert result["overall"]["sensitivity_macro"] is None
    assert result["overall"]["sensitivity_macro_n_classes"] == 0
    assert result["withheld"][0].startswith(
        "per_class.normal: accuracy, balanced_accuracy, sensitivity, specificity, f1: at "
        "threshold 0.5 they would reveal a count of 1 case(s) (a cell of the "
        "confusion matrix of this class)")
    assert len(result["withheld"]) == 3


def test_a_small_class_is_withheld_whole_and_left_out_of_the_macros():
    # Multi-label, 12 cases: class "rare" has 2 positives.
    rng = np.random.default_rng(3)
    y_true = np.zeros((12, 2), dtype=int)
    y_true[:6, 0] = 1
    y_true[:2, 1] = 1
    y_prob = np.where(y_true == 1, 0.9, 0.1) + rng.uniform(-0.05, 0.05, y_true.shape)
    settings = MetricsSettings(labels_list=("common", "rare"), label_type="multi_label")
    result = _quiet(y_true, y_prob, settings)
    assert set(result["per_class"]["rare"].values()) == {WITHHELD}
    assert result["per_class"]["common"]["auc"] == 1.0
    assert result["overall"]["auc_macro_n_classes"] == 1
    assert "per_class.rare: all figures: 1 to 4 positive or negative case(s)" in result["withheld"]


def test_multi_class_withholds_a_second_class_so_sizes_cannot_be_subtracted():
    # Sizes 3, 6 and 12: releasing the 6 and the 12 with n_cases = 21 would give the 3.
    sizes = {"tiny": 3, "small": 6, "large": 12}
    y_true = np.eye(3, dtype=int)[np.repeat([0, 1, 2], list(sizes.values()))]
    y_prob = 0.1 + 0.7 * y_true
    result = _quiet(y_true, y_prob, MetricsSettings(labels_list=tuple(sizes)))
    per = result["per_class"]
    assert set(per["tiny"].values()) == {WITHHELD} and set(per["small"].values()) == {WITHHELD}
    assert per["large"]["n_positive"] == 12 and per["large"]["sensitivity"] == 1.0
    assert ("per_class.small: all figures: withheld along with per_class.tiny, so that class "
            "sizes cannot be worked out from n_cases") in result["withheld"]
    assert result["overall"]["accuracy"] == WITHHELD


def _derived_counts(result: dict) -> list[int]:
    """Every count a reader can work out from a results file with simple arithmetic."""
    n = result["n_cases"]
    counts = []
    released = [e for e in result["per_class"].values() if isinstance(e["n_positive"], int)]
    for entry in released:
        pos, neg = entry["n_positive"], entry["n_negative"]
        counts += [pos, neg]
        if isinstance(entry["sensitivity"], float):
            tp = round(entry["sensitivity"] * pos)
            counts += [tp, pos - tp]
        if isinstance(entry["specificity"], float):
            tn = round(entry["specificity"] * neg)
            counts += [tn, neg - tn]
        if isinstance(entry["accuracy"], float):
            right = round(entry["accuracy"] * n)
            counts += [right, n - right]
    if result["label_type"] == "multi_class" and released:
        counts.append(n - sum(e["n_positive"] for e in released))
    for key in ("accuracy", "subset_accuracy"):
        if isinstance(result["overall"].get(key), float):
            right = round(result["overall"][key] * n)
            counts += [right, n - right]
    return counts


def test_no_released_figure_reveals_a_small_count_on_random_skewed_sites():
    rng = np.random.default_rng(2026)
    released_blocks = 0
    for trial in range(60):
        n, k = int(rng.integers(5, 200)), int(rng.integers(2, 5))
        label_type = "multi_class" if trial % 2 else "multi_label"
        if label_type == "multi_class":
            weights = rng.dirichlet(np.full(k, 0.6))
            y_true = np.eye(k, dtype=int)[rng.choice(k, size=n, p=weights)]
            logits = 3 * y_true + rng.normal(0, 1.2, (n, k))
            y_prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        else:
            y_true = (rng.random((n, k)) < rng.uniform(0.05, 0.6, k)).astype(int)
            y_prob = 1 / (1 + np.exp(-(3 * y_true - 1.5 + rng.normal(0, 1.2, (n, k)))))
        settings = MetricsSettings(labels_list=tuple(f"c{i}" for i in range(k)),
                                   label_type=label_type, decimals=6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            result = compute_metrics(y_true, y_prob, settings)
        small = [c for c in _derived_counts(result) if 0 < c < settings.min_cases]
        assert not small, (trial, small, result)
        released_blocks += sum(isinstance(e["sensitivity"], float)
                               for e in result["per_class"].values())
    assert released_blocks > 20  # the rule withholds what it must, not everything


# --- The task: files in, one file out --------------------------------------------------------


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


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_evaluate_writes_results_yaml_and_nothing_else(tmp_path):
    pred, labels = _write_case(tmp_path, GOOD, LABELS)
    before = _files(tmp_path)
    result = evaluate(pred, labels, tmp_path / "out" / "results.yaml", _settings(min_cases=1))
    assert yaml.safe_load((tmp_path / "out" / "results.yaml").read_text()) == result
    assert _files(tmp_path) == sorted(before + ["out/results.yaml"])
    assert list(result) == ["format", "version", "label_type", "labels_list", "threshold",
                            "min_cases", "decimals", "n_cases", "overall", "per_class",
                            "withheld", "undefined"]


def test_results_hold_no_ids_and_no_per_case_value(tmp_path):
    rng = np.random.default_rng(7)
    n = 40
    truth = np.repeat([0, 1], n // 2)
    scores = np.clip(truth * 0.35 + rng.uniform(0.05, 0.6, n), 0.0, 1.0).round(6)
    ids = [f"pt-{rng.integers(10**6, 10**7)}" for _ in range(n)]
    predictions = {i: [round(1 - s, 6), s] for i, s in zip(ids, scores.tolist())}
    labels = "case_id,normal,pneumonia\n" + "".join(
        f"{i},{1 - t},{t}\n" for i, t in zip(ids, truth.tolist()))
    pred, lab = _write_case(tmp_path, predictions, labels)
    settings = _settings(min_cases=1, decimals=4)
    evaluate(pred, lab, tmp_path / "results.yaml", settings)
    text = (tmp_path / "results.yaml").read_text()
    released = yaml.safe_load(text)

    def numbers(node):
        if isinstance(node, dict):
            return [x for v in node.values() for x in numbers(v)]
        if isinstance(node, list):
            return [x for v in node for x in numbers(v)]
        return [node] if isinstance(node, float) else []

    figures = set(numbers(released)) - {settings.threshold}
    assert figures and all(isinstance(v, float) for v in figures)
    assert "pt-" not in text and not any(i[3:] in text for i in ids)
    for vector in predictions.values():
        for p in vector:
            assert str(p) not in text, p
            assert round(p, settings.decimals) not in figures, p
    # Only the class list and the two explanation lists are lists: no curve, no cells.
    assert [k for k, v in released.items() if isinstance(v, list)] == [
        "labels_list", "withheld", "undefined"]
    for word in ("fpr", "tpr", "roc_curve", "confusion", "tp:", "fn:", "fp:", "tn:"):
        assert word not in text


@pytest.mark.parametrize(
    "predictions,labels,expected",
    [
        ({k: v for k, v in GOOD.items() if k not in ("c1", "c2")}, LABELS,
         r"2 labelled case\(s\) have no prediction \(e.g. 'c1'\) \(10 labelled, 8 predicted\)"),
        ({**GOOD, "x9": [0.5, 0.5]}, LABELS,
         r"1 predicted case\(s\) have no label \(e.g. 'x9'\)"),
        ({**GOOD, "c3": [0.5]}, LABELS, r"1 case\(s\) do not have exactly 2 probabilities"),
        ({k: [*v, 0.0] for k, v in GOOD.items()}, LABELS,
         r"All 10 case\(s\) have 3 probabilities, but labels_list in the Metrics cube's "
         r"parameters.yaml has 2 classes \(normal, pneumonia\)"),
        ({**GOOD, "c3": [float("nan"), 0.5], "c4": [0.1, float("inf")]}, LABELS,
         r"2 case\(s\) have NaN, infinite or non-numeric"),
        ({**GOOD, "c3": [1.5, -0.5]}, LABELS, r"1 case\(s\) have probabilities outside \[0, 1\]"),
        ({**GOOD, "c3": [0.5, 0.4], "c5": [0.9, 0.9]}, LABELS,
         r"2 of 10 case\(s\) have probabilities that do not sum to 1 \(e.g. 'c3' sums to 0.9\)"),
        (GOOD, LABELS.replace("c4,1,0", "c4,1,1"),
         r"1 of 10 labelled case\(s\) do not have exactly one class set \(e.g. 'c4'\)"),
        ({}, LABELS, r"no predictions"),
        (GOOD, "case_id,normal,pneumonia\n", r"no labelled cases"),
        ("{not json", LABELS, r"not valid JSON"),
        ([[0.1, 0.9]], LABELS, r"expected a JSON object"),
        (GOOD, "id,normal,pneumonia\nc0,1,0\n", r"expected columns"),
    ],
)
def test_bad_inputs_fail_clearly_and_leave_no_results(tmp_path, predictions, labels, expected):
    pred, lab = _write_case(tmp_path, predictions, labels)
    before = _files(tmp_path)
    with pytest.raises(FormatError, match=expected):
        evaluate(pred, lab, tmp_path / "results.yaml", _settings())
    assert _files(tmp_path) == before


def test_missing_inputs_are_named(tmp_path):
    pred, labels = _write_case(tmp_path, GOOD, LABELS)
    with pytest.raises(FormatError, match="predictions file not found"):
        evaluate(tmp_path / "nowhere", labels, tmp_path / "results.yaml", _settings())
    with pytest.raises(FormatError, match="expected the prepared labels.csv"):
        evaluate(pred, tmp_path / "nowhere", tmp_path / "results.yaml", _settings())
    with pytest.raises(FormatError, match="output_path must be a file"):
        evaluate(pred, labels, tmp_path, _settings())
    assert not (tmp_path / "results.yaml").exists()


def test_a_failed_rerun_does_not_leave_the_earlier_results_looking_current(tmp_path):
    pred, labels = _write_case(tmp_path, GOOD, LABELS)
    output = tmp_path / "results.yaml"
    first = evaluate(pred, labels, output, _settings(min_cases=1))
    (pred / "predictions.json").write_text(json.dumps({**GOOD, "c0": [0.5]}))
    with pytest.raises(FormatError, match=r"(?s)exactly 2 probabilities.*earlier run was "
                                          r"moved to .*results.yaml.previous"):
        evaluate(pred, labels, output, _settings(min_cases=1))
    assert not output.exists()
    assert yaml.safe_load((tmp_path / "results.yaml.previous").read_text()) == first
    (pred / "predictions.json").write_text(json.dumps(GOOD))
    evaluate(pred, labels, output, _settings(min_cases=1))
    assert output.exists() and not (tmp_path / "results.yaml.previous").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_load_cases_pairs_by_id_whatever_the_file_order(tmp_path):
    shuffled = dict(reversed(list(GOOD.items())))
    pred, labels = _write_case(tmp_path, shuffled, LABELS)
    y_true, y_prob = load_cases(pred, labels, _settings())
    assert y_true.shape == y_prob.shape == (10, 2)
    ids = sorted(GOOD)
    assert y_prob[:, 1].tolist() == [GOOD[i][1] for i in ids]
    assert y_true[:, 1].tolist() == [TRUE[int(i[1:])] for i in ids]


def test_local_views_draw_curves_and_matrices_and_write_nothing(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    figure = plot_local_views(ABSENT_TRUE, ABSENT_PROB,
                              MetricsSettings(labels_list=("a", "b", "c")))
    roc, matrix = figure.axes[0], figure.axes[1]
    assert len(roc.get_lines()) == 3  # a and b (c has no positive case), and the diagonal
    assert len(matrix.texts) == 9  # a 3 x 3 matrix of counts
    plt.close(figure)
    figure = plot_local_views(ML_TRUE, ML_PROB, _ml_settings())
    assert len(figure.axes) == 3
    plt.close(figure)
    assert list(tmp_path.iterdir()) == []


def test_the_chapter_writes_results_yaml_only_and_shows_the_local_views(root, tmp_path,
                                                                        monkeypatch):
    from cxr_tutorial.runner import execute_notebook

    site = tmp_path / "site"
    site.mkdir()
    pred, labels = _write_case(site, GOOD, LABELS)
    # Run a copy inside the site folder, so a file written beside the notebook shows too.
    notebook = shutil.copy(root / "notebooks" / "06_evaluate.ipynb", site)
    params = site / "parameters.yaml"
    params.write_text("labels_list: [normal, pneumonia]\nmin_cases: 2\n")
    before = _files(site)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    log = tmp_path / "log" / "06_evaluate.ipynb"
    log.parent.mkdir()
    execute_notebook(Path(notebook),
                     {"predictions": str(pred), "labels": str(labels),
                      "parameters_file": str(params),
                      "output_path": str(site / "out" / "results.yaml")},
                     log, "chapter 6")
    assert _files(site) == sorted(before + ["out/results.yaml"])
    outputs = [o for c in json.loads(log.read_text())["cells"] for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    released = yaml.safe_load((site / "out" / "results.yaml").read_text())
    assert released["per_class"]["pneumonia"]["sensitivity"] == WITHHELD


# --- Settings --------------------------------------------------------------------------------


def test_shipped_parameters_are_the_defaults(root):
    settings = load_metrics_settings(root / "mlcubes" / "metrics" / "workspace"
                                     / "parameters.yaml")
    assert settings == _settings()


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({"threshold": 0}, "threshold must be strictly between 0 and 1, got 0"),
        ({"threshold": 1}, "threshold must be strictly between 0 and 1, got 1"),
        ({"threshold": 1.5}, "threshold must be strictly between 0 and 1"),
        ({"threshold": "high"}, "threshold must be of type float"),
        ({"decimals": 7}, "decimals must be 0 to 6, got 7"),
        ({"decimals": -1}, "decimals must be 0 to 6, got -1"),
        ({"decimals": True}, "decimals must be of type int"),
        ({"min_cases": 0}, "min_cases must be at least 1"),
        ({"min_cases": 2.5}, "min_cases must be of type int"),
        ({"label_type": "binary"}, "label_type must be one of multi_class, multi_label"),
        ({"labels_list": ["a", "a"]}, "labels_list has duplicates"),
        ({"labels_list": ["a"]}, "multi_class needs at least two classes"),
        ({"treshold": 0.4}, "unknown setting"),
    ],
)
def test_bad_settings_are_refused(tmp_path, overrides, expected):
    path = tmp_path / "parameters.yaml"
    path.write_text("labels_list: [normal, pneumonia]\n")
    with pytest.raises(ConfigError, match=expected):
        load_metrics_settings(path, **overrides)


def test_predictions_are_validated_before_writing(tmp_path):
    with pytest.raises(FormatError, match="outside"):
        write_predictions(tmp_path, {"c0": [0.2, 1.2]}, 2)
    assert not (tmp_path / "predictions.json").exists()
    write_predictions(tmp_path, GOOD, 2)
    assert read_predictions(tmp_path, 2)["c7"].tolist() == [0.65, 0.35]
    assert os.listdir(tmp_path) == ["predictions.json"]
