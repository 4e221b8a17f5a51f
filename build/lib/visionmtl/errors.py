"""Errors caused by input, in one leaf module that every layer may import.

Each is shown by the tools as one ``error: <message>`` line with exit code 2
(:func:`visionmtl.cli.run`); messages name the file, key or value at fault.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "WeightsError", "EXPECTED_ERRORS"]


class ConfigError(ValueError):
    """A problem with a configuration file or override; the message is one line."""


class DataError(Exception):
    """A problem with one input file. ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str, problem: str | None = None):
        if problem is None:  # one ready message (torch re-raises a worker's error this way)
            self.path, self.problem = "", str(path)
            super().__init__(self.problem)
            return
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (self.__class__, (self.path, self.problem) if self.path else (self.problem,))


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model/config."""


class WeightsError(RuntimeError):
    """Backbone weights could not be obtained or did not fit the network."""


class NonFiniteLossError(FloatingPointError):
    """A task's loss became NaN or infinite; the message names the task and the iteration."""


def one_line(err: BaseException) -> str | None:
    """The one-line message of an input error, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process with the worker's traceback in its
    message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."), as the
    same type or as a RuntimeError; the original message is the traceback's last line. Returns
    None when ``err`` is not an input error.
    """
    text = str(err)
    if "in DataLoader worker process" in text and "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        name, sep, msg = last.partition(": ")
        if sep and name.rsplit(".", 1)[-1] in {e.__name__ for e in EXPECTED_ERRORS}:
            return msg.strip()
        return None
    if isinstance(err, EXPECTED_ERRORS):
        return " ".join(text.split("\n")).strip() if "\n" in text else text
    return None


#: what the tools report as one line with exit code 2 (input errors, not bugs)
EXPECTED_ERRORS: tuple[type, ...] = (ConfigError, DataError, CheckpointError, NonFiniteLossError, WeightsError,
                                     FileNotFoundError)
