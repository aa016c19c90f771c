"""The Data Preparator's three tasks: prepare, sanity_check and statistics.

``prepare`` turns a folder of raw images plus a labels CSV into the prepared format
(:mod:`cxr_tutorial.prepared`); ``sanity_check`` verifies a prepared data set against that
format and lists every problem it finds; ``statistics`` summarises a prepared data set in
a YAML file that a data owner can review before sharing it, with small counts suppressed.

Bad input never produces a half-written output: every problem found in the labels or the
images is collected as a :class:`Problem` with a reason code (:data:`REASONS`); the run then
stops with the whole list, or, if ``skip_bad_cases`` is set, skips those inputs and reports
them (:class:`PrepareReport`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import multiprocessing
import os
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from cxr_tutorial import logger
from cxr_tutorial.config import check_labels_list, load_settings
from cxr_tutorial.errors import ConfigError, DataError, FormatError
from cxr_tutorial.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_REASONS,
    Decoded,
    ImageError,
    ImageInfo,
    decode_and_resize,
    read_image,
    sniff_format,
)
from cxr_tutorial.prepared import (
    CASE_ID_PATTERN,
    PreparedWriter,
    open_prepared,
    read_prepared_labels,
)
from cxr_tutorial.progress import tqdm

SOURCES_FILE = "sources.yaml"
"""Aggregate properties of the raw images, written by prepare beside ``format.yaml``."""

REASONS: dict[str, str] = {
    "empty_id": "label row without an image id",
    "outside_data_folder": "image id that points outside the data folder",
    "duplicate_id": "image id, or image file, named by more than one label row",
    "unknown_class": "label that is empty or names a class not in labels_list",
    "no_image": "label row whose image file is missing",
    "no_label": "image file without a label row",
    "case_id": "raw id that cannot be kept as a case id (keep_source_ids)",
    **IMAGE_REASONS,
    "crashed": "the decoding process died on this file (decoder crash or out of memory)",
}
"""Why an input can be refused: reason code to its meaning, in the order reports use."""

IGNORED_FILE_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini"})
"""Index and system files that exports carry beside the images (compared case-blind).
Hidden files and folders (name starting with ``.``) are ignored as well."""

PSEUDONYM = re.compile(r"^case-\d{5,}$")
"""Case ids that ``prepare`` gives when ``keep_source_ids`` is false."""


@dataclasses.dataclass(frozen=True)
class PrepSettings:
    """Settings of the Data Preparator, read from its ``parameters.yaml``.

    Attributes:
        labels_list: Class names; their order is the column order of the prepared labels
            and of every model's output.
        label_type: ``multi_class`` (one class per case) or ``multi_label``.
        image_size: Side of the square prepared images, in pixels (16 to 1024).
        id_column: Column of the raw labels CSV holding the image file name, relative to
            the data folder.
        label_column: Column holding the class (or classes, for multi_label).
        label_separator: Separator between classes in ``label_column`` for multi_label.
        no_finding_label: For multi_label, a label value meaning "none of the classes"
            (ChestX-ray14 writes ``No Finding``); such cases get all-zero labels. Empty:
            no such value.
        keep_source_ids: ``False`` (default) gives cases pseudonymous ids
            (``case-00001``...); ``True`` keeps the raw image id (``/`` and other
            characters a file name cannot hold become ``_``), which may identify a
            patient.
        skip_bad_cases: ``False`` stops with the full list of problems; ``True`` skips
            bad inputs, logs them and counts them in the report and ``sources.yaml``.
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
    no_finding_label: str = ""
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
        if self.id_column == self.label_column:
            raise ConfigError(f"{path}: id_column and label_column must differ")
        if not self.label_separator:
            raise ConfigError(f"{path}: label_separator must not be empty")
        if self.no_finding_label and (
            self.label_type != "multi_label" or self.no_finding_label in self.labels_list
        ):
            raise ConfigError(
                f"{path}: no_finding_label is for multi_label only and must not be one of "
                "labels_list"
            )


