"""The import rules of docs/architecture.md, enforced on the source (module-level and
function-level imports both): imports point down the layers, stages import no sibling except
the stage kit, there are no import cycles, and nothing outside the world model's own module
reaches into its encoder, dynamics or heads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dreamer_core"

# Layers from the bottom; a module may import modules of its own layer group or below.
LAYERS: list[tuple[str, ...]] = [
    ("dreamer_core", "dreamer_core.errors", "dreamer_core.files", "dreamer_core.types"),
    ("dreamer_core.runtime", "dreamer_core.distributed", "dreamer_core.config", "dreamer_core.logging",
     "dreamer_core.trackers", "dreamer_core.optim"),
    ("dreamer_core.nets", "dreamer_core.data", "dreamer_core.envs"),
    ("dreamer_core.checkpoint", "dreamer_core.losses"),
    ("dreamer_core.interfaces",),
    ("dreamer_core.world_model", "dreamer_core.worldmodels"),  # the two model families
    ("dreamer_core.behavior", "dreamer_core.controller"),  # what learns to act in each
    ("dreamer_core.policies",),
    ("dreamer_core.runs", "dreamer_core.analysis"),
    ("dreamer_core.viz",),
    ("dreamer_core.stages.common", "dreamer_core.stages.outputs", "dreamer_core.stages.updates"),
    ("dreamer_core.stages",),
    ("dreamer_core.cli", "dreamer_core.__main__", "dreamer_core.api"),  # the command line; the Python API
]
BOTTOM = ("dreamer_core.nets", "dreamer_core.data", "dreamer_core.envs", "dreamer_core.files",
          "dreamer_core.errors", "dreamer_core.types")
KIT = ("dreamer_core.stages.common", "dreamer_core.stages.outputs", "dreamer_core.stages.updates")
# The package face re-exports the Python API lazily (PEP 562 ``__getattr__``): the one import
# that points up, made on first use of an API name, never while the package is imported.
LAZY_FACE = {("dreamer_core", "dreamer_core.api")}
# The world model's parts: only world_model.py (and the nets it builds from) may touch them.
WORLD_MODEL_PARTS = {"encoder", "rssm", "decoder", "reward_head", "cont_head", "inverse_head", "codec"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Package modules imported anywhere in ``path`` (``from a import b`` counts ``a.b`` when
    ``a.b`` is a module, else ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found.update(n for n in names if n == "dreamer_core" or n.startswith("dreamer_core."))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def layer(name: str) -> int:
    """Index of the most specific layer entry that ``name`` falls under."""
    best, best_len = None, -1
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{name} is in no layer of this test: add it to LAYERS"
    return best


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_imports_point_down():
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, targets in graph().items() for b in targets if layer(b) > layer(a) and (a, b) not in LAZY_FACE]
    assert not wrong, "\n".join(wrong)


def test_the_package_face_imports_the_api_lazily_only():
    """``dreamer_core/__init__.py`` imports nothing at module level (``import dreamer_core``
    stays cheap) and nothing but the API inside its functions."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
           and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    assert not top, [ast.dump(n) for n in top]
    assert graph()["dreamer_core"] <= {b for _, b in LAZY_FACE}


def test_bottom_layers_import_nothing_above_them():
    wrong = []
    for a, targets in graph().items():
        if any(a == p or a.startswith(p + ".") for p in BOTTOM):
            for b in targets:
                if b != "dreamer_core" and not any(b == p or b.startswith(p + ".") for p in BOTTOM):
                    wrong.append(f"{a} imports {b}")
    assert not wrong, "\n".join(wrong)


def test_nets_data_envs_do_not_import_each_other():
    groups = ("dreamer_core.nets", "dreamer_core.data", "dreamer_core.envs")

    def group(name: str) -> str | None:
        return next((g for g in groups if name == g or name.startswith(g + ".")), None)

    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
             if group(a) and group(b) and group(a) != group(b)]
    assert not wrong, "\n".join(wrong)


def test_stages_import_no_sibling_but_the_kit():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
             if a.startswith("dreamer_core.stages.") and a not in KIT
             and b.startswith("dreamer_core.stages.") and b not in KIT]
    assert not wrong, "\n".join(wrong)


def test_nothing_below_stages_imports_stages_or_cli():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
             if not (a.startswith("dreamer_core.stages") or a in ("dreamer_core.cli", "dreamer_core.__main__",
                                                                   "dreamer_core.api"))
             and (b.startswith("dreamer_core.stages") or b == "dreamer_core.cli")]
    assert not wrong, "\n".join(wrong)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path a -> ... -> a, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    edges = graph()
    # A package's __init__ re-exporting its own modules is not a cycle of the design.
    for name in edges:
        edges[name] = {b for b in edges[name] if not name.startswith(b + ".")}
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def part_accesses(path: Path) -> list[str]:
    """``x.encoder``-style accesses to a world model's parts (``self.<part>`` excluded)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in WORLD_MODEL_PARTS:
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id == "self":
                continue
            hits.append(f"{path.name}:{node.lineno} .{node.attr}")
    return hits


def test_only_the_world_model_touches_its_parts():
    """Callers use the world-model interface; no module outside world_model.py (and the nets it
    is built from) reaches into an encoder, the RSSM or a head."""
    allowed = {PACKAGE / "world_model.py", *(PACKAGE / "nets").rglob("*.py")}
    hits = [h for p in PACKAGE.rglob("*.py") if p not in allowed for h in part_accesses(p)]
    assert not hits, "\n".join(hits)


def test_part_access_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(world_model, batch):\n    return world_model.rssm.observe(world_model.encoder(batch))\n")
    assert len(part_accesses(bad)) == 2


@pytest.mark.parametrize("script", ["01_collect.py", "02_train_world_model.py", "03_train_behavior.py",
                                    "04_evaluate.py"])
def test_stage_scripts_only_use_the_cli(script):
    path = PACKAGE.parent / script
    imported = imports_of(path, set(modules()))
    assert imported <= {"dreamer_core", "dreamer_core.cli"}, imported
