"""The code layout the README's "Code layout" section promises, checked on the source itself.

Imports run one way (core <- models <- pruning <- stages <- application <- entry points), there is no import
cycle between project modules (imports inside functions included), imports inside functions are only where they
keep ``torch`` out of the config validation, and no module, function or signature outgrows the limits that keep
the code readable.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "models", "pruning")
ENTRY_SCRIPTS = ("trainer_exp.py", "pruner_exp.py")
# Layers, lowest first: a module imports only from its own layer or lower ones.
LAYERS = (("utils.core",), ("models",), ("pruning",),
          ("utils.config", "utils.data", "utils.checkpoint", "utils.train", "utils.report"), ("utils.app",))
ENTRY_LAYER = len(LAYERS)  # the scripts and ``python -m`` entry points
# Imports inside functions, allowed only where the module is imported before torch may be (config validation).
LAZY_IMPORTS_ALLOWED = {"trainer_exp", "pruner_exp", "utils.app.cli"}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 8  # self/cls not counted


def _modules() -> dict[str, Path]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    files += [REPO / name for name in ENTRY_SCRIPTS]
    found = {}
    for path in files:
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The project modules ``node`` (in ``module``) imports: ``from a.b import c`` is ``a.b.c`` if that is a
    module, else ``a.b``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        assert not node.level, f"{module}: a relative import (the project imports by absolute names)"
        base = node.module or ""
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return {name for name in names if name in MODULES and name != module}


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(every project module ``module`` imports, those imported inside a function)."""
    every, inner = set(), set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    inner |= _imported(module, sub)
        if isinstance(node, ast.Import | ast.ImportFrom):
            every |= _imported(module, node)
    return every, inner


IMPORTS = {name: _imports(name) for name in MODULES}


def _layer(module: str) -> int:
    if module.split(".")[0] + ".py" in ENTRY_SCRIPTS or module.endswith("__main__"):
        return ENTRY_LAYER
    for layer, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    return ENTRY_LAYER - 1 if module == "utils" else -1


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if _layer(m) < 0 and m != "utils"] == []


def test_imports_run_one_way() -> None:
    upward = [f"{module} -> {target}" for module, (targets, _) in IMPORTS.items() for target in sorted(targets)
              if target != "utils" and _layer(target) > _layer(module)]
    assert upward == []


def test_no_import_cycle() -> None:
    graph = {module: targets for module, (targets, _) in IMPORTS.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_imports_inside_functions_only_keep_torch_out_of_config_validation() -> None:
    lazy = sorted(module for module, (_, inner) in IMPORTS.items() if inner and module not in LAZY_IMPORTS_ALLOWED)
    assert lazy == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_functions_and_signatures_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{module}.{node.name}: {length} lines"
            args = node.args
            params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
            count = len(params) - (1 if params and params[0].arg in ("self", "cls") else 0)
            assert count <= MAX_PARAMETERS, f"{module}.{node.name}: {count} parameters"
