"""The import graph: layers import downward only, so there is no cycle, and the light parts stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "visionmtl"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """visionmtl modules ``path`` imports, at module level or inside functions (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text())
    this = _module(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("visionmtl"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("visionmtl"):
                continue
            # "from .x import y" may name a submodule y
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if _exists(sub) else mod)
    return {m for m in out if m != this}


def _exists(mod: str) -> bool:
    p = ROOT.joinpath(*mod.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PKG.rglob("*.py"):
        mod = _module(path)
        own = {".".join(mod.split(".")[:k]) for k in range(1, mod.count(".") + 1)}  # already initialising
        edges = set()
        for m in _imports(path):
            if not _exists(m):
                continue
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = m.split(".")
            edges.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        graph[mod] = {m for m in edges - own if m != mod}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return []

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 50
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_layers_import_downward():
    """A few layer rules the design states: inference never reaches the trainer, config and task specs
    never reach the engine, the data layer never reaches inference."""
    graph = _graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for m in graph.get(todo.pop(), ()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen

    for mod in ("visionmtl.inference.predictor", "visionmtl.inference.video"):
        assert "visionmtl.engine.trainer" not in reach(mod), mod
    for mod in ("visionmtl.config", "visionmtl.tasks"):
        bad = {m for m in reach(mod) if m.startswith(("visionmtl.engine", "visionmtl.inference", "visionmtl.mtl.step"))}
        assert not bad, (mod, bad)
    assert not {m for m in reach("visionmtl.data.dataset") if m.startswith("visionmtl.inference")}
    assert reach("visionmtl.errors") == set()  # a leaf


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=120).stdout


def test_config_loads_without_torch_and_inference_without_the_trainer():
    out = _run("""
        import sys, time
        t = time.perf_counter()
        from visionmtl.config import load_config
        cfg = load_config("configs/shapes/r18_fpn_3heads.yaml")
        print(round(time.perf_counter() - t, 3), "torch" in sys.modules)
        import visionmtl.inference.predictor, visionmtl.inference.video
        print("visionmtl.engine.trainer" in sys.modules)
    """).split()
    seconds, torch_loaded, trainer = float(out[0]), out[1], out[2]
    assert torch_loaded == "False"  # a typo in a config fails before torch is imported
    assert seconds < 5.0  # well under a second on an idle machine; generous for a loaded CI
    assert trainer == "False"
