"""The Data Preparator's three tasks: prepare, sanity_check and statistics.

``prepare`` turns a folder of raw images plus a labels CSV into the prepared format
(:mod:`cxr_tutorial.prepared`); ``sanity_check`` verifies a prepared data set against that
format and lists every problem it finds; ``statistics`` summarises a prepared data set in
a YAML file that a data owner can review before sharing it, with small counts suppressed.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import statistics as stats
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import yaml

from cxr_tutorial import logger
from cxr_tutorial.config import check_labels_list, load_settings
from cxr_tutorial.errors import ConfigError, DataError, FormatError
from cxr_tutorial.images import DEFAULT_MAX_PIXELS, ImageInfo, read_image, resize
from cxr_tutorial.prepared import (
    CASE_ID_PATTERN,
    PreparedWriter,
    open_prepared,
    read_prepared_labels,
)
from cxr_tutorial.progress import tqdm

SOURCES_FILE = "sources.yaml"
"""Aggregate properties of the raw images, written by prepare beside ``format.yaml``."""


@dataclasses.dataclass(frozen=True)
class PrepSettings:
    """Settings of the Data Preparator, read from its ``parameters.yaml``.

    Attributes:
        labels_list: Class names; their order is the column order of the prepared labels
            and of every model's output.
        label_type: ``multi_class`` (one class per case) or ``multi_label``.
        image_size: Side of the square prepared images, in pixels.
        id_column: Column of the raw labels CSV holding the image file name, relative to
            the data folder.
        label_column: Column holding the class (or classes, for multi_label).
        label_separator: Separator between classes in ``label_column`` for multi_label.
        keep_source_ids: ``False`` (default) gives cases pseudonymous ids
            (``case-00001``...); ``True`` keeps the raw image id, which may identify a
            patient.
        skip_bad_cases: ``False`` stops on the first bad input with the full list of
            problems; ``True`` skips bad cases, logs and counts them.
        max_pixels: Largest accepted raw image, in pixels (width x height).
        workers: Processes that decode images; 0 means one per CPU core.
        min_group_size: Smallest count that ``statistics`` reports; smaller counts are
            suppressed.
    """

    labels_list: tuple[str, ...]
    label_type: str = "multi_class"
    image_size: int = 128
    id_column: str = "Image ID"
    label_column: str = "Label"
    label_separator: str = "|"
    keep_source_ids: bool = False
    skip_bad_cases: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 0
    min_group_size: int = 5

    def validate(self, path: Path) -> None:
        """Check values beyond their types (see :func:`cxr_tutorial.config.load_settings`)."""
        check_labels_list(path, self.labels_list, self.label_type)
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"{path}: image_size must be 16 to 1024, got {self.image_size}")
        if self.workers < 0:
            raise ConfigError(f"{path}: workers must be 0 (all cores) or more")
        if self.min_group_size < 1:
            raise ConfigError(f"{path}: min_group_size must be at least 1")
        if self.max_pixels < 1:
            raise ConfigError(f"{path}: max_pixels must be positive")


def load_prep_settings(path: str | Path, **overrides: Any) -> PrepSettings:
    """Read the Data Preparator's ``parameters.yaml``; see :class:`PrepSettings`."""
    return load_settings(PrepSettings, path, **overrides)


@dataclasses.dataclass(frozen=True)
class RawCase:
    """One row of the raw labels file, matched to its image.

    Attributes:
        row: Line number in the CSV (the header is line 1).
        image_id: The id as written in the CSV.
        path: The image file.
        label: 0/1 vector in ``labels_list`` order.
    """

    row: int
    image_id: str
    path: Path
    label: np.ndarray


def _labels_file(labels_path: Path) -> Path:
    """Accept a labels folder holding ``labels.csv`` or the CSV file itself."""
    file = labels_path / "labels.csv" if labels_path.is_dir() else labels_path
    if not file.is_file():
        raise DataError(f"{file}: labels file not found (expected labels.csv)")
    return file


def _safe_relative(image_id: str) -> PurePosixPath | None:
    """Return the id as a relative path inside the data folder, or None if it escapes."""
    text = image_id.replace("\\", "/")
    candidate = PurePosixPath(text)
    if candidate.is_absolute() or ".." in candidate.parts or text.startswith("~"):
        return None
    if len(text) > 1 and text[1] == ":":
        return None
    return candidate


