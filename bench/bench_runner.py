"""How much the notebook runner costs: ``cxr-tutorial test`` against a plain-Python floor.

Run from the repository root, in the project's environment::

    .venv/bin/python bench/bench_runner.py            # 3 rounds, about a minute
    .venv/bin/python bench/bench_runner.py --repeat 1 --keep runs/bench

Each round measures, one after the other on the demo data:

- the **floor**: one fresh Python process that calls the same package functions as the
  five tasks (prepare, sanity_check, statistics, load_model + predict_dataset +
  write_predictions, evaluate), timing each, imports included;
- the **runner**: ``cxr-tutorial test`` as a user types it (a fresh process, one kernel
  per task, the executed notebooks rendered and the HTML report written), its wall time
  and the per-task times it prints.

It prints both, and the runner's overhead per task: (runner wall - floor wall) / 5. The
target is at most 1.5 s per task. The machine's load is printed first: on a shared
machine, compare figures only within one run. Medians over the rounds are shown.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("prepare", "sanity_check", "statistics", "infer", "evaluate")
TARGET_SECONDS = 1.5

FLOOR = r'''
import json, sys, time
start = time.perf_counter()
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
cubes = root / "mlcubes"
times = {}
def timed(name, since):
    now = time.perf_counter()
    times[name] = now - since
    return now
from cxr_tutorial.preparation import load_prep_settings, prepare, sanity_check, statistics
prep = load_prep_settings(cubes / "data_preparator" / "workspace" / "parameters.yaml")
prepare(root / "demo_data" / "images", root / "demo_data" / "labels", out / "data",
        out / "labels", prep)
t = timed("prepare", start)
sanity_check(out / "data", out / "labels", prep)
t = timed("sanity_check", t)
statistics(out / "data", out / "labels", out / "statistics.yaml", prep)
t = timed("statistics", t)
tf_before_infer = "tensorflow" in sys.modules
from cxr_tutorial.model import load_model, load_model_settings, predict_dataset
from cxr_tutorial.predictions import write_predictions
from cxr_tutorial.prepared import open_prepared
model_settings = load_model_settings(cubes / "model_custom_cnn" / "workspace" / "parameters.yaml")
dataset = open_prepared(out / "data")
model = load_model(cubes / "model_custom_cnn" / "workspace" / "additional_files"
                   / model_settings.weights_file, dataset.spec.image_size,
                   len(model_settings.labels_list))
write_predictions(out / "predictions", predict_dataset(model, dataset, model_settings.batch_size),
                  len(model_settings.labels_list))
t = timed("infer", t)
from cxr_tutorial.metrics import evaluate, load_metrics_settings
evaluate(out / "predictions", out / "labels", out / "results.yaml",
         load_metrics_settings(cubes / "metrics" / "workspace" / "parameters.yaml"))
timed("evaluate", t)
print(json.dumps({"tasks": times, "tf_before_infer": tf_before_infer}))
'''


def _environment() -> dict[str, str]:
    """The same quiet environment for both sides: no progress bars, no TF chatter."""
    env = dict(os.environ)
    env.update({"TQDM_DISABLE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
                "CXR_TUTORIAL_LOG_LEVEL": "WARNING", "MPLBACKEND": "Agg"})
    return env


def measure_floor(work: Path) -> tuple[float, dict[str, float], bool]:
    """Run the floor in a fresh process: (wall seconds, per-task seconds, TF seen early)."""
    import json

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", FLOOR, str(ROOT), str(work)],
                          capture_output=True, text=True, env=_environment(), check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"the floor failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, report["tasks"], report["tf_before_infer"]


def measure_runner(output: Path) -> tuple[float, dict[str, float]]:
    """Run ``cxr-tutorial test``: (wall seconds, per-task seconds it printed)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cxr_tutorial.cli", "test", "--output",
                           str(output)], capture_output=True, text=True, env=_environment(),
                          cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"cxr-tutorial test failed:\n{done.stderr[-3000:]}")
    times = {m.group(1): float(m.group(2)) for m in
             re.finditer(r"^\s+\S+\s+(\w+)\s+([\d.]+) s$", done.stdout, re.MULTILINE)}
    missing = [t for t in TASKS if t not in times]
    if missing:
        raise SystemExit(f"no time printed for {missing} in:\n{done.stdout}")
    return wall, times


def load() -> str:
    """The machine's load averages, as ``uptime`` prints them."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "load: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, and say whether the target is met."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default: 3)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the last round's cxr-tutorial test output in this folder")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPU(s); {load()}")
    floors, runners, floor_tasks, runner_tasks = [], [], [], []
    tf_early = False
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        for round_number in range(1, args.repeat + 1):
            wall, tasks, early = measure_floor(Path(tmp) / f"floor{round_number}")
            floors.append(wall)
            floor_tasks.append(tasks)
            tf_early = tf_early or early
            last = round_number == args.repeat
            output = args.keep if (last and args.keep) else Path(tmp) / f"test{round_number}"
            wall, tasks = measure_runner(output)
            runners.append(wall)
            runner_tasks.append(tasks)
            print(f"round {round_number}: floor {floors[-1]:.2f} s, "
                  f"cxr-tutorial test {runners[-1]:.2f} s")
    floor, runner = statistics.median(floors), statistics.median(runners)
    print(f"\nmedians over {args.repeat} round(s), seconds")
    print(f"{'task':<14}{'floor':>8}{'runner':>9}{'extra':>9}")
    for task in TASKS:
        f = statistics.median(t[task] for t in floor_tasks)
        r = statistics.median(t[task] for t in runner_tasks)
        print(f"{task:<14}{f:8.2f}{r:9.2f}{r - f:+9.2f}")
    print(f"{'whole process':<14}{floor:8.2f}{runner:9.2f}{runner - floor:+9.2f}")
    per_task = (runner - floor) / len(TASKS)
    print(f"\nrunner / floor: {runner / floor:.2f}x")
    print(f"overhead per task: {per_task:.2f} s (target <= {TARGET_SECONDS} s): "
          f"{'met' if per_task <= TARGET_SECONDS else 'NOT met'}")
    print("TensorFlow imported before infer in the floor: "
          f"{'yes (a Data Preparator task pulls it in)' if tf_early else 'no'}")
    print(f"after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
