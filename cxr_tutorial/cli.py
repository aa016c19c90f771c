"""The ``cxr-tutorial`` command line.

``cxr-tutorial run --mlcube DIR --task TASK [key=value ...]`` runs one task natively, like
``mlcube run``. ``cxr-tutorial test`` runs the compatibility test, like
``medperf test run``. ``cxr-tutorial benchmark`` runs a federated evaluation across sites
on this machine. ``cxr-tutorial export-onnx`` exports a Keras model for fast inference.
Errors this package raises on purpose are printed as one message,
without a traceback, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

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
    """Run the compatibility test, print its metrics and where its report is."""
    from cxr_tutorial.compat import TestPlan, run_compatibility_test, summary_text

    output = args.output or Path("runs") / time.strftime("test-%Y%m%d-%H%M%S")
    plan = TestPlan.with_defaults(
        output, data_path=args.data_path, labels_path=args.labels_path,
        data_preparator=args.data_preparator, model=args.model, metrics=args.metrics,
    )
    report = plan.output / "report.html"
    try:
        results, metrics = run_compatibility_test(plan)
    except CxrTutorialError as exc:
        print(f"cxr-tutorial test: error: {exc}", file=sys.stderr)
        if report.is_file():
            print(f"The report: {report}", file=sys.stderr)
        return 1
    print(summary_text(results, metrics, plan.output))
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    """Run every model at every site; print the table; exit 1 if any cell failed."""
    from cxr_tutorial.federated import (
        DEFAULT_METRIC,
        POOLING_RULE,
        BenchmarkPlan,
        run_benchmark,
        table_text,
    )
    from cxr_tutorial.sites import Site, make_demo_sites

    output = args.output or Path("runs") / time.strftime("benchmark-%Y%m%d-%H%M%S")
    if args.site:
        sites = [Site.from_folder(folder) for folder in args.site]
    else:
        sites = make_demo_sites(Path(output) / "demo_sites")
        print(f"No --site given: simulating the {len(sites)} demo sites in "
              f"{Path(output) / 'demo_sites'}")
    plan = BenchmarkPlan.with_defaults(
        output, sites, models=args.model, data_preparator=args.data_preparator,
        metrics=args.metrics, jobs=args.jobs, metric=args.metric or DEFAULT_METRIC,
    )
    run = run_benchmark(plan)
    print(f"\n{plan.metric} of {len(run.models)} model(s) at {len(sites)} site(s):")
    print(table_text(run.summary))
    print("\n" + textwrap.fill(POOLING_RULE, 92))
    for cell in run.failed:
        print(f"\nFAILED {cell.model} at {cell.site} ({cell.failed_task or '?'}):")
        print(textwrap.indent(cell.message.strip() or "(no message)", "    "))
        if cell.log and str(cell.log) not in cell.message:
            print(f"    log: {cell.log}")
    print(f"\nReleased to the benchmark owner: {plan.owner} (benchmark.yaml, table.csv)")
    print(f"Kept at the sites: {plan.output / 'sites'}")
    if run.report:
        print(f"Report: {run.report}")
    return 1 if run.failed else 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    """Export a .keras file to ONNX, checked against Keras' own predictions."""
    from cxr_tutorial.onnx_model import export_onnx

    written = export_onnx(args.keras_file, args.output)
    print(f"wrote {written}; set weights_file: {written.name} in the Model cube's "
          "parameters.yaml to run it")
    return 0


def _skip_unused_grammar() -> None:
    """Keep jsonschema from compiling its optional IRI grammar in this process.

    nbformat imports jsonschema, which imports ``rfc3987_syntax`` if it is installed and
    builds a parser for IRI strings from it: 0.8 s on every command, for a string format
    that nbformat's notebook schema never checks. Marking the module absent makes
    jsonschema skip that one format checker; nothing else changes.
    """
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


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

    bench = commands.add_parser(
        "benchmark", help="federated evaluation on this machine: every model at every site, "
                          "only statistics and results returned",
        description="Each site prepares its data and runs every model and the Metrics cube; "
                    "only statistics.yaml and results.yaml are copied to OUTPUT/owner, where "
                    "the models x sites table is built. Exits 1 if any site or model failed "
                    "(the table and report.html are written all the same), 0 otherwise.")
    bench.add_argument("--site", type=Path, action="append", metavar="DIR",
                       help="a data owner's folder holding images/ and labels/labels.csv; "
                            "repeat for each site (default: make the demo sites)")
    bench.add_argument("--model", type=Path, action="append", metavar="CUBE",
                       help="a Model cube folder; repeat for each model (default: "
                            "mlcubes/model_custom_cnn and mlcubes/model_owner_example)")
    bench.add_argument("--data_preparator", type=Path, help="Data Preparator cube folder")
    bench.add_argument("--metrics", type=Path, help="Metrics cube folder")
    bench.add_argument("--output", type=Path,
                       help="output folder (default: runs/benchmark-TIME)")
    bench.add_argument("--jobs", type=int, default=1,
                       help="sites run at the same time (default: 1)")
    # The default is federated.DEFAULT_METRIC, named here without importing it: that
    # import would cost every command, --help included, half a second.
    bench.add_argument("--metric", default=None,
                       help="figure of results.yaml's overall section shown in the table "
                            "(default: loss, which sites release unless too small)")
    bench.set_defaults(func=_cmd_benchmark)

    export = commands.add_parser(
        "export-onnx", help="export a .keras model to ONNX, which infer runs without "
                            "starting TensorFlow",
        description="Convert a .keras file to ONNX, check that ONNX Runtime predicts what "
                    "Keras predicts (within 1e-5) on random images, and write the file "
                    "only then. The export records the SHA-256 of the .keras file; infer "
                    "refuses it if that file, lying beside it, has changed since.")
    export.add_argument("keras_file", type=Path, help="the .keras file")
    export.add_argument("--output", type=Path, default=None,
                        help="the .onnx file to write (default: beside the .keras file)")
    export.set_defaults(func=_cmd_export_onnx)
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
    _skip_unused_grammar()
    try:
        return args.func(args)
    except CxrTutorialError as exc:
        print(f"cxr-tutorial {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
