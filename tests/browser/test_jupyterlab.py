"""Every chapter, read as a reader reads it: opened in JupyterLab in a real browser, Run All.

For each chapter in order (later ones read what earlier ones wrote), the test opens the
notebook in JupyterLab in headless chromium, runs every cell through the Run menu, waits
for the kernel to finish, asserts that every code cell ran and that no output is an error,
checks that progress bars rendered as widgets, and saves a screenshot of the whole chapter.

Heavy (a browser, a server, every chapter): it runs only with CXR_BROWSER_TEST=1, which
`make browser-test` sets after installing chromium and tests/browser/requirements.txt.
Screenshots and a summary.json go to runs/browser/ (or CXR_BROWSER_SCREENSHOTS).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cxr_tutorial.chapters import list_chapters, stage_tutorial

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = list_chapters(ROOT / "notebooks")
CHAPTER_TIMEOUT = 900  # seconds for one chapter's Run All; the slowest needs under a minute
WIDTH = 1280  # pixels; the file browser is closed, so the notebook gets most of it

pytestmark = pytest.mark.skipif(
    os.environ.get("CXR_BROWSER_TEST") != "1",
    reason="the browser test runs with `make browser-test` (sets CXR_BROWSER_TEST=1)",
)

# What the page says about the notebook in view, read in one round trip.
_STATE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const text = (sel) => [...panel.querySelectorAll(sel)].map(e => e.textContent);
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return {
    prompts: cells.map(c => (c.querySelector('.jp-InputPrompt') || {}).textContent || ''),
    stderr: text('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
    kernel: indicator ? indicator.getAttribute('data-status') : null,
    progress: [...panel.querySelectorAll('.widget-hprogress')].map(
        e => (e.closest('.widget-hbox') || e).textContent),
    widgetTrouble: text('.jp-OutputArea-output').filter(
        t => t.includes('Error displaying widget') || t.includes('Loading widget')),
  };
}"""


def _finished(state: dict | None) -> bool:
    """Every code cell numbered, or the run stopped at an error and the kernel is idle."""
    if not state or not state["prompts"]:
        return False
    prompts = [p.strip() for p in state["prompts"]]
    if all(p[1:-2].isdigit() for p in prompts):
        return True
    return state["kernel"] == "idle" and "[*]:" not in prompts and _tracebacks(state)


def _tracebacks(state: dict) -> list[str]:
    return [t for t in state["stderr"] if "Traceback" in t]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A staged tutorial served by JupyterLab, and a browser page on it."""
    from harness import chromium, jupyterlab

    work = tmp_path_factory.mktemp("browser")
    stage_tutorial(ROOT, work / "tutorial")
    (work / "home").mkdir()
    shots = Path(os.environ.get("CXR_BROWSER_SCREENSHOTS", ROOT / "runs" / "browser"))
    shots.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    with jupyterlab(work / "tutorial", work / "home") as (base, token), \
            chromium(work / "profile") as browser:
        page = browser.new_page()
        page.set_viewport_size({"width": WIDTH, "height": 1000})
        yield page, base, token, shots, summary
    (shots / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")


def _kernel_ready(page, base: str, token: str, chapter) -> bool:
    """The server has an idle kernel for the chapter and the page shows it idle too."""
    headers = {"Authorization": f"token {token}"}
    sessions = page.request.get(f"{base}/api/sessions", headers=headers).json()
    idle = any(s["path"].endswith(chapter.path.name)
               and s["kernel"]["execution_state"] == "idle" for s in sessions)
    return idle and (page.evaluate(_STATE_JS) or {}).get("kernel") == "idle"


def _run_all(page, base: str, token: str, chapter) -> dict:
    """Open a chapter in its own workspace, Run All from the menu, wait for the end."""
    page.goto(f"{base}/lab/workspaces/{chapter.name}/tree/notebooks/{chapter.path.name}"
              f"?token={token}")
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell",
                           timeout=120_000)
    deadline = time.monotonic() + 120
    while not _kernel_ready(page, base, token, chapter):
        assert time.monotonic() < deadline, f"{chapter.name}: the kernel did not start"
        page.wait_for_timeout(500)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+b")  # close the file browser: the chapter gets the width
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    deadline = time.monotonic() + CHAPTER_TIMEOUT
    state = page.evaluate(_STATE_JS)
    while not _finished(state):
        assert time.monotonic() < deadline, f"{chapter.name}: still running: {state}"
        page.wait_for_timeout(1000)
        state = page.evaluate(_STATE_JS)
    page.wait_for_timeout(1500)  # widgets and figures finish rendering
    return page.evaluate(_STATE_JS)


def _screenshot(page, path: Path) -> None:
    """The whole chapter in one picture: the window grown to the notebook's height."""
    height = page.evaluate("""() => {
      const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
      panel.querySelector('.jp-WindowedPanel-outer').scrollTop = 0;
      return panel.querySelector('.jp-WindowedPanel-inner').scrollHeight; }""")
    page.set_viewport_size({"width": WIDTH, "height": min(height + 200, 16000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": WIDTH, "height": 1000})


def _shut_down_kernels(page, base: str, token: str) -> None:
    """Free each chapter's kernel before the next one starts (TensorFlow is heavy)."""
    headers = {"Authorization": f"token {token}"}
    for session in page.request.get(f"{base}/api/sessions", headers=headers).json():
        page.request.delete(f"{base}/api/sessions/{session['id']}", headers=headers)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_chapter_runs_in_jupyterlab(lab, chapter):
    page, base, token, shots, summary = lab
    start = time.monotonic()
    state = _run_all(page, base, token, chapter)
    seconds = time.monotonic() - start
    _screenshot(page, shots / f"{chapter.name}.png")
    _shut_down_kernels(page, base, token)
    summary[chapter.name] = {"seconds": round(seconds, 1), "cells": len(state["prompts"]),
                             "progress_bars": state["progress"],
                             "stderr": [t[:300] for t in state["stderr"]]}
    assert not _tracebacks(state), f"{chapter.name}: error output:\n" + "\n".join(
        _tracebacks(state))
    unrun = [i + 1 for i, p in enumerate(state["prompts"]) if not p.strip()[1:-2].isdigit()]
    assert not unrun, f"{chapter.name}: code cells {unrun} did not run"
    assert not state["widgetTrouble"], f"{chapter.name}: {state['widgetTrouble']}"
    if chapter.number == 0:
        # The index demonstrates a progress bar: it must render as a widget, filled.
        assert any("100%" in bar for bar in state["progress"]), state["progress"]
