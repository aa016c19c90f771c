"""The Metrics cube's ``evaluate`` task: correct figures that are safe to release.

``results.yaml`` is the only file that leaves a hospital. This module computes the figures
with scikit-learn, then decides which of them may be released; ``docs/results_format.md``
documents the file, field by field, and the reasoning behind each rule. In short:

* **Decisions.** Per class, a case is predicted positive when its probability for that class
  is at least ``threshold`` (one class against the rest, for both label types). The overall
  ``accuracy`` and ``balanced_accuracy`` of ``multi_class`` use the argmax instead, the one
  class the model picks; the overall ``subset_accuracy`` of ``multi_label`` counts the cases
  whose every class is right at the threshold.
* **No small cells.** No released figure, together with ``n_cases`` and the other released
  figures, lets a reader work out a count of 1 to ``min_cases - 1`` cases (zero is not a
  small count). So, in this order:

  1. fewer than ``min_cases`` cases in total: every figure is withheld;
  2. a class with 1 to ``min_cases - 1`` positive or negative cases: all its figures are
     withheld; for ``multi_class``, whose class sizes add up to ``n_cases``, the next
     smallest classes are withheld with it until the withheld classes hold at least
     ``min_cases`` cases;
  3. a class whose confusion matrix at the threshold has a cell of 1 to ``min_cases - 1``:
     its threshold figures (accuracy, balanced accuracy, sensitivity, specificity, F1)
     are withheld; its AUC and loss, which reveal no count, are released;
  4. an overall threshold figure is withheld when a cell it depends on is small;
  5. each macro average averages the released values only and says how many.

* **Undefined figures.** A class whose labels hold a single value has no AUC, and no
  sensitivity (no positive case) or specificity (no negative case): NaN, written as
  ``null``, listed under ``undefined``, warned about and left out of the macro averages.

Nothing per case is ever written: no case ids, probabilities, curves or confusion-matrix
cells. :func:`plot_local_views` draws the ROC curves and confusion matrix for the eyes of
whoever runs the task, and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
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
from cxr_tutorial.errors import ConfigError, CxrTutorialError, FormatError
from cxr_tutorial.predictions import PREDICTIONS_FILE, read_predictions
from cxr_tutorial.prepared import read_prepared_labels

RESULTS_FORMAT = "cxr-tutorial-results"
RESULTS_VERSION = 1

WITHHELD = "withheld"
"""What ``results.yaml`` holds instead of a number for a withheld figure."""

THRESHOLD_FIGURES = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")
"""Per-class figures that depend on the decision threshold, withheld together."""

CLASS_KEYS = ("n_positive", "n_negative", "auc", "loss", *THRESHOLD_FIGURES)
"""The keys of every ``per_class`` entry, in file order."""

MACRO_FIGURES = ("auc", *THRESHOLD_FIGURES)
"""Per-class figures averaged over classes into ``overall.<name>_macro``."""

PROBABILITY_FLOOR = 1e-7
"""Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` for the loss, as Keras does, so that a
hard 0 for the true class costs 16.1 rather than infinity."""

SOFTMAX_TOLERANCE = 1e-3
"""How far from 1 the probabilities of one ``multi_class`` case may sum (they are rounded)."""


class UndefinedMetricWarning(UserWarning):
    """A figure is undefined on this data, e.g. the AUC of a class without positive cases."""


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """Settings of the Metrics cube, read from its ``parameters.yaml``.

    Attributes:
        labels_list: Class names in the order of the prediction vectors; its length must
            equal the length of every vector in ``predictions.json``.
        label_type: ``multi_class`` (one class per case; the overall accuracy uses the
            argmax) or ``multi_label`` (any subset of classes per case).
        threshold: A class counts as predicted when its probability is >= this, for the
            per-class figures (both label types) and ``multi_label``'s subset accuracy.
            Strictly between 0 and 1.
        min_cases: Smallest count of cases a released figure may reveal, and smallest site
            that releases anything; at least 1 (1 turns withholding off). Default 5.
        decimals: Decimals kept in released figures, 0 to 6.
    """

    labels_list: tuple[str, ...]
    label_type: str = "multi_class"
    threshold: float = 0.5
    min_cases: int = 5
    decimals: int = 4

    def validate(self, path: Path) -> None:
        """Check values beyond their types.

        Args:
            path: The parameters file, for the messages.

        Raises:
            ConfigError: Naming the setting, the value and the allowed range.
        """
        check_labels_list(path, self.labels_list, self.label_type)
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(
                f"{path}: threshold must be strictly between 0 and 1, got {self.threshold}")
        if self.min_cases < 1:
            raise ConfigError(
                f"{path}: min_cases must be at least 1 (1 releases everything), "
                f"got {self.min_cases}")
        if not 0 <= self.decimals <= 6:
            raise ConfigError(f"{path}: decimals must be 0 to 6, got {self.decimals}")


def load_metrics_settings(path: str | Path, **overrides: Any) -> MetricsSettings:
    """Read the Metrics cube's ``parameters.yaml``; see :class:`MetricsSettings`."""
    return load_settings(MetricsSettings, path, **overrides)


# --- Reading and checking the inputs -------------------------------------------------------


def _read_predictions(path: str | Path, labels_list: tuple[str, ...]) -> dict[str, np.ndarray]:
    """:func:`read_predictions`, saying so when every vector has the wrong length.

    A model cube built for other classes writes vectors of one other length throughout;
    that is a disagreement between the two cubes' ``labels_list``, not bad cases.
    """
    try:
        return read_predictions(path, len(labels_list))
    except FormatError as exc:
        file = Path(path) / PREDICTIONS_FILE if Path(path).is_dir() else Path(path)
        try:
            vectors = list(json.loads(file.read_text(encoding="utf-8")).values())
        except (OSError, ValueError, AttributeError):
            raise exc from None
        lengths = {len(v) if isinstance(v, list) else -1 for v in vectors}
        if len(lengths) != 1 or lengths & {-1, len(labels_list)}:
            raise
        raise FormatError(
            f"{exc}. All {len(vectors)} case(s) have {lengths.pop()} probabilities, but "
            f"labels_list in the Metrics cube's parameters.yaml has {len(labels_list)} "
            f"classes ({', '.join(labels_list)}): the Model cube and the Metrics cube must "
            "use the same labels_list, in the same order"
        ) from exc


def _check_multi_class(
    predictions: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    predictions_path: str | Path,
    labels_path: str | Path,
) -> None:
    """Check that each case has one true class and a softmax that sums to 1."""
    not_one = sorted(i for i, v in labels.items() if int(v.sum()) != 1)
    if not_one:
        raise FormatError(
            f"{labels_path}: {len(not_one)} of {len(labels)} labelled case(s) do not have "
            f"exactly one class set (e.g. {not_one[0]!r}); multi_class needs one class per "
            "case, or set label_type: multi_label"
        )
    sums = {i: float(v.sum()) for i, v in predictions.items()}
    off = sorted(i for i, s in sums.items() if abs(s - 1.0) > SOFTMAX_TOLERANCE)
    if off:
        raise FormatError(
            f"{predictions_path}: {len(off)} of {len(sums)} case(s) have probabilities that "
            f"do not sum to 1 (e.g. {off[0]!r} sums to {sums[off[0]]:.4g}); multi_class "
            "expects a softmax; a model with one sigmoid per class needs label_type: "
            "multi_label"
        )


def align(
    predictions: dict[str, np.ndarray], labels: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Pair predictions with labels by case id.

    Args:
        predictions: Case id to probabilities, shape ``(n_classes,)`` each.
        labels: Case id to 0/1 labels, shape ``(n_classes,)`` each.

    Returns:
        ``(y_true, y_prob)``, both of shape ``(n_cases, n_classes)``, in sorted id order:
        ``int`` 0/1 and ``float64``.

    Raises:
        FormatError: If the two sets of case ids differ, saying how many are missing on
            each side, with an example of each.
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
        raise FormatError(
            "predictions and labels do not cover the same cases: " + "; ".join(parts)
            + f" ({len(labels)} labelled, {len(predictions)} predicted)")
    ids = sorted(labels)
    return (np.stack([labels[i] for i in ids]).astype(int),
            np.stack([predictions[i] for i in ids]).astype(float))


def load_cases(
    predictions_path: str | Path, labels_path: str | Path, settings: MetricsSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Read, check and pair the predictions and the prepared labels.

    Args:
        predictions_path: ``predictions.json`` or the folder holding it.
        labels_path: Prepared labels folder (or its ``labels.csv``).
        settings: The Metrics cube's settings.

    Returns:
        ``(y_true, y_prob)`` as :func:`align` returns them. Per-case data: for
        :func:`compute_metrics` and :func:`plot_local_views`, never for release.

    Raises:
        FormatError: If either file is missing or malformed, the prediction vectors do not
            match ``labels_list``, a probability is NaN or outside [0, 1], a set is empty,
            the case ids differ, or (``multi_class``) a case has not exactly one true class
            or its probabilities do not sum to 1. Each message says how many cases.
    """
    predictions = _read_predictions(predictions_path, settings.labels_list)
    labels = read_prepared_labels(labels_path, settings.labels_list)
    if not labels:
        raise FormatError(f"{labels_path}: no labelled cases (an empty set cannot be "
                          "evaluated)")
    y_true, y_prob = align(predictions, labels)
    if settings.label_type == "multi_class":
        _check_multi_class(predictions, labels, predictions_path, labels_path)
    return y_true, y_prob


# --- Computing the figures -----------------------------------------------------------------


def _class_figures(
    truth: np.ndarray, prob: np.ndarray, pred: np.ndarray
) -> tuple[dict[str, float], dict[str, int]]:
    """One class against the rest: its figures and its confusion-matrix cells.

    Args:
        truth: 0/1 labels, shape ``(n_cases,)``.
        prob: Probabilities of the class, shape ``(n_cases,)``.
        pred: 0/1 decisions at the threshold, shape ``(n_cases,)``.

    Returns:
        ``(figures, cells)``: figures keyed like :data:`CLASS_KEYS` minus the counts (NaN
        where undefined), and the cells ``tp``, ``fn``, ``fp``, ``tn``.
    """
    tn, fp, fn, tp = (int(c) for c in skm.confusion_matrix(truth, pred, labels=[0, 1]).ravel())
    both = 0 < tp + fn < len(truth)
    clipped = np.clip(prob, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    figures = {
        "auc": float(skm.roc_auc_score(truth, prob)) if both else math.nan,
        "loss": float(skm.log_loss(truth, clipped, labels=[0, 1])),
        "accuracy": float(skm.accuracy_score(truth, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(truth, pred)) if both
        else math.nan,
        "sensitivity": float(skm.recall_score(truth, pred, labels=[0, 1],
                                              zero_division=np.nan)),
        "specificity": float(skm.recall_score(truth, pred, labels=[0, 1], pos_label=0,
                                              zero_division=np.nan)),
        "f1": float(skm.f1_score(truth, pred, labels=[0, 1], zero_division=np.nan)),
    }
    return figures, {"tp": tp, "fn": fn, "fp": fp, "tn": tn}


def _multi_class_overall(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[dict, list[int]]:
    """Overall figures of a ``multi_class`` set, and the argmax cells they depend on.

    The loss is the categorical cross-entropy. Accuracy and balanced accuracy judge the
    argmax; balanced accuracy averages the recall of the classes that have cases.
    """
    n_cases, n_classes = y_true.shape
    classes = list(range(n_classes))
    true_idx, pred_idx = y_true.argmax(axis=1), y_prob.argmax(axis=1)
    clipped = np.clip(y_prob, PROBABILITY_FLOOR, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        # An absent class is predicted by mistake: the recall of the classes present is
        # still right, and balanced_accuracy_n_classes says how many there were.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(skm.balanced_accuracy_score(true_idx, pred_idx))
    figures = {
        "loss": float(skm.log_loss(true_idx, clipped, labels=classes)),
        "accuracy": float(skm.accuracy_score(true_idx, pred_idx)),
        "balanced_accuracy": balanced,
        "balanced_accuracy_n_classes": len(np.unique(true_idx)),
    }
    matrix = skm.confusion_matrix(true_idx, pred_idx, labels=classes)
    cells = []
    for k in classes:
        tp, row, column = int(matrix[k, k]), int(matrix[k].sum()), int(matrix[:, k].sum())
        cells += [tp, row - tp, column - tp, n_cases - row - column + tp]
    return figures, cells


def _multi_label_overall(
    y_true: np.ndarray, y_pred: np.ndarray, class_losses: list[float]
) -> tuple[dict, list[int]]:
    """Overall figures of a ``multi_label`` set, and the counts they reveal.

    The loss is the binary cross-entropy averaged over every case and class (the mean of
    the per-class losses); subset accuracy counts cases whose every class is right.
    """
    exact = int((y_true == y_pred).all(axis=1).sum())
    figures = {
        "loss": float(np.mean(class_losses)),
        "subset_accuracy": float(skm.accuracy_score(y_true, y_pred)),
    }
    return figures, [exact, len(y_true) - exact]


def _between(minimum: int) -> str:
    """The small counts, in words: ``1 to 4`` for a minimum of 5."""
    return "1" if minimum == 2 else f"1 to {minimum - 1}"


def _size_withheld(
    counts: dict[str, tuple[int, int]], settings: MetricsSettings
) -> dict[str, str]:
    """Classes whose every figure is withheld because of their size, with the reason.

    Args:
        counts: Class name to ``(n_positive, n_negative)``.
        settings: For ``min_cases`` and ``label_type``.

    Returns:
        Class name to the reason, for rule 2 of the module docstring.
    """
    minimum = settings.min_cases
    small = {name for name, pair in counts.items() if any(0 < c < minimum for c in pair)}
    reasons = {name: f"all figures: {_between(minimum)} positive or negative case(s)"
               for name in small}
    if settings.label_type != "multi_class" or not small:
        return reasons
    # Class sizes add up to n_cases, so the withheld ones together must be no small count.
    total = sum(counts[name][0] for name in small)
    others = sorted((counts[n][0], i, n) for i, n in enumerate(counts)
                    if n not in small and counts[n][0] > 0)
    first = sorted(small, key=list(counts).index)[0]
    while 0 < total < minimum and others:
        size, _, name = others.pop(0)
        total += size
        reasons[name] = (f"all figures: withheld along with per_class.{first}, so that "
                         "class sizes cannot be worked out from n_cases")
    return reasons


def _undefined_reason(figure: str, n_positive: int) -> str:
    """Why a per-class figure is NaN (only classes whose labels hold one value have any)."""
    missing = "no positive case" if n_positive == 0 else "no negative case"
    if figure == "auc":
        return f"the labels hold a single value ({missing})"
    if figure == "f1":
        return "no positive case and no positive prediction"
    return missing


def _round(value: Any, decimals: int) -> Any:
    """A value as released: floats rounded, NaN as None (YAML null), others unchanged."""
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else round(float(value), decimals)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _warn_single_valued(counts: dict[str, tuple[int, int]]) -> None:
    """Log, and warn once, about each class whose labels hold a single value."""
    for name, (positives, negatives) in counts.items():
        if positives and negatives:
            continue
        message = (f"class {name!r}: the labels hold a single value "
                   f"({'no positive' if positives == 0 else 'no negative'} case): its AUC "
                   "and some threshold figures are undefined (NaN) and left out of the "
                   "macro averages")
        logger.warning(message)
        warnings.warn(message, UndefinedMetricWarning, stacklevel=3)


def _release_classes(
    figures: dict[str, dict[str, float]],
    cells: dict[str, dict[str, int]],
    settings: MetricsSettings,
    everything: bool,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The ``per_class`` entries as released (rules 1 to 3), and why things were withheld.

    Args:
        figures: Class name to its figures, from :func:`_class_figures`.
        cells: Class name to its confusion-matrix cells at the threshold.
        settings: For ``min_cases``, ``label_type`` and ``threshold``.
        everything: Whether the whole site is below ``min_cases``.

    Returns:
        ``(per_class, withheld)``: entries keyed like :data:`CLASS_KEYS`, unrounded.
    """
    minimum = settings.min_cases
    counts = {n: (c["tp"] + c["fn"], c["fp"] + c["tn"]) for n, c in cells.items()}
    whole = {} if everything else _size_withheld(counts, settings)
    per_class, withheld = {}, []
    for name, (positives, negatives) in counts.items():
        entry = {"n_positive": positives, "n_negative": negatives, **figures[name]}
        if everything or name in whole:
            entry = dict.fromkeys(CLASS_KEYS, WITHHELD)
            if name in whole:
                withheld.append(f"per_class.{name}: {whole[name]}")
        elif any(0 < c < minimum for c in cells[name].values()):
            entry.update(dict.fromkeys(THRESHOLD_FIGURES, WITHHELD))
            withheld.append(
                f"per_class.{name}: {', '.join(THRESHOLD_FIGURES)}: at threshold "
                f"{settings.threshold} they would reveal a count of {_between(minimum)} "
                "case(s) (a cell of the confusion matrix of this class)")
        per_class[name] = entry
    return per_class, withheld


def _release_overall(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    y_pred: np.ndarray,
    class_losses: list[float],
    settings: MetricsSettings,
) -> tuple[dict[str, Any], list[str]]:
    """The overall figures as released (rule 4), before the macro averages.

    Returns:
        ``(overall, withheld)``, unrounded.
    """
    minimum = settings.min_cases
    if settings.label_type == "multi_class":
        overall, cells = _multi_class_overall(y_true, y_prob)
        decided = ["accuracy", "balanced_accuracy"]
        what = "a cell of the confusion matrix of the argmax decisions"
    else:
        overall, cells = _multi_label_overall(y_true, y_pred, class_losses)
        decided, what = ["subset_accuracy"], "cases with every class right, or not"
    if not any(0 < c < minimum for c in cells):
        return overall, []
    overall.update(dict.fromkeys(decided, WITHHELD))
    return overall, [f"overall: {', '.join(decided)}: they would reveal a count of "
                     f"{_between(minimum)} case(s) ({what})"]


def _add_macros(overall: dict[str, Any], per_class: dict[str, dict[str, Any]]) -> list[str]:
    """Add each macro average of the released, defined values and its class count (rule 5).

    Returns:
        The ``undefined`` notes for the per-class NaNs and for empty averages.
    """
    undefined = []
    for name, entry in per_class.items():
        for figure, value in entry.items():
            if isinstance(value, float) and math.isnan(value):
                reason = _undefined_reason(figure, entry["n_positive"])
                undefined.append(f"per_class.{name}.{figure}: {reason}; left out of "
                                 f"{figure}_macro")
    for figure in MACRO_FIGURES:
        values = [e[figure] for e in per_class.values()
                  if isinstance(e[figure], float) and not math.isnan(e[figure])]
        overall[f"{figure}_macro"] = float(np.mean(values)) if values else math.nan
        overall[f"{figure}_macro_n_classes"] = len(values)
        if not values:
            undefined.append(f"overall.{figure}_macro: no class has a released value of "
                             f"{figure} to average")
    return undefined


def compute_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, settings: MetricsSettings
) -> dict[str, Any]:
    """Compute the releasable metrics.

    Args:
        y_true: 0/1 array of shape ``(n_cases, n_classes)``, ``n_cases >= 1``.
        y_prob: Probabilities in [0, 1], shape ``(n_cases, n_classes)``.
        settings: Classes, label type, threshold, minimum count, rounding.

    Returns:
        The content of ``results.yaml``: keys ``format``, ``version``, ``label_type``,
        ``labels_list``, ``threshold``, ``min_cases``, ``decimals``, ``n_cases``,
        ``overall``, ``per_class``, ``withheld`` and ``undefined`` (see
        ``docs/results_format.md``). Figures are numbers, ``None`` (undefined) or
        :data:`WITHHELD`.

    Warns:
        UndefinedMetricWarning: Once per class whose labels hold a single value (also
            logged), whether or not its figures are released.

    Raises:
        FormatError: If the arrays do not have the shapes above.
    """
    names, minimum, decimals = settings.labels_list, settings.min_cases, settings.decimals
    if y_true.ndim != 2 or y_true.shape != y_prob.shape or y_true.shape[1] != len(names) \
            or len(y_true) == 0:
        raise FormatError(f"labels {y_true.shape} and probabilities {y_prob.shape} must "
                          f"both have shape (n_cases >= 1, {len(names)})")
    n_cases = len(y_true)
    y_pred = (y_prob >= settings.threshold).astype(int)
    figures, cells = {}, {}
    for k, name in enumerate(names):
        figures[name], cells[name] = _class_figures(y_true[:, k], y_prob[:, k], y_pred[:, k])
    _warn_single_valued({n: (c["tp"] + c["fn"], c["fp"] + c["tn"]) for n, c in cells.items()})

    everything = n_cases < minimum
    per_class, withheld = _release_classes(figures, cells, settings, everything)
    overall, overall_withheld = _release_overall(
        y_true, y_prob, y_pred, [figures[n]["loss"] for n in names], settings)
    undefined = _add_macros(overall, per_class)
    withheld += overall_withheld
    if everything:
        overall = dict.fromkeys(overall, WITHHELD)
        withheld, undefined = [f"all figures: fewer than {minimum} cases in total"], []
    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "label_type": settings.label_type,
        "labels_list": list(names),
        "threshold": settings.threshold,
        "min_cases": minimum,
        "decimals": decimals,
        "n_cases": f"<{minimum}" if everything else n_cases,
        "overall": {k: _round(v, decimals) for k, v in overall.items()},
        "per_class": {n: {k: _round(v, decimals) for k, v in e.items()}
                      for n, e in per_class.items()},
        "withheld": withheld,
        "undefined": undefined,
    }


# --- The task ------------------------------------------------------------------------------


def _set_aside(output_path: Path) -> Path | None:
    """Move the results of an earlier run out of the way, so a failure cannot leave them.

    Returns:
        Where they went (``<name>.previous``), or None if there were none.
    """
    if not output_path.exists():
        return None
    previous = output_path.with_name(output_path.name + ".previous")
    os.replace(output_path, previous)
    logger.info("results of an earlier run moved to %s until this run succeeds", previous)
    return previous


def _write_yaml(output_path: Path, results: dict[str, Any]) -> None:
    """Write atomically: the file is complete or absent, never half-written."""
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(output_path.name + ".partial")
    try:
        partial.write_text(yaml.safe_dump(results, sort_keys=False, width=4096), encoding="utf-8")
        os.replace(partial, output_path)
    finally:
        partial.unlink(missing_ok=True)


def evaluate(
    predictions_path: str | Path,
    labels_path: str | Path,
    output_path: str | Path,
    settings: MetricsSettings,
) -> dict[str, Any]:
    """Run the ``evaluate`` task: predictions plus labels to ``results.yaml``.

    ``results.yaml`` is the only file written. A results file already at ``output_path``
    (an earlier run's) is first renamed ``<name>.previous``; if this run fails, it stays
    there, so the earlier figures cannot pass for this run's, and the error says so; if
    this run succeeds, it is deleted.

    Args:
        predictions_path: ``predictions.json`` or the folder holding it.
        labels_path: Prepared labels folder (or its ``labels.csv``).
        output_path: The results YAML file to write.
        settings: The Metrics cube's settings.

    Returns:
        The results as written (see :func:`compute_metrics`).

    Raises:
        FormatError: If ``output_path`` is a folder, or the inputs are malformed or do not
            match (see :func:`load_cases`); no results file is left at ``output_path``.
    """
    output_path = Path(output_path)
    if output_path.is_dir():
        raise FormatError(f"{output_path}: output_path must be a file, e.g. results.yaml")
    previous = _set_aside(output_path)
    try:
        y_true, y_prob = load_cases(predictions_path, labels_path, settings)
        results = compute_metrics(y_true, y_prob, settings)
        _write_yaml(output_path, results)
    except CxrTutorialError as exc:
        if previous is None:
            raise
        raise type(exc)(f"{exc}\nNo results were written; the results file of an earlier "
                        f"run was moved to {previous}, since it does not describe these "
                        "inputs") from exc
    output_path.with_name(output_path.name + ".previous").unlink(missing_ok=True)
    logger.info("metrics over %s cases written to %s (%d withheld, %d undefined)",
                results["n_cases"], output_path, len(results["withheld"]),
                len(results["undefined"]))
    return results


def plot_local_views(y_true: np.ndarray, y_prob: np.ndarray, settings: MetricsSettings):
    """Draw the ROC curves and the confusion matrix, for local eyes only.

    These are exactly what ``results.yaml`` must never hold: a ROC curve has a step per
    case, and a confusion matrix holds small cells. The figure is returned, never saved.

    Args:
        y_true: 0/1 labels, shape ``(n_cases, n_classes)``.
        y_prob: Probabilities, shape ``(n_cases, n_classes)``.
        settings: Classes, label type and threshold.

    Returns:
        A matplotlib ``Figure``: one ROC panel (one curve per class that has positive and
        negative cases), then the argmax confusion matrix (``multi_class``) or one 2x2
        matrix per class at the threshold (``multi_label``).
    """
    import matplotlib.pyplot as plt

    names = settings.labels_list
    multi_class = settings.label_type == "multi_class"
    panels = 2 if multi_class else 1 + len(names)
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4), squeeze=False)
    roc = axes[0][0]
    for k, name in enumerate(names):
        if 0 < y_true[:, k].sum() < len(y_true):
            skm.RocCurveDisplay.from_predictions(y_true[:, k], y_prob[:, k], name=name, ax=roc)
    roc.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc.set_title("ROC, each class against the rest")
    if multi_class:
        skm.ConfusionMatrixDisplay.from_predictions(
            y_true.argmax(axis=1), y_prob.argmax(axis=1), labels=list(range(len(names))),
            display_labels=list(names), ax=axes[0][1], colorbar=False)
        axes[0][1].set_title("argmax decisions")
    else:
        matrices = skm.multilabel_confusion_matrix(
            y_true, (y_prob >= settings.threshold).astype(int))
        for k, name in enumerate(names):
            skm.ConfusionMatrixDisplay(matrices[k], display_labels=["no", "yes"]).plot(
                ax=axes[0][k + 1], colorbar=False)
            axes[0][k + 1].set_title(f"{name} at threshold {settings.threshold}")
    figure.tight_layout()
    return figure
