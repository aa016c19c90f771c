"""Progress bars that show where a reader looks: a widget in JupyterLab, text elsewhere.

``tqdm.auto`` picks a widget whenever the code runs inside a Jupyter kernel. That is right
in JupyterLab, and wrong when a kernel has no one watching: a task run by papermill for
``cxr-tutorial run`` or ``cxr-tutorial test``, where a widget shows nothing in the terminal
and leaves a stale "0%" in the executed notebook. The runner therefore sets
``CXR_TUTORIAL_PROGRESS=text`` for its kernels, and :func:`tqdm` then draws a text bar on
stderr, which the runner streams to the terminal.

``CXR_TUTORIAL_PROGRESS`` takes ``auto`` (the default: widget in Jupyter, text in a
terminal), ``text`` or ``widget``. ``TQDM_DISABLE=1`` still turns every bar off.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from cxr_tutorial.errors import ConfigError

PROGRESS_ENV = "CXR_TUTORIAL_PROGRESS"
"""Environment variable choosing the kind of progress bar: ``auto``, ``text`` or ``widget``."""

_MODES = ("auto", "text", "widget")


def progress_mode() -> str:
    """The kind of bar :func:`tqdm` draws, from ``CXR_TUTORIAL_PROGRESS``.

    Returns:
        ``"auto"``, ``"text"`` or ``"widget"``.

    Raises:
        ConfigError: If the variable holds anything else.
    """
    mode = os.environ.get(PROGRESS_ENV, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ConfigError(f"{PROGRESS_ENV}={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def tqdm(iterable: Iterable | None = None, **kwargs: Any):
    """A ``tqdm`` progress bar of the kind :func:`progress_mode` asks for.

    A drop-in replacement for ``tqdm.auto.tqdm``: same arguments, same object. The choice is
    made at each call, so a kernel started with another ``CXR_TUTORIAL_PROGRESS`` needs no
    re-import.

    Args:
        iterable: What to iterate over, as for ``tqdm``.
        **kwargs: Passed to ``tqdm`` (``total``, ``desc``, ``unit``...).

    Returns:
        A ``tqdm.std.tqdm`` (text on stderr) or a ``tqdm.notebook.tqdm`` (a widget).
    """
    mode = progress_mode()
    # tqdm.notebook ignores TQDM_DISABLE (only the text bar reads it), so honour it here.
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        kwargs.setdefault("disable", True)
    if mode == "text":
        from tqdm.std import tqdm as bar
    elif mode == "widget":
        from tqdm.notebook import tqdm as bar
    else:
        from tqdm.auto import tqdm as bar
    return bar(iterable, **kwargs)
