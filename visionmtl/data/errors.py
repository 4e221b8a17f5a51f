"""Errors for bad input: every message names the file and the problem."""

from __future__ import annotations


class DataError(Exception):
    """A problem with one input file. ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (self.__class__, (self.path, self.problem))
