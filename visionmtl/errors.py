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

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (self.__class__, (self.path, self.problem))


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model/config."""


class WeightsError(RuntimeError):
    """Backbone weights could not be obtained or did not fit the network."""


class NonFiniteLossError(FloatingPointError):
    """A task's loss became NaN or infinite; the message names the task and the iteration."""


#: what the tools report as one line with exit code 2 (input errors, not bugs)
EXPECTED_ERRORS: tuple[type, ...] = (ConfigError, DataError, CheckpointError, NonFiniteLossError, WeightsError,
                                     FileNotFoundError)
