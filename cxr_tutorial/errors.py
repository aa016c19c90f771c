"""The package's exceptions: one root, a few families, messages that say what to fix."""


class CxrTutorialError(Exception):
    """Root of every error this package raises on purpose.

    The command line shows these messages as they are, without a traceback, so each one
    names the offending file, row or field and what was expected instead.
    """


class ConfigError(CxrTutorialError):
    """A parameters file, manifest or command-line override is missing or invalid."""


class DataError(CxrTutorialError):
    """Raw input data (images, labels) cannot be turned into the prepared format."""


class FormatError(CxrTutorialError):
    """A prepared data set, predictions file or weights file breaks its documented contract."""


class TaskError(CxrTutorialError):
    """A cube task failed; the message names the task, the notebook cell and the log."""