def load_prep_settings(path: str | Path, **overrides: Any) -> PrepSettings:
    """Read the Data Preparator's ``parameters.yaml``; see :class:`PrepSettings`."""
    return load_settings(PrepSettings, path, **overrides)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad input: a label row or a file.

    Attributes:
        where: The file, or ``<labels.csv>: row N``.
        reason: A key of :data:`REASONS`.
        detail: What is wrong and, where possible, what was expected.
    """

    where: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"


@dataclasses.dataclass(frozen=True, slots=True)
class RawCase:
    """One row of the raw labels file, matched to its image.

    Attributes:
        row: Line number in the CSV (the header is line 1).
        image_id: The id as written in the CSV.
        path: The image file (a string: a Path per case would cost memory at scale).
        label: 0/1 vector in ``labels_list`` order.
        source_id: The case id kept from ``image_id`` when ``keep_source_ids`` is set,
            else ``""`` (a pseudonym is given when the case is written).
    """

    row: int
    image_id: str
    path: str
    label: np.ndarray
    source_id: str = ""


def _add_problem(problems: list[Problem], where: str, reason: str, detail: str) -> None:
    """Append one :class:`Problem` (a shorthand for the many checks of a label row)."""
    problems.append(Problem(where, reason, detail))


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


class _FileIndex:
    """Every file under the data folder, by its path relative to it (``/`` separated).

    Hidden files and folders, :data:`IGNORED_FILE_NAMES` and ``skip`` (the labels file,
    if it lives among the images) are left out. Paths are kept as strings, and the maps
    for case-blind matching and hints are built only when a name is not found: a Path
    per file costs several hundred bytes, which adds up over a hundred thousand images.

    Args:
        data_path: The data folder.
        skip: A file to leave out.
    """

    def __init__(self, data_path: Path, skip: Path) -> None:
        self.files: dict[str, str] = {}
        self._blind: tuple[dict[str, list[str]], dict[str, list[str]]] | None = None
        ignored, skip = 0, skip.resolve()
        for folder, dirs, names in os.walk(data_path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            prefix = os.path.relpath(folder, data_path).replace(os.sep, "/")
            for name in sorted(names):
                path = os.path.join(folder, name)
                if name.startswith(".") or name.casefold() in IGNORED_FILE_NAMES or (
                    name == skip.name and Path(path).resolve() == skip
                ):
                    ignored += 1
                    continue
                self.files[name if prefix == "." else f"{prefix}/{name}"] = path
        if ignored:
            logger.info("ignored %d hidden, index or labels file(s) in %s", ignored, data_path)

    @staticmethod
    def _stem(key: str) -> str:
        """A key compared case-blind and without its extension."""
        return str(PurePosixPath(key.casefold()).with_suffix(""))

    def _maps(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Case-folded key to keys, and case-folded stem to keys; made on first use."""
        if self._blind is None:
            folded: dict[str, list[str]] = {}
            similar: dict[str, list[str]] = {}
            for key in self.files:
                folded.setdefault(key.casefold(), []).append(key)
                similar.setdefault(self._stem(key), []).append(key)
            self._blind = folded, similar
        return self._blind

    def same_file(self, key: str, data_path: Path) -> str:
        """The key of the file ``key`` names: itself, or, where file names ignore case
        (Windows, macOS), the one file whose name differs only in case."""
        if key in self.files:
            return key
        close = self._maps()[0].get(key.casefold(), [])
        if len(close) == 1 and (data_path / key).is_file():
            return close[0]
        return key

    def hint(self, key: str) -> str:
        """A hint naming the one file whose name differs from ``key`` in case or extension."""
        close = self._maps()[1].get(self._stem(key), [])
        return f" (did you mean {close[0]!r}?)" if len(close) == 1 else ""


def _open_labels(file: Path, settings: PrepSettings) -> tuple[Any, csv.DictReader]:
    """Open the raw labels CSV, detecting a ``,``, ``;`` or tab delimiter from its header."""
    handle = open(file, newline="", encoding="utf-8-sig")
    try:
        first = handle.readline()
    except UnicodeDecodeError as exc:
        handle.close()
        raise _not_utf8(file, exc) from None
    delimiter = ","
    for candidate in (",", ";", "\t"):
        header = next(csv.reader([first], delimiter=candidate), [])
        if {settings.id_column, settings.label_column} <= set(header):
            delimiter = candidate
            break
    handle.seek(0)
    reader = csv.DictReader(handle, delimiter=delimiter)
    missing = [c for c in (settings.id_column, settings.label_column)
               if c not in (reader.fieldnames or [])]
    if missing:
        handle.close()
        raise DataError(
            f"{file}: missing column(s) {missing}; found {reader.fieldnames}. Set "
            "id_column and label_column in parameters.yaml to the names your file uses"
        )
    return handle, reader


def _expected(labels_list: Sequence[str]) -> str:
    """``a or b`` for two classes, ``one of a, b, c`` for more."""
    if len(labels_list) == 2:
        return " or ".join(labels_list)
    return "one of " + ", ".join(labels_list)