def read_raw_cases(
    data_path: str | Path, labels_path: str | Path, settings: PrepSettings
) -> tuple[list[RawCase], list[str]]:
    """Read the raw labels CSV and match every row to an image file.

    Args:
        data_path: Folder of raw images.
        labels_path: Folder holding ``labels.csv``, or the CSV itself.
        settings: Column names, classes and label type.

    Returns:
        ``(cases, problems)``: the rows that are usable, sorted by image id, and one
        message per problem (a row or a file), each naming the row or the file.

    Raises:
        DataError: If the data folder or labels file is missing, or the CSV lacks the
            configured columns.
    """
    data_path, file = Path(data_path), _labels_file(Path(labels_path))
    if not data_path.is_dir():
        raise DataError(f"{data_path}: data folder not found")
    classes = {name: i for i, name in enumerate(settings.labels_list)}
    problems: list[str] = []
    cases: dict[str, RawCase] = {}
    referenced: set[Path] = set()  # images named by any row, usable or not
    with open(file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [
            c for c in (settings.id_column, settings.label_column)
            if c not in (reader.fieldnames or [])
        ]
        if missing:
            raise DataError(
                f"{file}: missing column(s) {missing}; found {reader.fieldnames}. Set "
                "id_column and label_column in parameters.yaml to the names your file uses"
            )
        for row_number, row in enumerate(reader, start=2):
            image_id = (row.get(settings.id_column) or "").strip()
            raw_label = (row.get(settings.label_column) or "").strip()
            where = f"{file}: row {row_number}"
            if not image_id:
                problems.append(f"{where}: empty {settings.id_column!r}")
                continue
            relative = _safe_relative(image_id)
            if relative is None:
                problems.append(
                    f"{where}: image id {image_id!r} points outside the data folder"
                )
                continue
            referenced.add((data_path / relative).resolve())
            if image_id in cases:
                problems.append(
                    f"{where}: image id {image_id!r} repeats row {cases[image_id].row}"
                )
                continue
            names = (
                [n.strip() for n in raw_label.split(settings.label_separator)]
                if settings.label_type == "multi_label"
                else [raw_label]
            )
            unknown = [n for n in names if n not in classes]
            if unknown or not raw_label:
                problems.append(
                    f"{where}: unknown class {', '.join(map(repr, unknown or [raw_label]))}; "
                    f"expected {' or '.join(settings.labels_list)}"
                )
                continue
            path = data_path / relative
            if not path.is_file():
                problems.append(f"{where}: image {image_id!r} not found in {data_path}")
                continue
            label = np.zeros(len(classes), dtype=np.uint8)
            label[[classes[n] for n in names]] = 1
            cases[image_id] = RawCase(row_number, image_id, path, label)
    for path in sorted(p for p in data_path.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(data_path).parts):
            continue
        if path.resolve() not in referenced:
            problems.append(f"{path}: image has no row in {file}")
    return sorted(cases.values(), key=lambda c: c.image_id), problems


def _decode(job: tuple[Path, int, int]) -> tuple[np.ndarray | None, ImageInfo | None, str]:
    """Decode and resize one image in a worker; errors come back as text."""
    path, size, max_pixels = job
    try:
        pixels, info = read_image(path, max_pixels)
        return resize(pixels, size), info, ""
    except DataError as exc:
        return None, None, str(exc)


def _decoded(jobs: list[tuple[Path, int, int]], workers: int) -> Iterator[tuple[Any, ...]]:
    """Decode jobs in order, in a process pool when ``workers`` > 1."""
    if workers <= 1 or len(jobs) < 2:
        yield from map(_decode, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_decode, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))


def _summarise_sources(infos: list[ImageInfo]) -> dict[str, Any]:
    """Aggregate raw image properties (counts and size ranges, nothing per case)."""
    summary: dict[str, Any] = {}
    for field in ("file_format", "photometric", "modality", "transfer_syntax", "bits"):
        counts = Counter(str(getattr(info, field)) or "none" for info in infos)
        summary[field] = dict(sorted(counts.items()))
    for field in ("width", "height"):
        values = [getattr(info, field) for info in infos]
        summary[field] = {
            "min": min(values), "median": float(stats.median(values)), "max": max(values)
        }
    return summary


