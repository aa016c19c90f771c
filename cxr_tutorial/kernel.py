"""The kernel a task's notebook runs in: IPython's own, started without its debugger.

The runner starts every task's kernel as ``python -m cxr_tutorial.kernel -f CONNECTION``
with its own interpreter, instead of the ``python3`` kernel spec. That spec may point to
another Python, where this package is missing or has another version: a spec in a
``JUPYTER_PATH`` folder takes precedence over the environment's, and so does a user's own
when the runner's Python is not a virtual or conda environment. A task then failed before
its first cell, or ran other code than the runner's.

A headless task has no debugger client, and ipykernel imports debugpy only to offer one:
about 50 ms of every task's start. Marking debugpy absent makes ipykernel start without
it; nothing else about the kernel changes.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Start an IPython kernel, taking the usual ``-f CONNECTION_FILE`` arguments."""
    sys.modules.setdefault("debugpy", None)  # type: ignore[arg-type]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
