"""The HTML reports: what they show, that their links resolve, and the runner benchmark."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from html_pages import broken_links, link_target, read_page

from cxr_tutorial.compat import TaskRecord, TestPlan
from cxr_tutorial.report import describe_output, render_notebooks, write_test_report


def _executed_notebook(path: Path, printed: str) -> Path:
    """A small notebook as papermill leaves it: a heading, a cell and its output."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## Count the cases"),
                nbformat.v4.new_code_cell("print(n)", execution_count=1,
                                          outputs=[nbformat.v4.new_output(
                                              "stream", name="stdout", text=printed)])]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_describe_output_names_files_and_sizes(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "data" / "images" / f"case-{i}.npy").write_bytes(b"x" * 1000)
    (tmp_path / "data" / "format.yaml").write_text("a: 1\n")
    assert describe_output(tmp_path / "data" / "format.yaml") == "5 B"
    assert describe_output(tmp_path / "data") == "4 files, 2.9 KB: format.yaml, images/ (3 files)"
    assert describe_output(tmp_path / "missing") == "nothing"


def test_rendered_notebook_is_a_standalone_page(tmp_path):
    log = _executed_notebook(tmp_path / "logs" / "cube.task.ipynb", "16 cases passed")
    pages = render_notebooks([log, tmp_path / "logs" / "missing.ipynb"], tmp_path / "html")
    assert list(pages) == [log]  # an unreadable log is left out, not fatal
    page = read_page(pages[log])
    assert "Count the cases" in page.text and "16 cases passed" in page.text
    assert not broken_links(pages[log], page)  # it links back to the notebook itself
    assert "<script" not in pages[log].read_text()


def test_failed_test_report_shows_the_error_and_what_did_not_run(tmp_path):
    log = _executed_notebook(tmp_path / "logs" / "prep.prepare.ipynb", "boom")
    plan = TestPlan(tmp_path / "images", tmp_path / "labels", tmp_path, tmp_path / "dp",
                    tmp_path / "model", tmp_path / "metrics")
    records = [TaskRecord("prep", "prepare", "failed", 1.25, log,
                          {"output_path": tmp_path / "data"}, "DataError: row 5: <bad>"),
               TaskRecord("prep", "sanity_check", "not run")]
    report = write_test_report(plan, records, None)
    page = read_page(report)
    assert page.text.startswith("Compatibility test failed")
    tasks = page.tables["tasks"]
    assert tasks[1][2:5] == ["prepare", "failed", "1.2 s"]
    assert tasks[2][2:4] == ["sanity_check", "not run"]
    assert "DataError: row 5: <bad>" in page.text  # escaped in the HTML, intact as text
    assert "Results" not in page.text
    assert not broken_links(report, page)


@pytest.fixture(scope="module")
def bench(root: Path, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One round of the runner benchmark; it keeps its `cxr-tutorial test` output."""
    out = tmp_path_factory.mktemp("bench") / "test"
    result = subprocess.run([sys.executable, str(root / "bench" / "bench_runner.py"),
                             "--repeat", "1", "--keep", str(out)],
                            cwd=root, capture_output=True, text=True, timeout=900)
    return result, out


def test_bench_prints_floor_runner_and_overhead_per_task(bench):
    result, _ = bench
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "load average" in result.stdout
    for task in ("prepare", "sanity_check", "statistics", "infer", "evaluate"):
        assert re.search(rf"^{task}\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+$", result.stdout, re.M)
    assert re.search(r"^overhead per task: -?[\d.]+ s \(target <= 1.5 s\)", result.stdout, re.M)
    # The Data Preparator tasks of the floor ran without TensorFlow.
    assert "TensorFlow imported before infer in the floor: no" in result.stdout


def test_test_report_shows_results_outputs_times_and_logs(bench):
    _, out = bench
    report = out / "report.html"
    page = read_page(report)
    assert page.text.startswith("Compatibility test passed")
    tasks = page.tables["tasks"]
    assert [row[2] for row in tasks[1:]] == ["prepare", "sanity_check", "statistics",
                                             "infer", "evaluate"]
    assert all(row[3] == "passed" and re.fullmatch(r"[\d.]+ s", row[4]) for row in tasks[1:])
    assert re.search(r"prepared/data: \d+ files", tasks[1][5])
    assert "images/ (16 files)" in tasks[1][5]
    assert "predictions: 1 file" in tasks[4][5]
    results = yaml.safe_load((out / "results.yaml").read_text())
    overall = {row[0]: row[1] for row in page.tables["overall"][1:]}
    assert overall == {k: str(v) for k, v in results["overall"].items()}
    assert page.tables["per-class"][1][0] == "normal"
    assert not broken_links(report, page)
    # Each task links to its notebook rendered as a page, which shows what ran.
    rendered = [link_target(report, row[-1][0]) for row in page.cell_links["tasks"][1:]]
    assert [p.name for p in rendered] == [
        "cxr-data-preparator.prepare.html", "cxr-data-preparator.sanity_check.html",
        "cxr-data-preparator.statistics.html", "cxr-model-custom-cnn.infer.html",
        "cxr-metrics.evaluate.html"]
    assert "sanity check" in read_page(rendered[1]).text


def test_failed_test_run_writes_a_report_and_says_where(root, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    text = (root / "demo_data" / "labels" / "labels.csv").read_text()
    (labels / "labels.csv").write_text(text.replace(",pneumonia", ",pnuemonia", 1))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "cxr_tutorial.cli", "test", "--labels_path",
                             str(labels), "--output", str(out)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "unknown class 'pnuemonia'" in result.stderr
    assert f"The report: {out / 'report.html'}" in result.stderr
    page = read_page(out / "report.html")
    statuses = [row[3] for row in page.tables["tasks"][1:]]
    assert statuses == ["failed", "not run", "not run", "not run", "not run"]
    assert "unknown class 'pnuemonia'" in page.text
    assert not broken_links(out / "report.html", page)


def test_statistics_tables_withheld_whole_are_shown_as_withheld():
    from cxr_tutorial.report import _counts

    assert _counts({"normal": 8, "pneumonia": "<5"}) == "normal: 8, pneumonia: <5"
    assert _counts("withheld") == "withheld"
    assert _counts(None) == "withheld"


def test_terminal_table_marks_withheld_and_undefined_figures():
    from cxr_tutorial.compat import format_metrics

    results = {
        "n_cases": 12, "labels_list": ["a", "b"], "min_cases": 5,
        "overall": {"loss": 0.4, "accuracy": "withheld", "auc_macro": 0.8,
                    "auc_macro_n_classes": 1, "f1_macro": None, "f1_macro_n_classes": 0},
        "per_class": {"a": {"auc": 0.8, "f1": "withheld"}, "b": {"auc": None}},
        "withheld": ["per_class.a: f1: reason"],
    }
    rows = {line.split("  ")[1].strip(): line.split() for line in
            format_metrics(results).splitlines()[2:6]}
    assert rows["overall"][1:3] == ["0.4", "withheld"]
    assert rows["macro (classes)"][2:] == ["0.8", "(1)", "n/a", "(0)"]
    assert rows["b"][1] == "n/a"
    assert format_metrics(results).splitlines()[-1] == "  withheld: per_class.a: f1: reason"