def prepare(
    data_path: str | Path,
    labels_path: str | Path,
    output_path: str | Path,
    output_labels_path: str | Path,
    settings: PrepSettings,
) -> dict[str, int]:
    """Run the ``prepare`` task: raw images and labels to the prepared format.

    Inputs are only read. Outputs are written through :class:`PreparedWriter`, so a
    failure leaves the output folders as they were.

    Args:
        data_path: Folder of raw DICOM/PNG/JPEG images.
        labels_path: Folder holding the raw ``labels.csv``.
        output_path: Folder for the prepared images.
        output_labels_path: Folder for the prepared ``labels.csv``.
        settings: The Data Preparator's settings.

    Returns:
        Counts: ``cases`` written, ``skipped`` cases and files.

    Raises:
        DataError: If any input is bad and ``skip_bad_cases`` is false (the message lists
            every problem found), or if no usable case remains.
    """
    cases, problems = read_raw_cases(data_path, labels_path, settings)
    _stop_or_skip(problems, settings, "in the labels and the data folder")
    workers = settings.workers or os.cpu_count() or 1
    logger.info("preparing %d images at %d px with %d worker(s)", len(cases),
                settings.image_size, workers)
    jobs = [(case.path, settings.image_size, settings.max_pixels) for case in cases]
    infos: list[ImageInfo] = []
    decode_problems: list[str] = []
    with PreparedWriter(output_path, output_labels_path, settings.image_size,
                        settings.labels_list, settings.label_type) as writer:
        results = _decoded(jobs, workers)
        for case, (image, info, error) in tqdm(zip(cases, results, strict=True), total=len(cases),
                                                desc="prepare", unit="image"):
            if error:
                decode_problems.append(error)
                continue
            case_id = (
                case.image_id.replace("/", "_") if settings.keep_source_ids
                else f"case-{len(writer) + 1:05d}"
            )
            writer.add(case_id, image, case.label)
            infos.append(info)
        _stop_or_skip(decode_problems, settings, "while decoding images")
        if not len(writer):
            raise DataError(f"{data_path}: no usable case left to prepare")
        writer.commit(sources={"n_cases": len(writer), **_summarise_sources(infos)})
    skipped = len(problems) + len(decode_problems)
    logger.info("prepared %d cases into %s (%d skipped)", len(infos), output_path, skipped)
    return {"cases": len(infos), "skipped": skipped}


def _stop_or_skip(problems: list[str], settings: PrepSettings, stage: str) -> None:
    """Raise one DataError listing every problem, unless skipping is allowed."""
    if not problems:
        return
    if settings.skip_bad_cases:
        for problem in problems:
            logger.warning("skipped: %s", problem)
        return
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise DataError(
        f"{len(problems)} problem(s) {stage} (set skip_bad_cases: true in parameters.yaml "
        f"to skip them instead):\n  {shown}{more}"
    )


def sanity_check(
    data_path: str | Path, labels_path: str | Path, settings: PrepSettings
) -> int:
    """Run the ``sanity_check`` task: verify a prepared data set and its labels.

    Every case is checked; all problems are reported together.

    Args:
        data_path: Prepared data folder.
        labels_path: Prepared labels folder.
        settings: The Data Preparator's settings (classes, label type, image size).

    Returns:
        The number of cases checked.

    Raises:
        FormatError: Listing every problem found.
    """
    problems: list[str] = []
    dataset = open_prepared(data_path)
    spec = dataset.spec
    if spec.labels_list != settings.labels_list:
        problems.append(
            f"format.yaml labels_list {list(spec.labels_list)} differs from parameters "
            f"{list(settings.labels_list)}"
        )
    if spec.label_type != settings.label_type:
        problems.append(f"format.yaml label_type {spec.label_type!r} differs from parameters")
    if spec.image_size != settings.image_size:
        problems.append(
            f"format.yaml image_size {spec.image_size} differs from parameters "
            f"({settings.image_size})"
        )
    labels = read_prepared_labels(labels_path, settings.labels_list)
    seen: set[str] = set()
    for case_id in tqdm(dataset.case_ids, desc="sanity_check", unit="case"):
        if not CASE_ID_PATTERN.match(case_id):
            problems.append(f"case id {case_id!r} is not a valid id")
            continue
        if case_id in seen:
            problems.append(f"case id {case_id!r} appears twice in cases.csv")
        seen.add(case_id)
        try:
            image = dataset.read(case_id)
        except FormatError as exc:
            problems.append(str(exc))
            continue
        if int(image.max()) == int(image.min()):
            problems.append(f"case {case_id}: image is a single flat value ({image.min()})")
        label = labels.get(case_id)
        if label is None:
            problems.append(f"case {case_id}: no row in the prepared labels")
        elif settings.label_type == "multi_class" and int(label.sum()) != 1:
            problems.append(f"case {case_id}: multi_class label must have exactly one 1")
    extra = sorted(set(labels) - seen)
    if extra:
        problems.append(f"{len(extra)} label row(s) have no image, e.g. {extra[:3]}")
    if problems:
        shown = "\n  ".join(problems[:50])
        raise FormatError(f"sanity_check found {len(problems)} problem(s):\n  {shown}")
    logger.info("sanity_check passed: %d cases, %d classes", len(seen), len(spec.labels_list))
    return len(seen)


