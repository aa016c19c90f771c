"""Time the Model cube's ``infer`` task against the model's own ``predict``.

For each N, the script writes N prepared cases (random images, through the package's
``PreparedWriter``), runs the ``infer`` task through the native runner exactly as
``cxr-tutorial run`` does (papermill, kernel start and TensorFlow import included), then
times the floor in this process: the same model's ``predict`` on the same N images held
in memory, with the same batch size and the same TensorFlow kernels (``onednn``), after
one warm-up batch. It prints cases per second and the ratio cube / floor.

From the task's executed notebook it also reads the time of its prediction phase alone and
its peak memory, so the fixed cost (kernel, imports, model loading, writing) and the
streaming speed can be told apart, and memory can be compared across N. Finally it checks
that the cube predicted what the floor predicted.

Run from the repository folder::

    .venv/bin/python bench/bench_infer.py                 # N = 5,000
    .venv/bin/python bench/bench_infer.py --n 500 5000 --batch-size 64 --repeat 2
    .venv/bin/python bench/bench_infer.py --onednn false  # TensorFlow's portable kernels

The machine's load (``os.getloadavg``) is printed with the figures: on a shared machine,
compare runs made under similar load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
import yaml
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
CUBE = ROOT / "mlcubes" / "model_custom_cnn"
TARGET_N, TARGET_RATIO = 5000, 1.3
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
    """Run ``infer`` through the runner.

    Returns:
        ``(total seconds, seconds of the prediction phase, peak memory in MB)``, the last
        two read from the log the task leaves (NaN if not found).
    """
    from cxr_tutorial.runner import run_task

    result = run_task(CUBE, "infer", {"data_path": str(data), "output_path": str(output),
                                      "parameters_file": str(parameters_file)},
                      log_dir=output.parent / "logs", log_name=f"{output.name}.ipynb")
    predict_s = peak_mb = math.nan
    for cell in nbformat.read(result.log, as_version=4).cells:
        for out in cell.get("outputs", []):
            match = _PREDICTED.search(out.get("text", ""))
            if match:
                predict_s, peak_mb = float(match[2]), float(match[3])
    return result.seconds, predict_s, peak_mb


def run_floor(data: Path, parameters_file: Path) -> tuple[float, np.ndarray, list[str]]:
    """Time the shipped model's ``predict`` on all cases held in memory.

    Returns:
        ``(seconds, probabilities, case ids)``.
    """
    from cxr_tutorial.model import load_model_settings, load_weights, use_onednn
    from cxr_tutorial.prepared import open_prepared

    settings = load_model_settings(parameters_file)
    if not use_onednn(settings.onednn):
        raise SystemExit("TensorFlow already runs with other kernels; run one --onednn value "
                         "per process")
    batch_size = settings.batch_size
    dataset = open_prepared(data)
    images = np.stack([dataset.read(c) for c in dataset.case_ids])[..., np.newaxis]
    model = load_weights(CUBE / "workspace" / "additional_files" / settings.weights_file,
                         dataset.spec.image_size, len(settings.labels_list))
    model.predict(images[:batch_size], batch_size=batch_size, verbose=0)  # warm-up: tracing
    start = time.perf_counter()
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start, probabilities, dataset.case_ids


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
                        help="inference batch size (default: the cube's parameters.yaml)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of cube and floor per N; the fastest of each is kept")
    parser.add_argument("--onednn", choices=["true", "false"], default=None,
                        help="TensorFlow's oneDNN kernels for both the cube and the floor "
                             "(default: the cube's parameters.yaml)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the generated data and outputs here instead of a "
                             "temporary folder")
    return parser.parse_args(argv)


def run_size(n: int, folder: Path, parameters: dict, parameters_file: Path,
             repeat: int) -> float:
    """Benchmark one N; print its row and return the largest cube - floor difference."""
    data = write_cases(folder, n, parameters["image_size"], parameters["labels_list"],
                       parameters["label_type"])
    cube_s, predict_s, peak_mb = min(run_cube(data, parameters_file, folder / f"predictions{r}")
                                     for r in range(repeat))
    floor_s, probabilities, ids = min((run_floor(data, parameters_file) for _ in range(repeat)),
                                      key=lambda run: run[0])
    diff = max_difference(folder / "predictions0" / "predictions.json", ids, probabilities)
    fixed_s = cube_s - predict_s
    print(f"{n:>7} {cube_s:>8.2f} {n / cube_s:>8.0f} {floor_s:>8.2f} {n / floor_s:>8.0f} "
          f"{cube_s / floor_s:>6.2f} | {predict_s:>9.2f} {predict_s / floor_s:>6.2f} "
          f"{fixed_s:>7.2f} {peak_mb:>7.0f} {diff:>8.1e} "
          f"{break_even(n, fixed_s, predict_s, floor_s):>11}", flush=True)
    return diff


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 if the cube's predictions differ from the floor's."""
    args = parse_arguments(argv)
    from cxr_tutorial.log import setup_logging

    setup_logging("WARNING")
    parameters = yaml.safe_load((CUBE / "workspace" / "parameters.yaml").read_text())
    if args.batch_size:
        parameters["batch_size"] = args.batch_size
    if args.onednn:
        parameters["onednn"] = args.onednn == "true"
    work = tempfile.TemporaryDirectory(prefix="bench-infer-") if args.keep is None else None
    base = Path(work.name) if work else args.keep
    parameters_file = base / "parameters.yaml"
    base.mkdir(parents=True, exist_ok=True)
    parameters_file.write_text(yaml.safe_dump(parameters, sort_keys=False), encoding="utf-8")

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs; onednn {parameters['onednn']}; "
          f"batch_size {parameters['batch_size']}; best of {args.repeat}")
    header = (f"{'N':>7} {'cube s':>8} {'cases/s':>8} {'floor s':>8} {'cases/s':>8} "
              f"{'ratio':>6} | {'predict s':>9} {'/floor':>6} {'fixed s':>7} {'peak MB':>7} "
              f"{'max diff':>8} {'N at target':>11}")
    print(header, flush=True)
    try:
        worst = max(run_size(n, base / f"n{n}", parameters, parameters_file, args.repeat)
                    for n in args.n)
    finally:
        if work:
            work.cleanup()
    print("cube: the infer task through the runner, kernel start included.\n"
          "floor: the same model's predict on the cases held in memory.\n"
          "predict s: the task's prediction phase alone (read, predict, check); /floor: "
          "over floor s;\n  fixed s: the rest (kernel, imports, loading the model, writing).\n"
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
