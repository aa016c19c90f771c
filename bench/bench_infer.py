"""Time the Model cube's ``infer`` task against the model's own ``predict``.

For each N, the script writes N prepared cases (random images, through the package's
``PreparedWriter``), runs the ``infer`` task through the native runner exactly as
``cxr-tutorial run`` does, and times the whole call: input checks, kernel start, imports,
loading the model, predicting and writing. In this process it times the floor: the same
model's Keras ``predict`` on the same N images held in memory, with TensorFlow's oneDNN
kernels, after tracing, at the fastest of batch sizes 16, 32 and 64 (picked in a warm-up).
Cube and floor run in turn, ``--repeat`` rounds, so that a machine whose speed drifts
(shared cores) slows both alike. It prints cases per second, the ratio of the fastest
cube run to the fastest floor run, and the median of the rounds' own ratios.

The cube runs whatever ``weights_file`` names: the reference cube's ONNX export of the
Keras model, by default. So that no reader mistakes the runtime's speed for the cube's
plumbing, the script also times that file's own runtime on the in-memory array at the
cube's batch size ("runtime s"): cube minus runtime is what the task adds around the
model. From the task's executed notebook it reads the time of its prediction phase and its
peak memory, so the fixed cost (kernel, imports, loading the model, writing) and the
streaming speed can be told apart, and memory can be compared across N. Finally it checks
that the cube predicted what the Keras floor predicted.

Run from the repository folder::

    .venv/bin/python bench/bench_infer.py                 # N = 5,000
    .venv/bin/python bench/bench_infer.py --n 500 5000 --batch-size 64 --repeat 9
    .venv/bin/python bench/bench_infer.py --weights-file weights.keras  # the Keras path

The machine's load (``os.getloadavg``) is printed with the figures: on a shared machine,
compare runs made under similar load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import yaml
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
CUBE = ROOT / "mlcubes" / "model_custom_cnn"
TARGET_N, TARGET_RATIO = 5000, 1.3
FLOOR_BATCH_SIZES = (16, 32, 64)
_PREDICTED = re.compile(r"predicted (\d+) cases in ([\d.]+) s .*peak memory (\d+) MB")


def write_cases(folder: Path, n: int, image_size: int, labels_list: list[str],
                label_type: str) -> Path:
    """Write ``n`` prepared cases of random pixels; return the data folder."""
    from cxr_tutorial.prepared import PreparedWriter

    rng = np.random.default_rng(n)
    data = folder / "data"
    with PreparedWriter(data, folder / "labels", image_size, labels_list, label_type) as writer:
        for i in tqdm(range(n), desc=f"writing {n} cases", unit="case", leave=False):
            label = np.zeros(len(labels_list), dtype=np.uint8)
            label[i % len(labels_list)] = 1
            image = rng.integers(0, 256, (image_size, image_size), dtype=np.uint8)
            writer.add(f"case-{i + 1:06d}", image, label)
        writer.commit()
    return data


def run_cube(data: Path, parameters_file: Path, output: Path) -> tuple[float, float, float]:
    """Run ``infer`` through the runner, as ``cxr-tutorial run`` does.

    Returns:
        ``(total seconds of the run_task call, seconds of the prediction phase, peak
        memory in MB)``, the last two read from the log the task leaves (NaN if not
        found).
    """
    from cxr_tutorial.runner import run_task

    start = time.perf_counter()
    result = run_task(CUBE, "infer", {"data_path": str(data), "output_path": str(output),
                                      "parameters_file": str(parameters_file)},
                      log_dir=output.parent / "logs", log_name=f"{output.name}.ipynb")
    seconds = time.perf_counter() - start
    predict_s = peak_mb = math.nan
    for cell in nbformat.read(result.log, as_version=4).cells:
        for out in cell.get("outputs", []):
            match = _PREDICTED.search(out.get("text", ""))
            if match:
                predict_s, peak_mb = float(match[2]), float(match[3])
    return seconds, predict_s, peak_mb


def in_memory(data: Path) -> tuple[np.ndarray, list[str]]:
    """All prepared images of a folder as one ``(n, size, size, 1)`` array, and their ids."""
    from cxr_tutorial.prepared import open_prepared

    dataset = open_prepared(data)
    return np.concatenate([b for _, b in dataset.batches(1024)]), dataset.case_ids


def _timed(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
           batch_size: int) -> tuple[float, np.ndarray]:
    """Time one pass of ``predict`` over ``images`` in batches, after one warm-up batch."""
    predict(images[:batch_size])
    start = time.perf_counter()
    out = np.concatenate([predict(images[i : i + batch_size])
                          for i in range(0, len(images), batch_size)])
    return time.perf_counter() - start, out


def floor_model(settings: Any) -> Any:
    """The cube's Keras model, loaded with oneDNN on, for the floor."""
    from cxr_tutorial.model import load_weights, use_onednn

    if not use_onednn(True):
        print("note: TensorFlow already runs without oneDNN in this process; the floor uses "
              "its portable kernels, a slower floor")
    return load_weights(CUBE / "workspace" / "additional_files" / settings.keras_file,
                        settings.image_size, len(settings.labels_list))


