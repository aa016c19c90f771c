"""A JupyterLab server and a headless Debian chromium, both private to one test run.

JupyterLab starts on 127.0.0.1 only, on a free port, with a random token and temporary
JUPYTER_CONFIG_DIR, JUPYTER_DATA_DIR and JUPYTER_RUNTIME_DIR, and is shut down afterwards.
Chromium is the system's (``/usr/bin/chromium``, or ``CXR_CHROMIUM``), driven by
Playwright; no browser is ever downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
"""The browser binary: Debian's chromium unless CXR_CHROMIUM says otherwise."""

CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-background-networking",  # no network here besides package registries
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Lab settings for a run nobody watches: every cell in the DOM (no virtual scrolling), so
# prompts, outputs and the screenshot cover the whole chapter; no news pop-up.
_USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
_DISABLED_EXTENSIONS = {"@jupyterlab/apputils-extension:announcements": True}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lab_environment(home: Path) -> dict[str, str]:
    """The server's environment: private Jupyter folders, kernels as a reader gets them.

    Args:
        home: A temporary folder that receives every Jupyter, IPython, Keras and matplotlib
            state folder.

    Returns:
        A copy of ``os.environ`` with those folders set, and without the test suite's
        ``TQDM_DISABLE`` and ``MPLBACKEND``, so bars and figures show as in JupyterLab.
    """
    env = dict(os.environ)
    for var, sub in {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                     "JUPYTER_RUNTIME_DIR": "runtime", "IPYTHONDIR": "ipython",
                     "KERAS_HOME": "keras", "MPLCONFIGDIR": "matplotlib"}.items():
        env[var] = str(home / sub)
        (home / sub).mkdir(parents=True, exist_ok=True)
    for var in ("TQDM_DISABLE", "MPLBACKEND", "CXR_TUTORIAL_PROGRESS", "JUPYTER_PATH",
                "JUPYTER_TOKEN"):
        env.pop(var, None)
    env["JUPYTERLAB_SETTINGS_DIR"] = str(home / "config" / "lab" / "user-settings")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(home / "config" / "lab" / "workspaces")
    for name, settings in _USER_SETTINGS.items():
        path = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings), encoding="utf-8")
    labconfig = home / "config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": _DISABLED_EXTENSIONS}), encoding="utf-8")
    return env


@contextlib.contextmanager
def jupyterlab(root: Path, home: Path, timeout: float = 120) -> Iterator[tuple[str, str]]:
    """Run JupyterLab on ``root`` for the duration of a ``with`` block.

    Args:
        root: The folder JupyterLab serves (a staged tutorial).
        home: A temporary folder for its state and its log (``home/lab.log``).
        timeout: Seconds to wait for the server to answer.

    Yields:
        ``(base_url, token)``.

    Raises:
        RuntimeError: If the server exits or does not answer in time (with its log).
    """
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    log = open(home / "lab.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=lab_environment(home), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_server(server, f"{base}/api/status?token={token}", timeout, home / "lab.log")
        yield base, token
    finally:
        server.send_signal(signal.SIGTERM)  # a clean shutdown also stops its kernels
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _wait_for_server(server: subprocess.Popen, url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n"
                               f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n"
                       f"{log.read_text()[-3000:]}")


@contextlib.contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 1000):
    """A headless chromium with a fresh profile, as a Playwright browser context.

    Args:
        profile: An empty folder used as ``--user-data-dir``.
        width: Viewport width in pixels.
        height: Initial viewport height in pixels.

    Yields:
        The Playwright ``BrowserContext``.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield context
        finally:
            context.close()
