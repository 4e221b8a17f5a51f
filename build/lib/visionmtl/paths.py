"""Where real data lives: one environment variable, ``VISIONMTL_DATA``, default ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "VISIONMTL_DATA"
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The shared real-data folder (``$VISIONMTL_DATA``, else ``<repo>/../shared/data``)."""
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser() if value else (REPO_ROOT.parent / "shared" / "data").resolve()


def expand(path: str | os.PathLike) -> str:
    """Expand ``~`` and ``${VISIONMTL_DATA}`` (even when unset) in a config path."""
    s = str(path)
    if "${" + ENV_VAR + "}" in s or "$" + ENV_VAR in s:
        s = s.replace("${" + ENV_VAR + "}", str(data_root())).replace("$" + ENV_VAR, str(data_root()))
    return os.path.expanduser(os.path.expandvars(s))
