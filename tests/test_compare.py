"""tools/compare_strategies.py: every strategy trained under one budget, outputs, reuse of finished runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.test_engine import ROOT, tiny_cfg


def test_compare_strategies_tool(shapes_dir, tmp_path):
    from visionmtl.config import save_config

    cfg = tiny_cfg(shapes_dir, tmp_path / "unused", tasks=("cls", "seg"), epochs=1, threads=1)
    cfg.data.train[0].limit = 16
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    out = tmp_path / "cmp"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "tools/compare_strategies.py", str(path), "--strategies", "single,fixed,alternating",
           "--out", str(out), "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("compare.md", "compare.csv", "compare.json", "compare.png"):
        assert (out / f).is_file(), f
    res = json.loads((out / "compare.json").read_text())
    rows = {row["strategy"]: row for row in res["rows"]}
    assert set(rows) == {"single", "fixed", "alternating"}
    assert rows["single"]["delta_m"] is None and rows["fixed"]["delta_m"] is not None
    assert all(row["step_ms"] > 0 and row["peak_rss_mb"] > 0 for row in rows.values())
    assert rows["alternating"]["task_steps"] == {"cls": 2, "seg": 2}
    assert "| fixed |" in (out / "compare.md").read_text()
    # a second call reuses the finished runs
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0 and r.stderr.count("already done") == 4, r.stderr[-2000:]
    bad = subprocess.run([sys.executable, "tools/compare_strategies.py", str(path), "--strategies", "fixd"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert bad.returncode == 2 and "did you mean 'fixed'" in bad.stderr and "Traceback" not in bad.stderr
