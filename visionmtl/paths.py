"""Where data and configs live.

Two roots, each one environment variable, usable in configs as ``${NAME}``:

- ``VISIONMTL_DATASETS``: datasets visionmtl generates or you keep (the shapes dataset of
  ``make demo``). Default: ``data/`` of the source checkout when visionmtl runs from one, else
  ``data/`` in the working directory (an installed package has no other natural home; as
  Ultralytics' ``datasets_dir``).
- ``VISIONMTL_DATA``: the shared real data (COCO128, CamVid, the test video). Default:
  ``../shared/data`` beside the checkout, else ``VISIONMTL_DATASETS``.

Any other relative path in a config file (dataset files and folders, ``model.load_from``)
resolves against the folder of the config file that sets it, never the working directory; a
relative path given by ``--set`` or in a Python dict resolves against the working directory,
as a command-line path does. The run's saved ``config.yaml`` holds the absolute paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DATASETS_VAR = "VISIONMTL_DATASETS"
ENV_VAR = "VISIONMTL_DATA"
PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root() -> Optional[Path]:
    """The source checkout visionmtl runs from (it holds ``pyproject.toml`` and ``configs/``), or
    ``None`` for an installed package."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "configs").is_dir() else None


def _env(name: str) -> Optional[Path]:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else None


def datasets_dir() -> Path:
    """``$VISIONMTL_DATASETS``, else ``<checkout>/data``, else ``./data`` (installed)."""
    root = checkout_root()
    return _env(DATASETS_VAR) or ((root / "data") if root else (Path.cwd() / "data").resolve())


def data_root() -> Path:
    """The shared real-data folder: ``$VISIONMTL_DATA``, else ``<checkout>/../shared/data``, else
    :func:`datasets_dir`."""
    root = checkout_root()
    return _env(ENV_VAR) or ((root.parent / "shared" / "data").resolve() if root else datasets_dir())


def expand(path: str | os.PathLike) -> str:
    """Expand ``~``, ``${VISIONMTL_DATA}`` and ``${VISIONMTL_DATASETS}`` (even when unset) and
    other environment variables in a config path."""
    s = str(path)
    for name, root in ((DATASETS_VAR, datasets_dir), (ENV_VAR, data_root)):
        for token in ("${" + name + "}", "$" + name):
            if token in s:
                s = s.replace(token, str(root()))
    return os.path.expanduser(os.path.expandvars(s))


def resolve(path: str | os.PathLike, base: Optional[str | os.PathLike] = None) -> str:
    """:func:`expand` ``path``; a relative result is taken relative to ``base`` (a config file's
    folder) when given, else left relative to the working directory."""
    s = expand(path)
    if base is not None and s and not os.path.isabs(s):
        s = os.path.normpath(os.path.join(os.fspath(base), s))
    return s


def shipped_configs() -> Path:
    """The folder of the configs that ship with visionmtl (``configs/``; ``visionmtl/configs`` in a wheel)."""
    return PACKAGE_DIR / "configs"


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
