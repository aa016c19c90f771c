"""The ``cxr-tutorial`` command line.

``cxr-tutorial run --mlcube DIR --task TASK [key=value ...]`` runs one task natively, like
``mlcube run``. ``cxr-tutorial test`` runs the compatibility test, like
``medperf test run``. Errors this package raises on purpose are printed as one message,
without a traceback, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cxr_tutorial import __version__
from cxr_tutorial.errors import ConfigError, CxrTutorialError
from cxr_tutorial.log import setup_logging


def _parse_overrides(items: list[str]) -> dict[str, str]:
    """Parse ``key=value`` words into a dict."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.lstrip("-")
        if not sep or not key or not value:
            raise ConfigError(f"expected key=value, got {item!r} (e.g. data_path=/data/images)")
        overrides[key] = value
    return overrides


def _format_metrics(metrics: dict[str, Any]) -> str:
    """Render results.yaml as a short table for the terminal."""
    lines = [f"cases: {metrics.get('n_cases')}   classes: {', '.join(metrics['labels_list'])}"]
    for name, value in (metrics.get("overall") or {}).items():
        lines.append(f"  {name:<22} {value}")
    for cls, figures in (metrics.get("per_class") or {}).items():
        shown = "  ".join(f"{k}={v}" for k, v in figures.items())
        lines.append(f"  {cls:<22} {shown}")
    for reason in metrics.get("withheld") or []:
        lines.append(f"  withheld: {reason}")
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    """Run one task."""
    from cxr_tutorial.runner import run_task

    result = run_task(args.mlcube, args.task, _parse_overrides(args.overrides),
                      log_dir=args.log_dir, read_only_inputs=args.read_only_inputs)
    print(f"{result.cube} {result.task}: done in {result.seconds:.1f} s")
    for name, path in result.parameters.items():
        print(f"  {name} = {path}")
    print(f"  log: {result.log}")
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    """Run the compatibility test and print its metrics."""
    from cxr_tutorial.compat import TestPlan, run_compatibility_test

    output = args.output or Path("runs") / time.strftime("test-%Y%m%d-%H%M%S")
    plan = TestPlan.with_defaults(
        output, data_path=args.data_path, labels_path=args.labels_path,
        data_preparator=args.data_preparator, model=args.model, metrics=args.metrics,
    )
    results, metrics = run_compatibility_test(plan)
    print(f"Compatibility test passed ({len(results)} tasks):")
    for result in results:
        print(f"  {result.cube:<22} {result.task:<13} {result.seconds:5.1f} s")
    print("\nMetrics (results.yaml):")
    print(_format_metrics(metrics))
    print(f"\nEverything was written to {plan.output}:")
    for name in ("prepared/data", "prepared/labels", "statistics.yaml", "predictions",
                 "results.yaml", "logs"):
        print(f"  {plan.output / name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="cxr-tutorial",
        description="Run the chest X-ray benchmark's cubes natively (no container).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one task of one cube, like 'mlcube run'")
    run.add_argument("--mlcube", required=True, type=Path, help="cube folder (has mlcube.yaml)")
    run.add_argument("--task", required=True, help="task name from the manifest")
    run.add_argument("--log-dir", type=Path, default=None,
                     help="where the executed notebook goes (default: WORKSPACE/logs)")
    run.add_argument("--read-only-inputs", action="store_true",
                     help="check a container's rules: inputs read-only during the run, "
                          "nothing written outside the declared outputs")
    run.add_argument("overrides", nargs="*", metavar="key=value",
                     help="parameter overrides; relative paths resolve against the current "
                          "directory")
    run.set_defaults(func=_cmd_run)

    test = commands.add_parser("test", help="compatibility test: all tasks of all cubes, "
                                            "chained, like 'medperf test run'")
    test.add_argument("--data_path", type=Path, help="raw images (default: the demo data)")
    test.add_argument("--labels_path", type=Path, help="raw labels folder (default: demo)")
    test.add_argument("--output", type=Path, help="output folder (default: runs/test-TIME)")
    test.add_argument("--data_preparator", type=Path, help="Data Preparator cube folder")
    test.add_argument("--model", type=Path, help="Model cube folder")
    test.add_argument("--metrics", type=Path, help="Metrics cube folder")
    test.set_defaults(func=_cmd_test)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cxr-tutorial`` command.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 on a task or input error.
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except CxrTutorialError as exc:
        print(f"cxr-tutorial {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
