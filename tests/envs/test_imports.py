"""The env modules import each other without cycles, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import dreamer_core.envs

ENVS = Path(dreamer_core.envs.__file__).parent
MODULES = sorted(p.stem for p in ENVS.glob("*.py") if p.stem != "__init__")


def sibling_imports(module: str) -> set[str]:
    """The sibling env modules ``module`` imports anywhere in its file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse((ENVS / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["dreamer_core", "envs"] and len(parts) > 2 and parts[2] in MODULES:
                found.add(parts[2])
    return found - {module}


def test_no_import_cycles_among_env_modules():
    graph = {module: sibling_imports(module) for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])
    assert graph["config"] == set()  # EnvConfig sits below every other env module
    for suite in ("atari", "dmc", "retro"):
        assert "make" not in graph[suite] and "config" in graph[suite]


def test_env_config_is_importable_from_the_package_and_its_module():
    from dreamer_core.envs import EnvConfig
    from dreamer_core.envs.config import EnvConfig as FromModule

    assert EnvConfig is FromModule
    assert FromModule("dmc:walker-walk").effective_action_repeat == 2
