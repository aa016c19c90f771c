"""Federated evaluation: demo sites, the owner's table and pooling, and a run with failures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import papermill
import pytest
import yaml
from html_pages import broken_links, link_target, read_page
from test_end_to_end import DEMO_HEADER_VALUES, _digest

from cxr_tutorial.errors import ConfigError
from cxr_tutorial.federated import (
    FAILED,
    BenchmarkPlan,
    Cell,
    _release,
    figure,
    pool,
    run_benchmark,
    summarise,
    table_text,
)
from cxr_tutorial.images import sniff_format
from cxr_tutorial.mlcube import load_cube
from cxr_tutorial.sites import MARKER, Site, describe_site, make_demo_sites

REFERENCE, BROKEN = "cxr-model-custom-cnn", "cxr-model-broken"


# --- demo sites -----------------------------------------------------------------------------


def test_demo_sites_differ_in_format_balance_and_size(root, tmp_path):
    before = _digest(root / "demo_data")
    sites = make_demo_sites(tmp_path / "sites")
    facts = {s.name: describe_site(s) for s in sites}
    assert facts["hospital-north"] == {"site": "hospital-north", "images": 12,
                                       "formats": {"dicom": 8, "png": 4},
                                       "classes": {"normal": 6, "pneumonia": 6}}
    assert facts["clinic-east"]["formats"] == {"jpeg": 8}
    assert facts["clinic-east"]["classes"] == {"normal": 2, "pneumonia": 6}
    assert facts["practice-west"]["formats"] == {"png": 3}
    assert facts["practice-west"]["images"] < 5  # below the Metrics cube's min_cases
    # Ids are paths inside images/, in sub-folders for the hospital's archive.
    north = (tmp_path / "sites" / "hospital-north" / "labels" / "labels.csv").read_text()
    assert "/IM-0007," in north
    # A converted image is a real image of the announced format.
    assert sniff_format(tmp_path / "sites" / "clinic-east" / "images" / "east-005.jpg") == "jpeg"
    assert _digest(root / "demo_data") == before


def test_demo_sites_replace_their_own_folder_and_refuse_others(tmp_path):
    (site,) = make_demo_sites(tmp_path, names=["practice-west"])
    (site.data_path / "stray.png").write_bytes(b"left over")
    make_demo_sites(tmp_path, names=["practice-west"])
    assert not (site.data_path / "stray.png").exists()
    assert (tmp_path / "practice-west" / MARKER).is_file()
    (tmp_path / "clinic-east").mkdir()
    with pytest.raises(ConfigError, match="was not made by make_demo_sites"):
        make_demo_sites(tmp_path, names=["clinic-east"])
    with pytest.raises(ConfigError, match="unknown demo site"):
        make_demo_sites(tmp_path, names=["nowhere"])


def test_site_folder_and_plan_are_checked(root, tmp_path):
    with pytest.raises(ConfigError, match="expected a sub-folder images/"):
        Site.from_folder(tmp_path)
    (tmp_path / "a" / "images").mkdir(parents=True)
    (tmp_path / "a" / "labels").mkdir()
    site = Site.from_folder(tmp_path / "a")
    with pytest.raises(ConfigError, match="two sites are named a"):
        BenchmarkPlan.with_defaults(tmp_path / "out", [site, site])
    with pytest.raises(ConfigError, match="jobs must be at least 1"):
        BenchmarkPlan.with_defaults(tmp_path / "out", [site], jobs=0)
    with pytest.raises(ConfigError, match="model cube .* does not exist"):
        BenchmarkPlan.with_defaults(tmp_path / "out", [site], models=[tmp_path / "none"])
    plan = BenchmarkPlan.with_defaults(tmp_path / "out", [site])
    assert [m.name for m in plan.models] == ["model_custom_cnn", "model_owner_example"]


def test_output_folders_that_a_run_would_clear_are_refused(tmp_path):
    inside = tmp_path / "out" / "sites" / "a"
    for sub in ("images", "labels"):
        (inside / sub).mkdir(parents=True)
    plan = BenchmarkPlan.with_defaults(tmp_path / "out", [Site.from_folder(inside)])
    with pytest.raises(ConfigError, match="lies inside .*sites, which each run clears"):
        run_benchmark(plan)
    assert (inside / "images").is_dir()
    (tmp_path / "theirs" / "owner").mkdir(parents=True)
    (tmp_path / "theirs" / "owner" / "notes.txt").write_text("keep me")
    plan = BenchmarkPlan.with_defaults(tmp_path / "theirs", [Site.from_folder(inside)])
    with pytest.raises(ConfigError, match="did not write; choose a new or empty output"):
        run_benchmark(plan)
    assert (tmp_path / "theirs" / "owner" / "notes.txt").read_text() == "keep me"


def test_only_released_file_names_may_leave(tmp_path):
    (tmp_path / "predictions.json").write_text("{}")
    with pytest.raises(ConfigError, match="predictions.json may not leave a site"):
        _release(tmp_path / "predictions.json", tmp_path / "owner" / "predictions.json")
    assert not (tmp_path / "owner").exists()


# --- the owner's table ----------------------------------------------------------------------


def test_figure_shows_values_withheld_and_not_computed():
    released = {"n_cases": 12, "overall": {"accuracy": 0.75, "auc_macro": None},
                "withheld": ["per_class.normal: fewer than 5 positive or negative cases"]}
    assert figure(released, "accuracy") == 0.75
    assert figure(released, "auc_macro") == "withheld"  # null, explained by the list
    assert figure(released, "subset_accuracy") == "n/a"  # not a figure of these results
    assert figure({"n_cases": "<5", "withheld": ["all figures"]}, "accuracy") == "withheld"
    assert figure({"n_cases": 9, "overall": {"accuracy": "<5"}}, "accuracy") == "withheld"
    assert figure({"n_cases": 9, "overall": {"loss": 0.2},
                   "withheld": ["overall.accuracy: too few cases"]}, "accuracy") == "withheld"
    assert figure({"n_cases": 9, "overall": {"auc_macro": None}}, "auc_macro") == "n/a"
    # Results that mark each figure: "withheld" with a reason, null when undefined.
    marked = {"n_cases": 16, "overall": {"loss": 0.3, "accuracy": "withheld",
                                         "auc_macro": None},
              "withheld": ["overall: accuracy, balanced_accuracy: a count of 1 to 4"],
              "undefined": ["overall.auc_macro: no class has a released value"]}
    assert figure(marked, "loss") == 0.3
    assert figure(marked, "accuracy") == "withheld"
    assert figure(marked, "balanced_accuracy") == "withheld"  # absent, named as withheld
    assert figure(marked, "auc_macro") == "n/a"
    assert figure({"n_cases": 9, "overall": {}, "withheld": ["overall: balanced_accuracy: few"],
                   "undefined": []}, "accuracy") == "n/a"


def test_pool_weights_by_released_cases_and_leaves_out_the_rest():
    pooled = pool([("a", 0.9, 10), ("b", 0.6, 30), ("c", "withheld", "<5"),
                   ("d", FAILED, None), ("e", 0.1, "<5")])
    assert pooled == {"value": 0.675, "sites": 2, "cases": 40, "left_out": ["c", "d", "e"]}
    assert pool([("c", "withheld", "<5")])["value"] is None


def _write_results(owner: Path, site: str, model: str, results: dict) -> None:
    path = owner / site / model / "results.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(results, sort_keys=False))


def test_summary_is_built_from_the_owner_folder_alone(tmp_path):
    owner = tmp_path / "owner"
    _write_results(owner, "big", "m1", {"n_cases": 30, "overall": {
        "accuracy": 0.8, "loss": 0.5, "auc_macro": 0.9, "auc_macro_n_classes": 2}})
    _write_results(owner, "mid", "m1", {"n_cases": 10, "overall": {
        "accuracy": 0.4, "loss": 0.7, "auc_macro": None, "auc_macro_n_classes": 0},
        "withheld": ["per_class.normal: fewer than 5 positive or negative cases"]})
    _write_results(owner, "tiny", "m1", {"n_cases": "<5", "withheld": ["all figures"]})
    _write_results(owner, "big", "m2", {"n_cases": 30, "overall": {"accuracy": 0.5}})
    failed = {("m2", "mid"): Cell("m2", "mid", FAILED, failed_task="infer",
                                  log=tmp_path / "infer.ipynb")}
    summary, cells = summarise(owner, ["big", "mid", "tiny"], ["m1", "m2"], failed,
                               metric="accuracy")
    assert summary["figures"] == ["accuracy", "loss", "auc_macro"]
    assert summary["pooled"]["m1"]["accuracy"] == {
        "value": 0.7, "sites": 2, "cases": 40, "left_out": ["tiny"]}
    assert summary["pooled"]["m1"]["auc_macro"]["value"] == 0.9
    assert summary["pooled"]["m1"]["auc_macro"]["left_out"] == ["mid", "tiny"]
    assert summary["table"]["m1"]["tiny"] == {"status": "withheld", "n_cases": "<5",
                                              "accuracy": "withheld", "loss": "withheld",
                                              "auc_macro": "withheld"}
    assert summary["table"]["m2"]["mid"] == {"status": "failed", "task": "infer",
                                             "log": str(tmp_path / "infer.ipynb")}
    # Nothing released and no failure recorded: still failed, never silently missing.
    assert cells[("m2", "tiny")].status == FAILED
    text = table_text(summary).splitlines()
    assert text[0].split() == ["model", "big", "mid", "tiny", "pooled", "accuracy"]
    assert text[1].split() == ["m1", "0.8", "0.4", "withheld", "0.7", "(2", "sites,", "40",
                               "cases)"]
    assert text[2].split()[:4] == ["m2", "0.5", "failed", "(infer)"]


# --- the second model owner's cube ----------------------------------------------------------


def _layers(weights: Path) -> list[str]:
    with zipfile.ZipFile(weights) as archive:
        config = json.loads(archive.read("config.json"))
    return [layer["class_name"] for layer in config["config"]["layers"]]


def test_second_model_cube_reuses_infer_with_its_own_architecture(root):
    cube = load_cube(root / "mlcubes" / "model_owner_example")
    assert set(cube.tasks) == {"infer"}
    infer = cube.task("infer")
    assert infer.notebook == root / "notebooks" / "05_infer.ipynb"
    assert set(papermill.inspect_notebook(str(infer.notebook))) == {
        p.name for p in infer.parameters}
    reference = load_cube(root / "mlcubes" / "model_custom_cnn")
    assert cube.name != reference.name
    mine = _layers(cube.workspace / "additional_files" / "weights.keras")
    theirs = _layers(reference.workspace / "additional_files" / "weights.keras")
    assert "SeparableConv2D" in mine and "SeparableConv2D" not in theirs
    assert (cube.workspace / "additional_files" / "weights.keras").stat().st_size < 200_000
    assert (cube.path / "make_weights.py").is_file()


# --- a whole run, with a broken site and a broken model -------------------------------------


@pytest.fixture(scope="module")
def benchmark(root: Path, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, dict]:
    """`cxr-tutorial benchmark` on two demo sites plus a broken one, with the reference
    model, a model cube whose weights file is corrupt and one whose manifest is empty."""
    tmp = tmp_path_factory.mktemp("federated")
    sites = make_demo_sites(tmp / "exports", names=["clinic-east", "practice-west"])
    broken_site = tmp / "exports" / "broken-site"
    shutil.copytree(sites[1].data_path.parent, broken_site)
    labels = broken_site / "labels" / "labels.csv"
    labels.write_text(labels.read_text().replace(",normal", ",nromal", 1))
    cube = tmp / "broken_model"
    shutil.copytree(root / "mlcubes" / "model_owner_example", cube)
    manifest = (cube / "mlcube.yaml").read_text()
    (cube / "mlcube.yaml").write_text(
        manifest.replace("cxr-model-owner-example", BROKEN)
        .replace("notebooks/05_infer.ipynb", str(root / "notebooks" / "05_infer.ipynb")))
    (cube / "workspace" / "additional_files" / "weights.keras").write_bytes(b"not a model")
    (tmp / "unloadable").mkdir()
    (tmp / "unloadable" / "mlcube.yaml").write_text("name: unloadable\n")
    before = {"demo": _digest(root / "demo_data"), "exports": _digest(tmp / "exports")}
    out = tmp / "run"
    result = subprocess.run(
        [sys.executable, "-m", "cxr_tutorial.cli", "benchmark",
         "--site", str(sites[0].data_path.parent), "--site", str(sites[1].data_path.parent),
         "--site", str(broken_site),
         "--model", str(root / "mlcubes" / "model_custom_cnn"), "--model", str(cube),
         "--model", str(tmp / "unloadable"),
         "--output", str(out), "--jobs", "2"],
        cwd=tmp, capture_output=True, text=True, timeout=900)
    before["exports_after"] = _digest(tmp / "exports")
    before["demo_after"] = _digest(root / "demo_data")
    return result, out, before


def test_failures_are_reported_and_do_not_stop_the_others(benchmark):
    result, out, _ = benchmark
    assert result.returncode == 1, result.stderr[-3000:]
    rows = {line.split()[0]: line for line in result.stdout.splitlines()
            if line.startswith(("cxr-model-", "model ", "unloadable "))}
    assert rows["model"].split()[1:4] == ["clinic-east", "practice-west", "broken-site"]
    reference = rows[REFERENCE].split()
    assert float(reference[1]) > 0 and reference[2] == "withheld"
    assert reference[3:5] == ["failed", "(prepare)"]
    assert "(1 site, 8 cases)" in rows[REFERENCE]
    assert rows[BROKEN].split()[1:7] == ["failed", "(infer)", "failed", "(infer)",
                                         "failed", "(prepare)"]
    assert f"FAILED {BROKEN} at clinic-east (infer):\n    task 'infer' of {BROKEN} failed" \
        in result.stdout
    assert "FormatError" in result.stdout and "kept as the log" in result.stdout
    assert rows["unloadable"].split()[1:5] == ["failed", "(infer)", "failed", "(infer)"]
    assert "the cube could not be loaded" in result.stdout and "no tasks defined" in \
        result.stdout
    assert "unknown class 'nromal'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_progress_is_shown_per_site_and_task(benchmark):
    result, _, _ = benchmark
    for line in ["[clinic-east] cxr-data-preparator prepare: done in",
                 "[practice-west] cxr-metrics evaluate: done in",
                 f"[clinic-east] {REFERENCE} infer: done in",
                 "[broken-site] cxr-data-preparator prepare FAILED; log:",
                 f"[practice-west] {BROKEN} infer FAILED; log:"]:
        assert line in result.stderr, line


def test_only_statistics_and_results_reach_the_owner(benchmark):
    _, out, _ = benchmark
    owner = out / "owner"
    files = sorted(str(p.relative_to(owner)) for p in owner.rglob("*") if p.is_file())
    assert files == ["benchmark.yaml", f"clinic-east/{REFERENCE}/results.yaml",
                     "clinic-east/statistics.yaml", f"practice-west/{REFERENCE}/results.yaml",
                     "practice-west/statistics.yaml", "table.csv"]
    for name in files[1:-1]:  # the copies are exactly what the sites wrote
        site, rest = name.split("/", 1)
        kept = out / "sites" / site / (rest if rest == "statistics.yaml" else f"models/{rest}")
        assert (owner / name).read_bytes() == kept.read_bytes()
    for path in owner.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for secret in ["case-0", "east-0", "west1", "IM-00", *DEMO_HEADER_VALUES]:
                assert secret not in text, f"{secret} in {path}"
    # What stayed at a site: prepared images, predictions with case ids, logs.
    site = out / "sites" / "clinic-east"
    assert len(list((site / "prepared" / "data" / "images").glob("*.npy"))) == 8
    assert "case-00001" in (site / "models" / REFERENCE / "predictions"
                            / "predictions.json").read_text()
    assert (site / "logs_html" / f"{REFERENCE}.infer.html").is_file()
    assert (site / "logs" / f"cxr-metrics.evaluate.{REFERENCE}.ipynb").is_file()


def test_inputs_are_only_read(benchmark):
    _, _, digests = benchmark
    assert digests["demo"] == digests["demo_after"]
    assert digests["exports"] == digests["exports_after"]


def test_summary_pools_released_sites_and_points_at_logs(benchmark):
    _, out, _ = benchmark
    summary = yaml.safe_load((out / "owner" / "benchmark.yaml").read_text())
    released = yaml.safe_load((out / "owner" / "clinic-east" / REFERENCE / "results.yaml")
                              .read_text())
    assert summary["metric"] == "loss"
    loss = summary["pooled"][REFERENCE]["loss"]
    assert loss == {"value": released["overall"]["loss"], "sites": 1, "cases": 8,
                    "left_out": ["practice-west", "broken-site"]}
    assert summary["pooled"][BROKEN]["loss"]["sites"] == 0
    assert summary["table"][REFERENCE]["practice-west"]["status"] == "withheld"
    failed_prep = summary["table"][REFERENCE]["broken-site"]
    assert failed_prep["status"] == "failed" and failed_prep["task"] == "prepare"
    assert Path(failed_prep["log"]).is_file()
    failed_model = summary["table"][BROKEN]["clinic-east"]
    log = Path(failed_model["log"])
    assert failed_model["task"] == "infer" and log.is_file()
    assert "cannot load Keras model" in log.read_text()
    csv_rows = (out / "owner" / "table.csv").read_text().splitlines()
    assert csv_rows[1].split(",")[:4] == [REFERENCE, str(released["overall"]["loss"]),
                                          "withheld", "failed"]


def test_report_shows_the_table_and_its_links_resolve(benchmark):
    _, out, _ = benchmark
    summary = yaml.safe_load((out / "owner" / "benchmark.yaml").read_text())
    report = out / "report.html"
    page = read_page(report)
    main = page.tables["main-table"]
    assert main[0] == ["model", "clinic-east", "practice-west", "broken-site", "pooled",
                       "sites pooled", "cases pooled"]
    reference = next(row for row in main if row[0] == REFERENCE)
    assert reference[1] == str(summary["table"][REFERENCE]["clinic-east"]["loss"])
    assert reference[2] == "withheld"
    assert reference[3].startswith("failed (prepare)")
    assert reference[5:] == ["1", "8"]
    broken = next(row for row in main if row[0] == BROKEN)
    assert broken[1].startswith("failed (infer)") and broken[4] == "none"
    # A failed cell links to the rendered log of the task that failed.
    row_links = page.cell_links["main-table"][main.index(broken)]
    target = link_target(report, row_links[1][0])
    assert target.name == f"{BROKEN}.infer.html" and "cannot load Keras model" in \
        target.read_text()
    assert not broken_links(report, page)
    released = [row[0] for row in page.tables["released"][1:]]
    assert released == sorted(str(p.relative_to(out / "owner"))
                              for p in (out / "owner").rglob("*") if p.is_file())
    logs = [href for row in page.cell_links["tasks-clinic-east"][1:] for href in row[-1]]
    assert len(logs) == 2 * 6 and len(set(logs)) == len(logs)  # one log per task run
    assert page.tables["tasks-broken-site"][1][3] == "failed"
    assert [row[3] for row in page.tables["tasks-broken-site"][2:]] == ["not run"] * 8
