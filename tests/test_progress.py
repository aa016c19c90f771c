"""Progress bars: a widget in JupyterLab, text in a terminal and in headless task runs."""

from __future__ import annotations

import io
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from cxr_tutorial.errors import ConfigError
from cxr_tutorial.progress import PROGRESS_ENV, progress_mode, tqdm
from cxr_tutorial.runner import execute_notebook


def test_text_mode_draws_on_the_given_stream(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "text")
    out = io.StringIO()
    assert list(tqdm(range(3), desc="cases", file=out, disable=False)) == [0, 1, 2]
    assert "cases: 100%" in out.getvalue() and "3/3" in out.getvalue()


def test_auto_mode_outside_jupyter_is_text(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    from tqdm.notebook import tqdm as widget_bar
    from tqdm.std import tqdm as text_bar

    assert progress_mode() == "auto"
    with tqdm(range(2), file=io.StringIO()) as bar:
        assert isinstance(bar, text_bar) and not isinstance(bar, widget_bar)


def test_an_unknown_mode_is_named(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "fancy")
    with pytest.raises(ConfigError, match="CXR_TUTORIAL_PROGRESS='fancy': expected one of "
                                          "auto, text, widget"):
        tqdm(range(2))


def test_a_headless_run_streams_a_text_bar_to_the_terminal(tmp_path: Path, monkeypatch, capfd):
    """What `cxr-tutorial run` shows: the kernel's bar on stderr, and text in the log."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    nb = new_notebook(cells=[
        new_markdown_cell("# Loop"),
        new_code_cell("from cxr_tutorial.progress import tqdm\n"
                      "total = sum(tqdm(range(40), desc='images', mininterval=0))"),
    ])
    nbformat.write(nb, tmp_path / "loop.ipynb")
    execute_notebook(tmp_path / "loop.ipynb", {}, tmp_path / "log.ipynb", "test loop")
    assert "images: 100%" in capfd.readouterr().err
    outputs = nbformat.read(tmp_path / "log.ipynb", as_version=4).cells[1].outputs
    assert {(o.output_type, o.name) for o in outputs} == {("stream", "stderr")}  # no widget
    assert "images: 100%" in "".join(o.text for o in outputs)


def test_tqdm_disable_turns_the_widget_off_too(monkeypatch):
    from cxr_tutorial.progress import tqdm

    monkeypatch.setenv("CXR_TUTORIAL_PROGRESS", "widget")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert tqdm(range(3)).disable
