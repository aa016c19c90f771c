"""Benchmark the Data Preparator's ``prepare`` task on generated full-size images.

It writes N raw images of ``--size`` x ``--size`` pixels, half PNG (8-bit grey) and half
DICOM (12 of 16 bits, ``--dicom-syntax``), with a labels.csv; then, in the same run:

1. the **floor**: one process that only decodes and resizes (``read_image`` + ``resize``,
   no labels, no writing, no pool), over the first ``--floor-n`` images, measured before
   the cube runs (the ratios use it) and again after them, since on a shared machine the
   load moves;
2. ``prepare`` **through the cube**: ``cxr-tutorial run``'s runner executes the task's
   notebook with ``workers`` set to each value of ``--workers``, for each value of ``--n``.

It prints the task's wall time and its ratio to the floor (kernel start and the chapter's
pictures included), the time of the ``prepare()`` call inside it (from the executed
notebook), its images per second and ratio to the floor, and peak memory: the largest sum
of the resident memory of the task's processes (the notebook's kernel and its decoding
processes), sampled every 0.1 s, and the largest single process. Targets: at least
1.6 x the floor with 2 workers, and peak memory that does not grow from N=1,000 to 10,000.

The pictures are the 16 demo X-rays resized to ``--size`` (32 distinct files, one PNG and
one DICOM each); the other files are hard links to them, so 10,000 images cost the disk
32 files while every one is still read and decoded. Examples::

    python bench/bench_prepare.py --n 200 --workers 1 2
    python bench/bench_prepare.py --n 1000 10000 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxr_tutorial.images import read_image, resize  # noqa: E402
from cxr_tutorial.log import setup_logging  # noqa: E402
from cxr_tutorial.mlcube import load_cube  # noqa: E402
from cxr_tutorial.runner import run_task  # noqa: E402

SYNTAXES = {
    "explicit": "1.2.840.10008.1.2.1",
    "rle": "1.2.840.10008.1.2.5",
    "j2k": "1.2.840.10008.1.2.4.90",
}
"""``--dicom-syntax`` choices: uncompressed, RLE Lossless, JPEG 2000 Lossless."""


def _write_dicom(path: Path, picture: np.ndarray, syntax: str) -> None:
    """Write a 12-bit MONOCHROME2 DICOM of a picture in [0, 1]."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[path.name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.PhotometricInterpretation = "CR", "MONOCHROME2"
    ds.Rows, ds.Columns = picture.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = np.rint(picture * 4095).astype(np.uint16).tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(UID(syntax))
    ds.save_as(path, enforce_file_format=True)