def run_floor(model: Any, images: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """Time the Keras model's ``predict`` on the images held in memory, after tracing.

    Returns:
        ``(seconds, probabilities)``.
    """
    model.predict(images[:batch_size], batch_size=batch_size, verbose=0)  # tracing
    start = time.perf_counter()
    out = model.predict(images, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start, out


def fastest_floor_batch(model: Any, images: np.ndarray) -> int:
    """The batch size among :data:`FLOOR_BATCH_SIZES` at which ``predict`` is fastest."""
    return min(FLOOR_BATCH_SIZES, key=lambda size: run_floor(model, images, size)[0])


def run_runtime(model: Any, images: np.ndarray, batch_size: int) -> float:
    """Time the cube's own model file in its runtime, in memory, at the cube's batch size."""
    return _timed(model.predict, images, batch_size)[0]


def max_difference(predictions_file: Path, ids: list[str], probabilities: np.ndarray) -> float:
    """Largest absolute difference between the cube's predictions and the floor's."""
    cube = json.loads(predictions_file.read_text(encoding="utf-8"))
    if sorted(cube) != sorted(ids):
        return math.inf
    return float(np.max(np.abs(np.array([cube[c] for c in ids]) - probabilities)))


def break_even(n: int, fixed_s: float, predict_s: float, floor_s: float) -> str:
    """The N from which fixed + N * per-case cube time <= target * N * per-case floor time."""
    margin = (TARGET_RATIO * floor_s - predict_s) / n
    if not margin > 0:
        return "never"
    return f"{math.ceil(fixed_s / margin):,}"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[TARGET_N],
                        help=f"numbers of cases, one run each (default: {TARGET_N})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="the cube's inference batch size (default: its parameters.yaml)")
    parser.add_argument("--weights-file", default=None,
                        help="the model file the cube runs, in its additional_files: "
                             "weights.onnx or weights.keras (default: its parameters.yaml)")
    parser.add_argument("--onednn", choices=["true", "false"], default=None,
                        help="TensorFlow's oneDNN kernels in the cube, for a .keras file "
                             "(default: its parameters.yaml); the floor always uses them")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds of cube, floor and runtime per N, in turn; the fastest "
                             "of each is kept (default: 5)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the generated data and outputs here instead of a "
                             "temporary folder")
    return parser.parse_args(argv)


def run_size(n: int, folder: Path, parameters_file: Path, repeat: int) -> float:
    """Benchmark one N; print its row and return the largest cube - floor difference.

    After a warm-up that picks the floor's batch size, the cube, the floor and the runtime
    run in turn, ``repeat`` rounds: on a shared machine whose speed drifts over seconds,
    each round sees about the same conditions for all three. The row shows the fastest
    run of each, and the median of the rounds' own cube / floor ratios.
    """
    from cxr_tutorial.model import load_model, load_model_settings

    settings = load_model_settings(parameters_file)
    data = write_cases(folder, n, settings.image_size, list(settings.labels_list),
                       settings.label_type)
    images, ids = in_memory(data)
    keras_model = floor_model(settings)
    floor_batch = fastest_floor_batch(keras_model, images)
    runtime = load_model(CUBE / "workspace" / "additional_files" / settings.weights_file,
                         settings.image_size, len(settings.labels_list))
    cubes, floors, runtimes = [], [], []
    for r in range(repeat):
        cubes.append(run_cube(data, parameters_file, folder / f"predictions{r}"))
        floors.append(run_floor(keras_model, images, floor_batch))
        runtimes.append(run_runtime(runtime, images, settings.batch_size))
    cube_s, predict_s, peak_mb = min(cubes)
    floor_s, probabilities = min(floors, key=lambda run: run[0])
    median_ratio = statistics.median(c[0] / f[0] for c, f in zip(cubes, floors))
    diff = max_difference(folder / "predictions0" / "predictions.json", ids, probabilities)
    fixed_s = cube_s - predict_s
    print(f"{n:>7} {cube_s:>8.2f} {n / cube_s:>8.0f} {floor_s:>8.2f} {n / floor_s:>8.0f} "
          f"{cube_s / floor_s:>6.2f} {median_ratio:>6.2f} | {floor_batch:>5} "
          f"{min(runtimes):>9.2f} {predict_s:>9.2f} {fixed_s:>7.2f} {peak_mb:>7.0f} "
          f"{diff:>8.1e} {break_even(n, fixed_s, predict_s, floor_s):>11}", flush=True)
    return diff


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 if the cube's predictions differ from the floor's."""
    args = parse_arguments(argv)
    from cxr_tutorial.log import setup_logging

    setup_logging("WARNING")
    parameters = yaml.safe_load((CUBE / "workspace" / "parameters.yaml").read_text())
    for key, value in (("batch_size", args.batch_size), ("weights_file", args.weights_file),
                       ("onednn", args.onednn and args.onednn == "true")):
        if value is not None:
            parameters[key] = value
    work = tempfile.TemporaryDirectory(prefix="bench-infer-") if args.keep is None else None
    base = Path(work.name) if work else args.keep
    parameters_file = base / "parameters.yaml"
    base.mkdir(parents=True, exist_ok=True)
    parameters_file.write_text(yaml.safe_dump(parameters, sort_keys=False), encoding="utf-8")

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs; cube: {parameters['weights_file']}, "
          f"batch_size {parameters['batch_size']}, onednn {parameters['onednn']}; "
          f"best of {args.repeat}")
    header = (f"{'N':>7} {'cube s':>8} {'cases/s':>8} {'floor s':>8} {'cases/s':>8} "
              f"{'ratio':>6} {'median':>6} | {'batch':>5} {'runtime s':>9} {'predict s':>9} "
              f"{'fixed s':>7} {'peak MB':>7} {'max diff':>8} {'N at target':>11}")
    print(header, flush=True)
    try:
        worst = max(run_size(n, base / f"n{n}", parameters_file, args.repeat) for n in args.n)
    finally:
        if work:
            work.cleanup()
    print("cube: the whole infer task through the runner (checks, kernel start, imports, "
          "model, writing).\n"
          "floor: the Keras model's predict on the cases held in memory, oneDNN on, at the "
          "fastest\n  batch size (batch).\n"
          "ratio: fastest cube / fastest floor; median: the median of each round's cube / "
          "floor.\n"
          "runtime s: the cube's model file in its own runtime, in memory, at the cube's "
          "batch size.\n"
          "predict s: the task's prediction phase alone (read, predict, check); fixed s: "
          "the rest.\n"
          f"N at target: from how many cases the ratio would be <= {TARGET_RATIO} at this "
          "fixed cost and\n  these speeds.\n"
          f"target: ratio <= {TARGET_RATIO} at N = {TARGET_N:,}")
    if worst > 1e-4:
        print(f"error: the cube's predictions differ from the floor's by {worst:.2g}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
