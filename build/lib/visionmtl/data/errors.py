"""Errors for bad input: every message names the file and the problem (see :mod:`visionmtl.errors`)."""

from __future__ import annotations

from ..errors import DataError

__all__ = ["DataError"]
