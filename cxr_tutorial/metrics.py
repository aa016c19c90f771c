"""The Metrics cube's ``evaluate`` task: figures that are safe to release.

The results file is the only thing that leaves a hospital, so this module decides what
it may hold: aggregate figures only (no per-case values, ids, curves or confusion-matrix
cells), each computed over at least ``min_cases`` cases, rounded to ``decimals``.

Rules, applied in this order:

1. Fewer than ``min_cases`` cases in total: every figure is withheld.
2. A class with fewer than ``min_cases`` positive or negative cases: its per-class figures
   are withheld (a sensitivity over 3 positives describes 3 patients), and it is left out
   of the macro averages, which state how many classes they averaged.
3. A class whose labels hold a single value has no AUC: NaN, with a warning, left out of
   the macro AUC. (With ``min_cases`` >= 1, rule 2 withholds such a class anyway.)

The default minimum, 5, follows the common small-cell rule of health statistics
publishers, which suppress counts of 1 to 4.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn import metrics as skm

from cxr_tutorial import logger
from cxr_tutorial.config import check_labels_list, load_settings
from cxr_tutorial.errors import ConfigError, FormatError
from cxr_tutorial.predictions import read_predictions
from cxr_tutorial.prepared import read_prepared_labels

RESULTS_FORMAT = "cxr-tutorial-results"
RESULTS_VERSION = 1


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """Settings of the Metrics cube, read from its ``parameters.yaml``.

    Attributes:
        labels_list: Class names in the order of the prediction vectors.
        label_type: ``multi_class`` (predicted class = argmax) or ``multi_label``
            (a class is predicted when its probability >= ``threshold``).
        threshold: Decision threshold for multi_label, in ``(0, 1)``.
        min_cases: Smallest group a released figure may describe.
        decimals: Decimals kept in released figures (0 to 6).
    """

    labels_list: tuple[str, ...]
    label_type: str = "multi_class"
    threshold: float = 0.5
    min_cases: int = 5
    decimals: int = 4

    def validate(self, path: Path) -> None:
        """Check values beyond their types."""
        check_labels_list(path, self.labels_list, self.label_type)
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"{path}: threshold must be between 0 and 1, got {self.threshold}")
        if self.min_cases < 1:
            raise ConfigError(f"{path}: min_cases must be at least 1")
        if not 0 <= self.decimals <= 6:
            raise ConfigError(f"{path}: decimals must be 0 to 6, got {self.decimals}")


def load_metrics_settings(path: str | Path, **overrides: Any) -> MetricsSettings:
    """Read the Metrics cube's ``parameters.yaml``; see :class:`MetricsSettings`."""
    return load_settings(MetricsSettings, path, **overrides)


