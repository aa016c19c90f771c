"""The container entrypoint: its command line, parameter checks and file-output publishing.

A full run of every task through the entrypoint, from the command the real mlcube tool
builds, is in tests/test_mlcube_tool.py; these tests cover what must fail, and fail early.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cxr_tutorial import entrypoint
from cxr_tutorial.entrypoint import UsageError, parse_arguments, publish_file

ROOT = Path(__file__).resolve().parent.parent
EVALUATE = ROOT / "notebooks" / "06_evaluate.ipynb"


def test_arguments_in_both_forms_and_their_errors():
    notebook, params = parse_arguments(["nb.ipynb", "--a=/x", "--b", "/y", "--c=k=v"])
    assert notebook == Path("nb.ipynb") and params == {"a": "/x", "b": "/y", "c": "k=v"}
    for words, message in ((["--a=1"], "usage"), (["nb.ipynb", "a=1"], "expected --key=value"),
                           (["nb.ipynb", "--a"], "--a needs a value"),
                           (["nb.ipynb", "--a=1", "--a=2"], "--a is given twice")):
        with pytest.raises(UsageError, match=message):
            parse_arguments(words)


def _main(capsys, *words: str) -> tuple[int, str]:
    status = entrypoint.main(list(words))
    return status, capsys.readouterr().err


def test_unknown_and_missing_keys_are_named_before_any_kernel(capsys, tmp_path):
    status, err = _main(capsys, str(EVALUATE), f"--predictions={tmp_path}",
                        f"--labels={tmp_path}", f"--parameter_file={tmp_path / 'p.yaml'}",
                        f"--output_path={tmp_path / 'results.yaml'}")
    assert status == 2
    assert ("task 'evaluate' of cxr-metrics: unknown --parameter_file; missing "
            "--parameters_file; its parameters are predictions, labels, parameters_file, "
            "output_path") in err


def test_missing_input_is_named_before_any_kernel(capsys, tmp_path):
    status, err = _main(capsys, str(EVALUATE), f"--predictions={tmp_path / 'nowhere'}",
                        f"--labels={tmp_path}", f"--parameters_file={tmp_path}",
                        f"--output_path={tmp_path / 'results.yaml'}")
    assert status == 2
    assert f"input predictions does not exist: {tmp_path / 'nowhere'}" in err


def test_failed_task_leaves_a_file_output_untouched(capsys, tmp_path):
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "predictions.json").write_text("{not json")
    results = tmp_path / "results.yaml"
    results.write_text("earlier results\n")
    status, err = _main(capsys, str(EVALUATE), f"--predictions={tmp_path / 'predictions'}",
                        f"--labels={tmp_path}",
                        f"--parameters_file={ROOT / 'mlcubes/metrics/workspace/parameters.yaml'}",
                        f"--output_path={results}", f"--log_dir={tmp_path / 'logs'}")
    assert status == 1
    assert "task 'evaluate' of cxr-metrics failed in 06_evaluate.ipynb" in err
    assert results.read_text() == "earlier results\n"
    assert (tmp_path / "logs" / "06_evaluate.ipynb").is_file()


def test_publish_renames_where_it_can(tmp_path):
    staged, target = tmp_path / "staged.yaml", tmp_path / "out" / "results.yaml"
    staged.write_text("new\n")
    target.parent.mkdir()
    target.write_text("old\n")
    inode = target.stat().st_ino
    publish_file(staged, target)
    assert target.read_text() == "new\n" and target.stat().st_ino != inode
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.yaml"]


def test_publish_rewrites_a_mounted_file_in_place(tmp_path, monkeypatch):
    # A file mounted on its own (MedPerf's file outputs) refuses a rename onto it.
    staged, target = tmp_path / "staged.yaml", tmp_path / "results.yaml"
    staged.write_text("new\n")
    target.write_text("")
    inode = target.stat().st_ino

    def busy(src, dst):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(dst))

    monkeypatch.setattr(entrypoint.os, "replace", busy)
    publish_file(staged, target)
    assert target.read_text() == "new\n" and target.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.yaml", "staged.yaml"]


def test_state_folders_go_to_the_temporary_folder(tmp_path, monkeypatch):
    for variable in entrypoint.STATE_VARIABLES:
        monkeypatch.setenv(variable, "")  # empty counts as unset; restored afterwards
    monkeypatch.setenv("MPLCONFIGDIR", "/kept")
    entrypoint.use_temporary_state(tmp_path)
    assert os.environ["MPLCONFIGDIR"] == "/kept"
    assert os.environ["IPYTHONDIR"] == str(tmp_path / "ipython")
    assert (tmp_path / "jupyter-runtime").is_dir()