def _parse_label(raw: str, settings: PrepSettings, classes: Mapping[str, int]
                 ) -> tuple[np.ndarray | None, str]:
    """Turn a raw label cell into a 0/1 vector, or explain why it cannot be."""
    multi = settings.label_type == "multi_label"
    if multi and settings.no_finding_label and raw == settings.no_finding_label:
        return np.zeros(len(classes), dtype=np.uint8), ""
    names = [n.strip() for n in raw.split(settings.label_separator)] if multi else [raw]
    names = [n for n in names if n]
    if not names:
        return None, (f"empty {settings.label_column!r}; expected "
                      f"{_expected(settings.labels_list)}")
    unknown = [n for n in names if n not in classes]
    if not unknown:
        label = np.zeros(len(classes), dtype=np.uint8)
        label[[classes[n] for n in names]] = 1
        return label, ""
    folded = {name.casefold(): name for name in classes}
    hints = [f"did you mean {folded[n.casefold()]!r}?" for n in unknown if n.casefold() in folded]
    if not multi and settings.label_separator in raw:
        hints.append("several classes in one row need label_type: multi_label")
    if multi and settings.no_finding_label in names:
        hints.append(f"{settings.no_finding_label!r} cannot be combined with classes")
    return None, (f"unknown class {', '.join(map(repr, unknown))}; expected "
                  f"{_expected(settings.labels_list)}" + "".join(f" ({h})" for h in hints))


def _source_case_id(image_id: str) -> str:
    """The case id kept from a raw id: characters a file name cannot hold become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id.replace("\\", "/"))


def _not_utf8(file: Path, exc: UnicodeDecodeError) -> DataError:
    """The error for a labels file in another encoding, with the fix."""
    return DataError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                     "UTF-8 (\"CSV UTF-8\" in spreadsheet programs)")


def read_raw_cases(
    data_path: str | Path, labels_path: str | Path, settings: PrepSettings
) -> tuple[list[RawCase], list[Problem]]:
    """Read the raw labels CSV and match every row to an image file.

    Every row and every file is checked and every problem is reported, so a data owner
    can fix an export in one pass. An image id named by more than one row is dropped with
    all its rows (which label would be right cannot be known). Files that no row names
    are reported too: an unlabelled image, or a file that is not an image at all.

    Args:
        data_path: Folder of raw images.
        labels_path: Folder holding ``labels.csv``, or the CSV itself. Its delimiter may
            be ``,``, ``;`` or a tab; it must be UTF-8.
        settings: Column names, classes and label type.

    Returns:
        ``(cases, problems)``: the usable rows sorted by image id, and one
        :class:`Problem` per bad row or file.

    Raises:
        DataError: If the data folder or labels file is missing, unreadable as UTF-8 CSV,
            or lacks the configured columns.
    """
    data_path, file = Path(data_path), _labels_file(Path(labels_path))
    if not data_path.is_dir():
        raise DataError(f"{data_path}: data folder not found")
    index = _FileIndex(data_path, skip=file)
    classes = {name: i for i, name in enumerate(settings.labels_list)}
    problems: list[Problem] = []
    cases: dict[str, RawCase] = {}
    first_row: dict[str, int] = {}  # image id -> first row naming it
    file_owner: dict[str, tuple[int, str]] = {}  # index key -> (row, image id)
    kept_ids: dict[str, tuple[int, str]] = {}  # case id, case-folded -> (row, image id)
    dropped: set[str] = set()
    referenced: set[str] = set()
    handle, reader = _open_labels(file, settings)
    try:
        with handle:
            for row_number, row in enumerate(reader, start=2):
                where = f"{file}: row {row_number}"
                bad = functools.partial(_add_problem, problems, where)
                image_id = (row.get(settings.id_column) or "").strip()
                raw_label = (row.get(settings.label_column) or "").strip()
                if not image_id:
                    bad("empty_id", f"empty {settings.id_column!r}")
                    continue
                relative = _safe_relative(image_id)
                if relative is None:
                    bad("outside_data_folder",
                        f"image id {image_id!r} points outside the data folder")
                    continue
                key = index.same_file(relative.as_posix(), data_path)
                referenced.add(key)
                if image_id in first_row:
                    bad("duplicate_id", f"image id {image_id!r} repeats row "
                                        f"{first_row[image_id]}; all its rows are left out")
                    dropped.add(image_id)
                    continue
                first_row[image_id] = row_number
                if key in file_owner:
                    other_row, other_id = file_owner[key]
                    bad("duplicate_id", f"image id {image_id!r} names the same file as row "
                                        f"{other_row} ({other_id!r}); both are left out")
                    dropped.update((image_id, other_id))
                    continue
                file_owner[key] = (row_number, image_id)
                label, why = _parse_label(raw_label, settings, classes)
                if label is None:
                    bad("unknown_class", why)
                    continue
                path = index.files.get(key)
                if path is None and (data_path / relative).is_file():
                    path = str(data_path / relative)  # e.g. inside a linked folder
                if path is None:
                    bad("no_image", f"image {image_id!r} not found in {data_path}"
                                    + index.hint(key))
                    continue
                source_id = ""
                if settings.keep_source_ids:
                    source_id = _source_case_id(image_id)
                    clash = kept_ids.get(source_id.casefold())
                    if not CASE_ID_PATTERN.match(source_id):
                        bad("case_id", f"image id {image_id!r} cannot be kept as a case id "
                                       "(must start with a letter or digit, at most 128 "
                                       "characters); rename it or set keep_source_ids: false")
                        continue
                    if clash:
                        bad("case_id", f"image id {image_id!r} would get the same case id "
                                       f"{source_id!r} as row {clash[0]} ({clash[1]!r})")
                        dropped.update((image_id, clash[1]))
                        continue
                    kept_ids[source_id.casefold()] = (row_number, image_id)
                cases[image_id] = RawCase(row_number, image_id, path, label, source_id)
    except UnicodeDecodeError as exc:
        raise _not_utf8(file, exc) from None
    except csv.Error as exc:
        raise DataError(f"{file}: line {reader.line_num}: not a readable CSV row ({exc})"
                        ) from None
    for image_id in dropped:
        cases.pop(image_id, None)
    for key, path in index.files.items():
        if key in referenced:
            continue
        if sniff_format(Path(path)) is None:
            problems.append(Problem(path, "not_an_image",
                                    f"not a DICOM, PNG or JPEG file, and no row in {file}"))
        else:
            problems.append(Problem(path, "no_label", f"image has no row in {file}"))
    return sorted(cases.values(), key=lambda c: c.image_id), problems


def decodable_samples(
    cases: Sequence[RawCase], count: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[tuple[RawCase, np.ndarray, ImageInfo]]:
    """The first ``count`` cases whose image decodes, with its pixels, to show them.

    Files that do not decode are passed over: reporting them is ``prepare``'s job, and a
    picture must not stop a run that is allowed to skip them.

    Args:
        cases: Cases from :func:`read_raw_cases`.
        count: How many to return (fewer if fewer decode).
        max_pixels: As in the settings.

    Returns:
        ``(case, pixels, info)`` triples, as :func:`~cxr_tutorial.images.read_image` gives.
    """
    samples = []
    for case in cases:
        if len(samples) == count:
            break
        try:
            samples.append((case, *read_image(case.path, max_pixels)))
        except ImageError:
            continue
    return samples


def _pool_context() -> multiprocessing.context.BaseContext:
    """Start decoding processes from a clean server process where the platform allows.

    Forking a Jupyter kernel, which runs threads, can deadlock a child; ``forkserver``
    forks from a small single-threaded process that has imported the decoders once.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["cxr_tutorial.images", "pydicom", "PIL.Image"])
        return context
    return multiprocessing.get_context("spawn")


