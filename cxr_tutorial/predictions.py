"""The predictions file: what a Model cube writes and the Metrics cube reads.

``<output_path>/predictions.json`` is one JSON object. Each key is a case id from the
prepared data's ``cases.csv`` (every case, no other); each value is a list of
probabilities, one per class in ``labels_list`` order, each a finite number in ``[0, 1]``
rounded to 6 decimals::

    {"case-00001": [0.91, 0.09], "case-00002": [0.12, 0.88]}

For ``multi_class`` the list is a softmax: it sums to 1 and the predicted class is the
largest value. For ``multi_label`` each value is an independent sigmoid: the probability
that the case shows that class. This is the file and shape MedPerf's chest X-ray example
uses, so metrics written for it read ours.

A Model cube writes the file with :func:`write_predictions`, which validates it first and
writes nothing on failure; the Metrics cube reads it with :func:`read_predictions`. A
model owner who brings a model from another framework keeps this one file and its rules.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cxr_tutorial.errors import FormatError

PREDICTIONS_FILE = "predictions.json"
SUM_TOLERANCE = 1e-3
"""How far a ``multi_class`` probability list may sum from 1 (rounding, float32)."""


def check_predictions(
    predictions: Mapping[str, Sequence[float]],
    n_classes: int,
    source: str = "predictions",
    *,
    case_ids: Sequence[str] | None = None,
    label_type: str | None = None,
) -> None:
    """Validate predictions against the contract.

    Args:
        predictions: Case id to probabilities.
        n_classes: Expected length of every probability list.
        source: Where the predictions come from, for the message.
        case_ids: If given, the predictions must cover exactly these cases.
        label_type: If ``multi_class``, every list must also sum to 1 (within
            :data:`SUM_TOLERANCE`), as a softmax does. ``multi_label`` or ``None``: no
            constraint across classes.

    Raises:
        FormatError: Naming how many cases break the contract and one example of each
            kind of problem.
    """
    if not predictions:
        raise FormatError(f"{source}: no predictions (an empty set cannot be evaluated)")
    messages = [] if case_ids is None else _check_ids(predictions, case_ids)
    wrong_length, not_finite, out_of_range, not_summing = [], [], [], []
    for case_id, values in predictions.items():
        if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != n_classes:
            wrong_length.append(case_id)
            continue
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError):
            not_finite.append(case_id)
            continue
        if not all(math.isfinite(v) for v in floats):
            not_finite.append(case_id)
        elif not all(0.0 <= v <= 1.0 for v in floats):
            out_of_range.append(case_id)
        elif label_type == "multi_class" and abs(math.fsum(floats) - 1.0) > SUM_TOLERANCE:
            not_summing.append((case_id, math.fsum(floats)))
    if wrong_length:
        messages.append(
            f"{len(wrong_length)} case(s) do not have exactly {n_classes} probabilities "
            f"(e.g. {wrong_length[0]!r})"
        )
    if not_finite:
        messages.append(
            f"{len(not_finite)} case(s) have NaN, infinite or non-numeric values "
            f"(e.g. {not_finite[0]!r})"
        )
    if out_of_range:
        messages.append(
            f"{len(out_of_range)} case(s) have probabilities outside [0, 1] "
            f"(e.g. {out_of_range[0]!r}); a model must end in a softmax or sigmoid, "
            "not output logits"
        )
    if not_summing:
        case_id, total = not_summing[0]
        messages.append(
            f"{len(not_summing)} case(s) have multi_class probabilities that do not sum to 1 "
            f"(e.g. {case_id!r}: {total:.4f}); a multi_class model ends in a softmax, a "
            "multi_label one in sigmoids: check label_type"
        )
    if messages:
        raise FormatError(f"{source}: " + "; ".join(messages))


def _check_ids(predictions: Mapping[str, object], case_ids: Sequence[str]) -> list[str]:
    """Compare predicted case ids with the expected ones; describe any difference."""
    expected = set(case_ids)
    missing = [c for c in case_ids if c not in predictions]
    extra = sorted(set(predictions) - expected)
    messages = []
    if missing:
        messages.append(f"{len(missing)} of the {len(expected)} case(s) have no prediction "
                        f"(e.g. {missing[0]!r})")
    if extra:
        messages.append(f"{len(extra)} prediction(s) are for cases not in the data "
                        f"(e.g. {extra[0]!r})")
    return messages


def write_predictions(
    output_path: str | Path,
    predictions: Mapping[str, Sequence[float]],
    n_classes: int,
    *,
    case_ids: Sequence[str] | None = None,
    label_type: str | None = None,
) -> Path:
    """Validate and write ``predictions.json`` atomically.

    Args:
        output_path: Output folder.
        predictions: Case id to probabilities.
        n_classes: Number of classes.
        case_ids: The prepared data's case ids; if given, the predictions must cover
            exactly these. A Model cube always passes them.
        label_type: ``multi_class`` also requires every list to sum to 1.

    Returns:
        The file written.

    Raises:
        FormatError: If the predictions break the contract; nothing is written then, and
            an earlier ``predictions.json`` in ``output_path`` is left as it was.
    """
    check_predictions(predictions, n_classes, "predictions to write", case_ids=case_ids,
                      label_type=label_type)
    folder = Path(output_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / PREDICTIONS_FILE
    partial = folder / (PREDICTIONS_FILE + ".partial")
    body = {k: [round(float(v), 6) for v in values] for k, values in predictions.items()}
    partial.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, target)
    return target


def read_predictions(path: str | Path, n_classes: int) -> dict[str, np.ndarray]:
    """Read and validate a predictions file.

    Args:
        path: The ``predictions.json`` file or the folder holding it.
        n_classes: Expected number of probabilities per case.

    Returns:
        Case id to a ``float64`` vector of length ``n_classes``.

    Raises:
        FormatError: If the file is missing, is not a JSON object of lists, or breaks the
            contract.
    """
    path = Path(path)
    file = path / PREDICTIONS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FormatError(f"{file}: predictions file not found")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise FormatError(f"{file}: expected a JSON object mapping case ids to lists")
    check_predictions(data, n_classes, str(file))
    return {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}
