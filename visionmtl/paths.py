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


def shipped_configs() -> Path:
    """The folder of the configs that ship with visionmtl (``configs/``; ``visionmtl/configs`` in a wheel)."""
    return Path(__file__).resolve().parent / "configs"


def find_config(path: str | os.PathLike) -> Path:
    """``path`` when it is a file, else the shipped config of that name (``shapes/r18_fpn_3heads``,
    with or without ``.yaml``), so that an installed ``visionmtl train shapes/r18_fpn_3heads`` works.

    Raises:
        ConfigError: neither exists (the message lists the shipped configs).
    """
    from .errors import ConfigError

    given = Path(path)
    if given.is_file():
        return given
    root = shipped_configs()
    for cand in (root / given, root / given.with_suffix(".yaml")):
        if not given.is_absolute() and cand.is_file():
            return cand
    if given.exists():
        raise ConfigError(f"{path}: not a config file")
    names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml")
                   if not p.parent.name.startswith("_")) if root.is_dir() else []
    raise ConfigError(f"{path}: config not found (neither a file nor a shipped config; shipped: {', '.join(names)})")
