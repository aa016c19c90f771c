"""cxr_tutorial: a MedPerf-style chest X-ray benchmark whose cubes are notebooks.

The package holds the logic that the cube notebooks call and that the command line
(`cxr-tutorial run`, `cxr-tutorial test`) drives. Modules that need TensorFlow
(`cxr_tutorial.model`) are imported only by the tasks that use them, so data preparation
and metrics start without it.
"""

import logging

__version__ = "0.1.0"

logger = logging.getLogger("cxr_tutorial")
"""The package logger. Library code logs here; only entry points configure handlers."""
