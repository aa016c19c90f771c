"""The predictions file: what a Model cube writes and the Metrics cube reads.

``<output_path>/predictions.json`` maps each case id to a list of probabilities, one per
class in ``labels_list`` order, each a finite number in ``[0, 1]``::

    {"case-00001": [0.91, 0.09], "case-00002": [0.12, 0.88]}

For ``multi_class`` the list is a softmax (it sums to 1); for ``multi_label`` each value
is an independent sigmoid. This is the shape MedPerf's chest X-ray example uses.
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


def check_predictions(
    predictions: Mapping[str, Sequence[float]], n_classes: int, source: str = "predictions"
) -> None:
    """Validate predictions against the contract.

    Args:
        predictions: Case id to probabilities.
        n_classes: Expected length of every probability list.
        source: Where the predictions come from, for the message.

    Raises:
        FormatError: Naming how many cases break the contract and one example of each
            kind of problem.
    """
    if not predictions:
        raise FormatError(f"{source}: no predictions (an empty set cannot be evaluated)")
    wrong_length, not_finite, out_of_range = [], [], []
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
    messages = []
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
            f"(e.g. {out_of_range[0]!r})"
        )
    if messages:
        raise FormatError(f"{source}: " + "; ".join(messages))


def write_predictions(
    output_path: str | Path, predictions: Mapping[str, Sequence[float]], n_classes: int
) -> Path:
    """Validate and write ``predictions.json`` atomically.

    Args:
        output_path: Output folder.
        predictions: Case id to probabilities.
        n_classes: Number of classes.

    Returns:
        The file written.

    Raises:
        FormatError: If the predictions break the contract; nothing is written then.
    """
    check_predictions(predictions, n_classes, "predictions to write")
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
