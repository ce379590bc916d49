"""The package's import rules, read from the source (AST), plus one real-process check.

- no import cycle between ual modules (module- and function-level imports alike);
- ual.loss and ual.smoothing import nothing of ual;
- ual.figures reaches no model, training or generation code: from its modules, follow every import (module- and
  function-level) of every module reached, plus the module-level imports of the packages that must run first.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "ual"
FORBIDDEN_FOR_FIGURES = ("torch", "transformers", "peft", "accelerate", "ual.common.models", "ual.train",
                         "ual.elicit", "ual.evaluate.generate", "ual.evaluate.likelihood", "ual.evaluate.judge",
                         "ual.evaluate.clustering", "ual.evaluate.controlled", "ual.evaluate.stage", "ual.loss")


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        if any(part in ("notebooks", "profiles", "_data") for part in p.relative_to(PKG).parts):
            continue
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The longest known ual module that ``name`` (a module or module.attribute) names; else ``name``."""
    while name and name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    is_pkg = MODULES[module].name == "__init__.py"
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {_resolve(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module if is_pkg else module.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rsplit(".", 1)[0]
                base = f"{pkg}.{base}" if base else pkg
            out |= {_resolve(f"{base}.{a.name}") for a in node.names}
    return {m for m in out if m != module}


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_no_import_cycles():
    graph = {m: {i for i in _imports(m) if i in MODULES} for m in MODULES}
    # a module importing its own package (or the package re-exporting its submodules) is not a cycle
    graph = {m: {i for i in deps if i not in _parents(m) and m not in _parents(i)} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", ["ual.loss", "ual.smoothing"])
def test_pure_math_imports_nothing_of_ual(module):
    assert not {i for i in _imports(module) if i == "ual" or i.startswith("ual.")}


def test_figures_reach_no_model_training_or_generation_code():
    start = [m for m in MODULES if m == "ual.figures" or m.startswith("ual.figures.")]
    seen, todo, via = set(), list(start), {}
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        deps = set(_imports(m)) if m in MODULES else set()
        for parent in _parents(m):  # packages run their __init__ first: its module-level imports only
            if parent in MODULES:
                deps |= _imports(parent, top_level_only=True)
        for d in deps:
            via.setdefault(d, m)
            if d in MODULES and d not in seen:
                todo.append(d)
    bad = sorted(m for m in seen | set(via) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_FOR_FIGURES))
    assert not bad, f"ual.figures reaches {bad[0]} (imported by {via.get(bad[0])})"


def test_figures_cli_never_imports_torch_or_transformers(tmp_path):
    results = PKG.parent / "results" / "quickstart"
    if not results.is_dir():
        pytest.skip("results/quickstart not in this checkout")
    code = ("import sys\nfrom ual.__main__ import main\n"
            f"rc = main(['figures', '--run', {str(results)!r}, '--out', {str(tmp_path)!r}])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'))\n"
            "assert rc == 0 and not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert len(list(tmp_path.glob("*.png"))) >= 5
