"""Shared fixtures: the real-data root (skip with a reason when absent) and tiny generated data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visionmtl.paths import ENV_VAR, data_root

# One thread: on a shared 2-core machine, oversubscribed OpenMP threads slow steps by 10-50x.
torch.set_num_threads(1)


def real_data(*parts: str) -> Path:
    """Path under the shared data root, or skip the test with a clear reason."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path}; set {ENV_VAR} to the folder holding coco128/, camvid/, video/")
    return path


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A tiny deterministic shapes dataset (COCO format), shared by the session."""
    from visionmtl.data.shapes import make_shapes

    out = tmp_path_factory.mktemp("shapes")
    make_shapes(out, train=48, val=16, size=64, seed=0)
    return out