def align(
    predictions: dict[str, np.ndarray], labels: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Pair predictions with labels by case id.

    Args:
        predictions: Case id to probabilities, shape ``(n_classes,)`` each.
        labels: Case id to 0/1 labels, shape ``(n_classes,)`` each.

    Returns:
        ``(y_true, y_prob)``, both of shape ``(n_cases, n_classes)``, in sorted id order.

    Raises:
        FormatError: If the two sets of case ids differ, saying how many are missing on
            each side.
    """
    only_pred = sorted(set(predictions) - set(labels))
    only_label = sorted(set(labels) - set(predictions))
    if only_pred or only_label:
        parts = []
        if only_label:
            parts.append(f"{len(only_label)} labelled case(s) have no prediction "
                         f"(e.g. {only_label[0]!r})")
        if only_pred:
            parts.append(f"{len(only_pred)} predicted case(s) have no label "
                         f"(e.g. {only_pred[0]!r})")
        raise FormatError("predictions and labels do not cover the same cases: "
                          + "; ".join(parts))
    ids = sorted(labels)
    return (np.stack([labels[i] for i in ids]).astype(int),
            np.stack([predictions[i] for i in ids]).astype(float))


def _round(value: float, decimals: int) -> float | None:
    """Round a figure for release; NaN becomes None (YAML null)."""
    return None if math.isnan(value) else round(float(value), decimals)


def compute_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, settings: MetricsSettings
) -> dict[str, Any]:
    """Compute the releasable metrics.

    Args:
        y_true: 0/1 array of shape ``(n_cases, n_classes)``.
        y_prob: Probabilities, shape ``(n_cases, n_classes)``.
        settings: Classes, label type, threshold, minimum group size, rounding.

    Returns:
        The content of ``results.yaml`` (see the module docstring for the rules).
    """
    n_cases, n_classes = y_true.shape
    names, minimum, decimals = settings.labels_list, settings.min_cases, settings.decimals
    result: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "label_type": settings.label_type,
        "labels_list": list(names),
        "min_cases": minimum,
        "n_cases": n_cases if n_cases >= minimum else f"<{minimum}",
    }
    withheld: list[str] = []
    if n_cases < minimum:
        result["withheld"] = [f"all figures: {n_cases} case(s) is fewer than min_cases"]
        return result
    if settings.label_type == "multi_class":
        y_pred = np.zeros_like(y_true)
        y_pred[np.arange(n_cases), y_prob.argmax(axis=1)] = 1
        true_idx = y_true.argmax(axis=1)
        overall = {
            "accuracy": skm.accuracy_score(true_idx, y_pred.argmax(axis=1)),
            "balanced_accuracy": skm.balanced_accuracy_score(true_idx, y_pred.argmax(axis=1)),
            "loss": skm.log_loss(true_idx, np.clip(y_prob, 1e-7, 1 - 1e-7),
                                 labels=list(range(n_classes))),
        }
    else:
        result["threshold"] = settings.threshold
        y_pred = (y_prob >= settings.threshold).astype(int)
        clipped = np.clip(y_prob, 1e-7, 1 - 1e-7)
        bce = -(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped))
        overall = {
            "subset_accuracy": skm.accuracy_score(y_true, y_pred),
            "loss": float(bce.mean()),
        }
    per_class: dict[str, Any] = {}
    aucs: list[float] = []
    for k, name in enumerate(names):
        positives = int(y_true[:, k].sum())
        negatives = n_cases - positives
        if min(positives, negatives) < minimum:
            withheld.append(f"per_class.{name}: fewer than {minimum} positive or negative "
                            "cases")
            if positives in (0, n_cases):
                logger.warning("class %s has a single label value: AUC is undefined (NaN)",
                               name)
            continue
        truth, pred = y_true[:, k], y_pred[:, k]
        tp = int(((truth == 1) & (pred == 1)).sum())
        tn = int(((truth == 0) & (pred == 0)).sum())
        auc = float(skm.roc_auc_score(truth, y_prob[:, k]))
        aucs.append(auc)
        per_class[name] = {
            "auc": auc,
            "sensitivity": tp / positives,
            "specificity": tn / negatives,
            "f1": float(skm.f1_score(truth, pred, zero_division=0.0)),
            "accuracy": float(skm.accuracy_score(truth, pred)),
        }
    overall["auc_macro"] = float(np.mean(aucs)) if aucs else math.nan
    overall["auc_macro_n_classes"] = len(aucs)
    result["overall"] = {
        k: (v if isinstance(v, int) else _round(v, decimals)) for k, v in overall.items()
    }
    result["per_class"] = {
        name: {k: _round(v, decimals) for k, v in figures.items()}
        for name, figures in per_class.items()
    }
    if withheld:
        result["withheld"] = withheld
    if not aucs:
        warnings.warn("no class has enough cases of both values for an AUC", stacklevel=2)
    return result


def evaluate(
    predictions_path: str | Path,
    labels_path: str | Path,
    output_path: str | Path,
    settings: MetricsSettings,
) -> dict[str, Any]:
    """Run the ``evaluate`` task: predictions plus labels to ``results.yaml``.

    Args:
        predictions_path: ``predictions.json`` or the folder holding it.
        labels_path: Prepared labels folder (or its ``labels.csv``).
        output_path: The results YAML file to write.
        settings: The Metrics cube's settings.

    Returns:
        The results as written.

    Raises:
        FormatError: If predictions or labels are malformed or cover different cases;
            no results file is written then.
    """
    predictions = read_predictions(predictions_path, len(settings.labels_list))
    labels = read_prepared_labels(labels_path, settings.labels_list)
    y_true, y_prob = align(predictions, labels)
    results = compute_metrics(y_true, y_prob, settings)
    output_path = Path(output_path)
    if output_path.is_dir():
        raise FormatError(f"{output_path}: output_path must be a file, e.g. results.yaml")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(output_path.name + ".partial")
    partial.write_text(yaml.safe_dump(results, sort_keys=False), encoding="utf-8")
    os.replace(partial, output_path)
    logger.info("metrics over %s cases written to %s", results["n_cases"], output_path)
    return results