def generate(folder: Path, n: int, size: int, syntax: str) -> tuple[Path, Path]:
    """Write ``n`` images and their labels.csv under ``folder``.

    Returns:
        ``(images folder, labels folder)``.
    """
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    demo = ROOT / "demo_data"
    with open(demo / "labels" / "labels.csv", newline="", encoding="utf-8") as handle:
        sources = [(row["Image ID"], row["Label"]) for row in csv.DictReader(handle)]
    templates = []
    for name, label in sources:
        pixels, _ = read_image(demo / "images" / name)
        big = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
        big = np.clip(big, 0, 1)
        png = images / f"t-{len(templates):02d}.png"
        Image.fromarray(np.rint(big * 255).astype(np.uint8)).save(png)
        templates.append((png, label))
        dicom = images / f"t-{len(templates):02d}.dcm"
        _write_dicom(dicom, big, syntax)
        templates.append((dicom, label))
    rows = []
    for i in range(n):
        source, label = templates[i % len(templates)]
        target = images / f"img-{i:06d}{source.suffix}"
        try:
            os.link(source, target)
        except OSError:
            shutil.copy(source, target)
        rows.append((target.name, label))
    for template, _ in templates:
        template.unlink()
    with open(labels / "labels.csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["Image ID", "Label"])
        writer.writerows(rows)
    return images, labels


def floor_rate(images: Path, count: int, size: int) -> tuple[float, float]:
    """A plain single-process decode-and-resize loop.

    Returns:
        ``(images per second, CPU seconds per image)``.
    """
    files = sorted(images.iterdir())[:count]
    start, cpu = time.perf_counter(), time.process_time()
    for path in files:
        resize(read_image(path)[0], size)
    return (len(files) / (time.perf_counter() - start),
            (time.process_time() - cpu) / len(files))


class MemorySampler(threading.Thread):
    """Sample the resident memory and CPU time of this process's descendants every 0.1 s.

    Attributes:
        peak_total: Largest sum over the descendants alive at one moment, in bytes.
        peak_single: Largest single descendant, in bytes.
        cpu: CPU seconds (user and system) of each descendant, last seen, by process id.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_total = self.peak_single = 0
        self.cpu: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._halt.wait(0.1):
            sizes = []
            for child in me.children(recursive=True):
                try:
                    sizes.append(child.memory_info().rss)
                    times = child.cpu_times()
                    self.cpu[child.pid] = times.user + times.system
                except psutil.Error:
                    continue
            self.peak_total = max(self.peak_total, sum(sizes))
            self.peak_single = max([self.peak_single, *sizes])

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_cube(images: Path, labels: Path, out: Path, workers: int, size: int
             ) -> tuple[float, float, MemorySampler]:
    """Run ``prepare`` through the cube; return (task seconds, prepare() seconds, memory)."""
    cube = load_cube(ROOT / "mlcubes" / "data_preparator")
    parameters = yaml.safe_load((cube.workspace / "parameters.yaml").read_text())
    parameters.update(workers=workers, image_size=size)
    out.mkdir(parents=True)
    (out / "parameters.yaml").write_text(yaml.safe_dump(parameters), encoding="utf-8")
    sampler = MemorySampler()
    sampler.start()
    try:
        result = run_task(cube, "prepare", {
            "data_path": str(images), "labels_path": str(labels),
            "parameters_file": str(out / "parameters.yaml"),
            "output_path": str(out / "data"), "output_labels_path": str(out / "labels"),
        }, log_dir=out / "logs")
    finally:
        sampler.stop()
    text = "".join(
        output.get("text", "")
        for cell in nbformat.read(result.log, as_version=4).cells if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    found = re.search(r"(\d+) cases prepared in ([\d.]+) s", text)
    return result.seconds, float(found.group(2)) if found else float("nan"), sampler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000],
                        help="images to generate (several values: one run each)")
    parser.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1],
                        help="workers setting(s) to time (default: all cores)")
    parser.add_argument("--size", type=int, default=1024, help="side of the raw images")
    parser.add_argument("--image-size", type=int, default=128, help="prepared image side")
    parser.add_argument("--floor-n", type=int, default=200,
                        help="images the single-process floor decodes")
    parser.add_argument("--dicom-syntax", choices=sorted(SYNTAXES), default="explicit")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: temporary)")
    args = parser.parse_args(argv)
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} holds files; give a new or empty folder")
    setup_logging("WARNING")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (1, 5, 15 min), "
          f"Python {platform.python_version()}")
    try:
        largest = max(args.n)
        images, labels = generate(workdir / "raw", largest, args.size,
                                  SYNTAXES[args.dicom_syntax])
        print(f"raw: {largest} images of {args.size} x {args.size}, half PNG 8-bit, half "
              f"DICOM 12-bit {args.dicom_syntax}; prepared at {args.image_size} px")
        floor_n = min(args.floor_n, largest)
        floor, floor_cpu = floor_rate(images, floor_n, args.image_size)
        print(f"floor: {floor:.1f} images/s, {1000 * floor_cpu:.1f} ms CPU per image "
              f"(1 process, decode + resize only, {floor_n} images)")
        print("task: the whole cube task (kernel start, notebook, prepare); prepare: the "
              "prepare() call inside it;\ncpu x: CPU time of all the task's processes over "
              "the floor's CPU time for as many images (load-independent overhead)")
        print(f"{'n':>7} {'workers':>7} {'task s':>7} {'task x':>7} {'prepare s':>9} "
              f"{'images/s':>9} {'x floor':>7} {'cpu x':>6} {'peak MB':>8} {'largest MB':>10}")
        for n in sorted(args.n):
            subset = labels
            if n < largest:  # the first n rows of the largest set
                subset = workdir / f"labels-{n}"
                subset.mkdir(exist_ok=True)
                lines = (labels / "labels.csv").read_text().splitlines()[: n + 1]
                (subset / "labels.csv").write_text("\n".join(lines) + "\n")
                data = workdir / f"raw-{n}"
                if not data.exists():
                    data.mkdir()
                    for line in lines[1:]:
                        os.link(images / line.split(",")[0], data / line.split(",")[0])
            else:
                data = images
            for workers in args.workers:
                out = workdir / f"out-{n}-{workers}"
                task, seconds, memory = run_cube(data, subset, out, workers, args.image_size)
                rate = n / seconds
                cpu = sum(memory.cpu.values()) / (n * floor_cpu)
                print(f"{n:>7} {workers:>7} {task:>7.1f} {n / task / floor:>7.2f} "
                      f"{seconds:>9.1f} {rate:>9.1f} {rate / floor:>7.2f} {cpu:>6.2f} "
                      f"{memory.peak_total / 2**20:>8.0f} {memory.peak_single / 2**20:>10.0f}",
                      flush=True)
                shutil.rmtree(out)
        after, _ = floor_rate(images, floor_n, args.image_size)
        print(f"floor again: {after:.1f} images/s; the ratios above used the first, "
              f"{floor:.1f}; with the mean, {(floor + after) / 2:.1f}, multiply them by "
              f"{2 * floor / (floor + after):.2f}")
        print(f"load average now {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print("targets: >= 1.6 x floor with 2 workers; peak MB flat from n=1000 to n=10000")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