def _processes_start() -> bool:
    """Whether a fresh decoding process can start and run a trivial job."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_pool_context()) as pool:
        try:
            return pool.submit(int, "1").result() == 1
        except BrokenProcessPool:
            return False


def _isolated(function: Callable[[Any], Decoded], job: Any) -> Decoded:
    """Run one job alone in a fresh process; a process that dies names its file."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_pool_context()) as pool:
        try:
            return pool.submit(function, job).result()
        except BrokenProcessPool:
            return Decoded(None, None, "crashed", "the decoding process died on this file "
                           "(a decoder crash, or not enough memory for it)")


def _decode_chunk(function: Callable[[Any], Decoded], jobs: list[Any]) -> list[Decoded]:
    """Run a few jobs in one call: a task round trip costs about a millisecond."""
    return [function(job) for job in jobs]


def decode_images(
    jobs: Iterable[Any],
    workers: int,
    function: Callable[[Any], Decoded] = decode_and_resize,
    chunk: int = 4,
) -> Iterator[Decoded]:
    """Decode jobs in order, in ``workers`` processes when more than one.

    Jobs go to the processes ``chunk`` at a time, and at most ``4 * workers`` chunks are
    in flight, so memory stays flat however many jobs there are. Processes start from a
    ``forkserver`` (POSIX) or are spawned, never forked from this one: a Jupyter kernel
    runs threads, and forking them can deadlock. If a process dies (a decoder crash, or
    the system running out of memory), the jobs that were in flight are re-run one by one
    in fresh processes, so that the file responsible is named and the others are still
    decoded.

    Args:
        jobs: Arguments of ``function``, e.g. ``(path, size, max_pixels)`` tuples.
        workers: Processes to use; 1 decodes in this process.
        function: A picklable module-level function returning a :class:`Decoded`.
        chunk: Jobs per task sent to a process.

    Yields:
        One :class:`Decoded` per job, in the order of ``jobs``.

    Raises:
        DataError: If the processes cannot start at all (rather than one file crashing).
    """
    if workers <= 1:
        yield from map(function, jobs)
        return
    remaining = iter(jobs)
    pending: deque[tuple[list[Any], Future[list[Decoded]]]] = deque()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
    try:
        while True:
            while len(pending) < 4 * workers and (batch := list(
                    itertools.islice(remaining, chunk))):
                pending.append((batch, pool.submit(_decode_chunk, function, batch)))
            if not pending:
                return
            try:
                results = pending[0][1].result()
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)
                if not _processes_start():
                    raise DataError(
                        "decoding processes cannot start on this machine; set workers: 1 in "
                        "parameters.yaml (a script that calls prepare must guard its entry "
                        "point with `if __name__ == \"__main__\":`)"
                    ) from None
                suspects = list(pending)
                pending.clear()
                logger.warning("a decoding process died; re-running %d file(s) one by one",
                               sum(len(batch) for batch, _ in suspects))
                for batch, future in suspects:
                    if future.done() and not future.cancelled() and not future.exception():
                        yield from future.result()
                    else:
                        yield from (_isolated(function, job) for job in batch)
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
                continue
            pending.popleft()
            yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _median(counts: Counter[int]) -> float:
    """Median of the values counted in ``counts`` (the mean of the two middle ones)."""
    total, seen, middle = sum(counts.values()), 0, []
    for value in sorted(counts):
        low, seen = seen, seen + counts[value]
        middle.extend(value for rank in ((total - 1) // 2, total // 2) if low <= rank < seen)
    return float(sum(middle) / len(middle))


class SourceSummary:
    """Aggregate properties of the raw images, built one image at a time.

    Only counts are kept (of each format, photometric, bit depth... and of each raw width
    and height), so memory does not grow with the number of images.
    """

    FIELDS = ("file_format", "photometric", "modality", "transfer_syntax", "bits", "voi")
    """The :class:`~cxr_tutorial.images.ImageInfo` fields counted by value."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {field: Counter() for field in self.FIELDS}
        self.sizes: dict[str, Counter[int]] = {"width": Counter(), "height": Counter()}
        self.n_cases = 0

    def add(self, info: ImageInfo) -> None:
        """Count one prepared image."""
        self.n_cases += 1
        for field in self.FIELDS:
            self.counts[field][str(getattr(info, field)) or "none"] += 1
        for field, counter in self.sizes.items():
            counter[int(getattr(info, field))] += 1

    def as_dict(self, skipped: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The content of ``sources.yaml``.

        Args:
            skipped: Skipped inputs per reason code, if any.

        Returns:
            ``n_cases``; for each of :data:`FIELDS` a mapping of value to count; ``width``
            and ``height`` as ``min``, ``median`` and ``max``; ``skipped`` per reason.
        """
        summary: dict[str, Any] = {"n_cases": self.n_cases}
        for field, counter in self.counts.items():
            summary[field] = dict(sorted(counter.items()))
        for field, counter in self.sizes.items():
            if counter:
                summary[field] = {"min": min(counter), "median": _median(counter),
                                  "max": max(counter)}
        summary["skipped"] = {r: n for r in REASONS if (n := (skipped or {}).get(r, 0))}
        return summary


@dataclasses.dataclass(frozen=True)
class PrepareReport:
    """What ``prepare`` did: for the data owner, and it stays at the site.

    It names raw files, so it is shown in the task's log (the executed notebook) and
    never written into the prepared output.

    Attributes:
        cases: Cases written.
        problems: Every input that was skipped (empty unless ``skip_bad_cases``).
        seconds: Wall-clock time of the run.
        workers: Decoding processes used.
    """

    cases: int
    problems: tuple[Problem, ...] = ()
    seconds: float = 0.0
    workers: int = 1

    @property
    def skipped(self) -> int:
        """Number of inputs skipped."""
        return len(self.problems)

    def skipped_by_reason(self) -> dict[str, int]:
        """Skipped inputs per reason code, in the order of :data:`REASONS`."""
        counts = Counter(p.reason for p in self.problems)
        return {reason: counts[reason] for reason in REASONS if counts[reason]}

    def summary(self, examples: int | None = 5) -> str:
        """A text report: counts per reason, each with the files or rows concerned.

        Args:
            examples: Problems listed per reason, the rest being counted; None lists all.

        Returns:
            Lines of text.
        """
        rate = self.cases / self.seconds if self.seconds else 0.0
        lines = [f"{self.cases} cases prepared in {self.seconds:.1f} s ({rate:.1f} images/s, "
                 f"{self.workers} worker(s)); {self.skipped} input(s) skipped"]
        for reason, count in self.skipped_by_reason().items():
            lines.append(f"  {count} x {reason}: {REASONS[reason]}")
            matching = [p for p in self.problems if p.reason == reason]
            lines.extend(f"      {p}" for p in matching[:examples])
            if examples is not None and count > examples:
                lines.append(f"      ... and {count - examples} more")
        return "\n".join(lines)


def prepare(
    data_path: str | Path,
    labels_path: str | Path,
    output_path: str | Path,
    output_labels_path: str | Path,
    settings: PrepSettings,
) -> PrepareReport:
    """Run the ``prepare`` task: raw images and labels to the prepared format.

    Inputs are only read. Cases are written in the order of their raw image ids, each as
    soon as it is decoded (:class:`PreparedWriter`), so memory stays flat in the number of
    images; a failure leaves the output folders as they were.

    Args:
        data_path: Folder of raw DICOM/PNG/JPEG images.
        labels_path: Folder holding the raw ``labels.csv``.
        output_path: Folder for the prepared images.
        output_labels_path: Folder for the prepared ``labels.csv``.
        settings: The Data Preparator's settings.

    Returns:
        A :class:`PrepareReport`.

    Raises:
        DataError: If any input is bad and ``skip_bad_cases`` is false (the message lists
            every problem found), if no usable case remains, or if decoding processes
            cannot start.
    """
    start = time.perf_counter()
    cases, problems = read_raw_cases(data_path, labels_path, settings)
    # These checks take seconds; decoding may take hours, so stop before it.
    _stop_or_skip(problems, settings, "in the labels and the data folder",
                  "\n(images are decoded once these are fixed; a decoding problem, if any, "
                  "shows then)")
    if not cases:
        raise DataError(f"{data_path}: no usable case left to prepare")
    # Starting a process costs about as much as decoding a few images: a handful of
    # images is decoded here rather than in a pool.
    workers = max(1, min(settings.workers or _cpu_count(), len(cases) // 4))
    logger.info("preparing %d images at %d px with %d worker(s)", len(cases),
                settings.image_size, workers)
    summary = SourceSummary()
    decode_problems: list[Problem] = []
    jobs = ((case.path, settings.image_size, settings.max_pixels) for case in cases)
    progress = _Progress(len(cases))
    with PreparedWriter(output_path, output_labels_path, settings.image_size,
                        settings.labels_list, settings.label_type) as writer:
        results = decode_images(jobs, workers)
        for case, result in tqdm(zip(cases, results, strict=True), total=len(cases),
                                 desc="prepare", unit="image"):
            progress.step()
            if result.image is None or result.info is None:
                decode_problems.append(Problem(str(case.path), result.reason, result.message))
                continue
            if decode_problems and not settings.skip_bad_cases:
                continue  # the run will stop: only decode on, to list every problem
            writer.add(case.source_id or f"case-{len(writer) + 1:05d}", result.image,
                       case.label)
            summary.add(result.info)
        _stop_or_skip(decode_problems, settings, "while decoding images")
        if not len(writer):
            raise DataError(f"{data_path}: no usable case left to prepare")
        skipped = tuple(problems + decode_problems)
        writer.commit(sources=summary.as_dict(Counter(p.reason for p in skipped)))
    report = PrepareReport(len(writer), skipped, time.perf_counter() - start, workers)
    logger.info("prepared %d cases into %s (%d skipped) in %.1f s", report.cases, output_path,
                report.skipped, report.seconds)
    return report


def _cpu_count() -> int:
    """CPU cores this process may use (its affinity, where the platform tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class _Progress:
    """Log a progress line every 30 seconds, for runs watched through their log."""

    def __init__(self, total: int, every: float = 30.0) -> None:
        self.total, self.every, self.done = total, every, 0
        self.start = self.last = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / (now - self.start)
            logger.info("prepare: %d of %d images, %.1f images/s, about %.0f s left",
                        self.done, self.total, rate, (self.total - self.done) / rate)


def _stop_or_skip(problems: list[Problem], settings: PrepSettings, stage: str,
                  note: str = "") -> None:
    """Raise one DataError listing every problem (then ``note``), unless skipping is allowed."""
    if not problems:
        return
    if settings.skip_bad_cases:
        for problem in problems[:50]:
            logger.warning("skipped (%s): %s", problem.reason, problem)
        if len(problems) > 50:
            logger.warning("... and %d more skipped %s", len(problems) - 50, stage)
        return
    shown = "\n  ".join(str(p) for p in problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise DataError(
        f"{len(problems)} problem(s) {stage} (set skip_bad_cases: true in parameters.yaml "
        f"to skip them instead):\n  {shown}{more}{note}"
    )


def sanity_check(
    data_path: str | Path, labels_path: str | Path, settings: PrepSettings
) -> int:
    """Run the ``sanity_check`` task: verify a prepared data set and its labels.

    Checks that ``format.yaml`` agrees with the settings; that every case has a valid,
    unique id (a pseudonym unless ``keep_source_ids``), an image of the right shape and
    dtype that is not flat, and exactly one label row of 0/1 values (exactly one 1 for
    multi_class); that no label row or image file lacks its case. Every problem is
    reported together; only a folder that is not a prepared data set at all (no
    ``format.yaml``, another version, wrong label columns) stops at once.

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
    for name, found, wanted in (("labels_list", list(spec.labels_list),
                                 list(settings.labels_list)),
                                ("label_type", spec.label_type, settings.label_type),
                                ("image_size", spec.image_size, settings.image_size)):
        if found != wanted:
            problems.append(f"format.yaml {name} {found!r} differs from parameters.yaml "
                            f"({wanted!r})")
    labels = read_prepared_labels(labels_path, settings.labels_list, problems)
    seen: set[str] = set()
    for case_id in tqdm(dataset.case_ids, desc="sanity_check", unit="case"):
        if not CASE_ID_PATTERN.match(case_id):
            problems.append(f"case id {case_id!r} is not a valid id")
            continue
        if not settings.keep_source_ids and not PSEUDONYM.match(case_id):
            problems.append(f"case id {case_id!r} is not a pseudonym (case-00001...) although "
                            "keep_source_ids is false")
        if case_id in seen:
            problems.append(f"case id {case_id!r} appears twice in cases.csv")
        seen.add(case_id)
        try:
            image = dataset.read(case_id)
        except FormatError as exc:
            problems.append(str(exc))
        else:
            if int(image.max()) == int(image.min()):
                problems.append(f"case {case_id}: image is a single flat value ({image.min()})")
        label = labels.get(case_id)
        if label is None:
            problems.append(f"case {case_id}: no row in the prepared labels")
        elif settings.label_type == "multi_class" and int(label.sum()) != 1:
            problems.append(f"case {case_id}: multi_class label must have exactly one 1")
    extra = sorted(set(labels) - seen)
    if extra:
        problems.append(f"{len(extra)} label row(s) have no case in cases.csv, e.g. {extra[:3]}")
    stray = sorted(
        p.name for p in (dataset.path / "images").iterdir()
        if p.suffix != ".npy" or p.stem not in seen
    ) if (dataset.path / "images").is_dir() else []
    if stray:
        problems.append(f"{len(stray)} file(s) in images/ belong to no case, e.g. {stray[:3]}")
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise FormatError(f"sanity_check found {len(problems)} problem(s):\n  {shown}{more}")
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


WITHHELD = "withheld"
"""Marker of a count of at least ``min_group_size`` hidden by complementary suppression."""


def _narrowed(counts: Mapping[str, int], hidden: Sequence[str], minimum: int,
              total: int) -> bool:
    """Whether the total narrows any ``<minimum`` count beyond its marker's range.

    A reader knows ``total``, the visible counts, that a ``<minimum`` count lies in
    ``[1, minimum - 1]`` and that a withheld one lies between ``minimum`` and the
    smallest visible count (the algorithm withholds the smallest first). From the sum of
    the hidden counts it can bound each one; this says whether any small count's bounds
    are tighter than ``[1, minimum - 1]``.
    """
    visible = [v for k, v in counts.items() if k not in hidden and v > 0]
    cap = min(visible, default=float("inf"))
    hidden_sum = total - sum(v for k, v in counts.items() if k not in hidden)
    bounds = {k: (1, minimum - 1) if counts[k] < minimum else (minimum, cap) for k in hidden}
    for key in hidden:
        if counts[key] >= minimum:
            continue
        others_low = sum(low for k, (low, _) in bounds.items() if k != key)
        others_high = sum(high for k, (_, high) in bounds.items() if k != key)
        if hidden_sum - others_high > 1 or hidden_sum - others_low < minimum - 1:
            return True
    return False


def suppress_counts(
    counts: Mapping[str, int], minimum: int, total: int | None = None
) -> dict[str, int | str] | str:
    """Suppress small counts of one table, with complementary suppression.

    Counts from 1 to ``minimum - 1`` become ``"<minimum"``. If the counts add up to a
    published ``total``, subtracting the visible ones would give a lone suppressed count
    away (and two suppressed counts would give their sum away); so the smallest other
    counts are withheld too (:data:`WITHHELD`) until the total tells nothing about any
    small count that its marker does not already say.

    Args:
        counts: Category to number of cases.
        minimum: ``min_group_size``.
        total: The published total the counts add up to, or None if they do not add up
            to one (e.g. classes of a multi-label data set).

    Returns:
        Category to count or marker; or the single string :data:`WITHHELD` if no choice
        of hidden counts protects the small ones (then the table is not published).
    """
    out: dict[str, int | str] = {k: suppress(v, minimum) for k, v in counts.items()}
    hidden = [k for k, v in counts.items() if 0 < v < minimum]
    if total is None or not hidden:
        return out
    candidates = sorted((v, k) for k, v in counts.items() if v >= minimum)
    while _narrowed(counts, hidden, minimum, total):
        if not candidates:
            return WITHHELD
        hidden.append(candidates.pop(0)[1])
    for key in hidden:
        if counts[key] >= minimum:
            out[key] = WITHHELD
    return out


def _statistics_header(minimum: int) -> str:
    """The comment that opens ``statistics.yaml``, explaining its markers."""
    return (
        "# Summary of a prepared data set, for review before it leaves the site.\n"
        f"# Counts from 1 to {minimum - 1} are shown as '<{minimum}'. '{WITHHELD}' hides a "
        f"count of {minimum} or more\n# that, with the total, would give a '<{minimum}' "
        "count away (complementary suppression).\n"
    )


def statistics(
    data_path: str | Path,
    labels_path: str | Path,
    output_path: str | Path,
    settings: PrepSettings,
) -> dict[str, Any]:
    """Run the ``statistics`` task: a reviewable summary of a prepared data set.

    Counts below ``min_group_size`` are replaced by ``"<min_group_size"`` and, where a
    table adds up to the number of cases, complementary counts are withheld so that no
    small count can be recomputed (:func:`suppress_counts`). With fewer cases than the
    minimum in total, only the suppressed total is reported.

    Args:
        data_path: Prepared data folder.
        labels_path: Prepared labels folder.
        output_path: The YAML file to write.
        settings: The Data Preparator's settings.

    Returns:
        The statistics as written: ``min_group_size``, ``n_cases``, ``cases_per_class``,
        ``labels_per_case`` (multi_label only), ``prepared_image_size``, ``pixel_mean``,
        ``pixel_std`` and ``sources`` (raw formats, photometric, modality, transfer
        syntax, bits, intensity mapping, raw sizes, skipped inputs per reason).
    """
    dataset = open_prepared(data_path)
    labels = read_prepared_labels(labels_path, settings.labels_list)
    minimum = settings.min_group_size
    n_cases = len(dataset)
    result: dict[str, Any] = {"min_group_size": minimum, "n_cases": suppress(n_cases, minimum)}
    if n_cases >= minimum:
        per_class = np.zeros(len(settings.labels_list), dtype=np.int64)
        per_case: Counter[str] = Counter()
        for case_id in dataset.case_ids:
            label = labels.get(case_id)
            if label is not None:
                per_class += label
                per_case[str(int(label.sum())) if label.sum() < 3 else "3+"] += 1
        by_class = {name: int(n) for name, n in zip(settings.labels_list, per_class)}
        multi_class = settings.label_type == "multi_class"
        result["cases_per_class"] = suppress_counts(by_class, minimum,
                                                    n_cases if multi_class else None)
        if not multi_class:
            histogram = {k: per_case[k] for k in ("0", "1", "2", "3+")}
            result["labels_per_case"] = suppress_counts(histogram, minimum, n_cases)
        result["prepared_image_size"] = dataset.spec.image_size
        total, total_sq = 0.0, 0.0
        for _, batch in dataset.batches(256):
            values = batch.astype(np.float64) / 255.0
            total += float(values.mean(axis=(1, 2, 3)).sum())
            total_sq += float((values**2).mean(axis=(1, 2, 3)).sum())
        mean = total / n_cases
        result["pixel_mean"] = round(mean, 4)
        result["pixel_std"] = round(float(np.sqrt(max(total_sq / n_cases - mean**2, 0.0))), 4)
        result["sources"] = _suppressed_sources(Path(data_path) / SOURCES_FILE, minimum,
                                                n_cases)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(output_path.name + ".partial")
    partial.write_text(_statistics_header(minimum) + yaml.safe_dump(result, sort_keys=False),
                       encoding="utf-8")
    os.replace(partial, output_path)
    logger.info("statistics of %d cases written to %s", n_cases, output_path)
    return result


def _suppressed_sources(path: Path, minimum: int, n_cases: int) -> dict[str, Any]:
    """Read ``sources.yaml`` and suppress its small counts.

    Each table of raw properties counts every prepared case once, so it adds up to
    ``n_cases`` and gets complementary suppression; skipped inputs are not cases and
    get plain suppression.
    """
    if not path.is_file():
        return {}
    sources = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: dict[str, Any] = {}
    for key, value in sources.items():
        if key == "n_cases":
            continue
        if key == "skipped":
            out[key] = {str(k): suppress(int(v), minimum) for k, v in (value or {}).items()}
        elif isinstance(value, dict) and key not in ("width", "height"):
            counts = {str(k): int(v) for k, v in value.items()}
            out[key] = suppress_counts(counts, minimum, n_cases)
        else:
            out[f"raw_{key}"] = value
    return out


def labels_as_names(labels: Sequence[int], labels_list: Sequence[str]) -> str:
    """Render a 0/1 label vector as class names joined by ``|`` (for display)."""
    return "|".join(name for name, v in zip(labels_list, labels) if v) or "(none)"