def suppress(count: int, minimum: int) -> int | str:
    """Report a count, or a suppression marker if it is below the minimum.

    Zero is reported as it is: it says a group is absent and reveals nobody.

    Args:
        count: A number of cases.
        minimum: The configured minimum group size.

    Returns:
        ``count``, or the string ``"<minimum"`` (e.g. ``"<5"``).
    """
    return count if count == 0 or count >= minimum else f"<{minimum}"


def statistics(
    data_path: str | Path,
    labels_path: str | Path,
    output_path: str | Path,
    settings: PrepSettings,
) -> dict[str, Any]:
    """Run the ``statistics`` task: a reviewable summary of a prepared data set.

    Counts below ``min_group_size`` are replaced by ``"<min_group_size"``; with fewer cases
    than that in total, only the suppressed total is reported.

    Args:
        data_path: Prepared data folder.
        labels_path: Prepared labels folder.
        output_path: The YAML file to write.
        settings: The Data Preparator's settings.

    Returns:
        The statistics as written.
    """
    dataset = open_prepared(data_path)
    labels = read_prepared_labels(labels_path, settings.labels_list)
    minimum = settings.min_group_size
    n_cases = len(dataset)
    result: dict[str, Any] = {
        "min_group_size": minimum,
        "n_cases": suppress(n_cases, minimum),
    }
    if n_cases >= minimum:
        per_class = np.sum([labels[c] for c in dataset.case_ids if c in labels], axis=0)
        result["cases_per_class"] = {
            name: suppress(int(n), minimum) for name, n in zip(settings.labels_list, per_class)
        }
        result["prepared_image_size"] = dataset.spec.image_size
        total, total_sq = 0.0, 0.0
        for _, batch in dataset.batches(256):
            values = batch.astype(np.float64) / 255.0
            total += float(values.mean(axis=(1, 2, 3)).sum())
            total_sq += float((values**2).mean(axis=(1, 2, 3)).sum())
        mean = total / n_cases
        result["pixel_mean"] = round(mean, 4)
        result["pixel_std"] = round(float(np.sqrt(max(total_sq / n_cases - mean**2, 0.0))), 4)
        result["sources"] = _suppressed_sources(Path(data_path) / SOURCES_FILE, minimum)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(output_path.name + ".partial")
    partial.write_text(yaml.safe_dump(result, sort_keys=False), encoding="utf-8")
    os.replace(partial, output_path)
    logger.info("statistics of %d cases written to %s", n_cases, output_path)
    return result


def _suppressed_sources(path: Path, minimum: int) -> dict[str, Any]:
    """Read ``sources.yaml`` and suppress its small counts."""
    if not path.is_file():
        return {}
    sources = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: dict[str, Any] = {}
    for key, value in sources.items():
        if key == "n_cases":
            continue
        if isinstance(value, dict) and key not in ("width", "height"):
            out[key] = {str(k): suppress(int(v), minimum) for k, v in value.items()}
        else:
            out[f"raw_{key}"] = value
    return out


def labels_as_names(labels: Sequence[int], labels_list: Sequence[str]) -> str:
    """Render a 0/1 label vector as class names joined by ``|`` (for display)."""
    return "|".join(name for name, v in zip(labels_list, labels) if v) or "(none)"
