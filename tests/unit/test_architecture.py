"""The layout ARCHITECTURE.md describes is the layout the code has: rooms import only downward,
no module imports itself back through others, and nothing below the command line imports it.

Imports are read from the source (every `import`, including those inside functions and under
TYPE_CHECKING), so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "nhidel"

# Lowest first. A module may import its own room and any room before it.
ROOMS = (
    "foundation",
    "keys",
    "tokens",
    "ledger",
    "audit",
    "integrity",
    "verifiers",
    "actions",
    "enforce",
    "cli",
)
# The package itself (the lazy public API) and `python -m nhidel` are entry points, not rooms.
ENTRY_POINTS = {"nhidel", "nhidel.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else "foundation"


def imports(module: str) -> set[str]:
    """The nhidel modules `module` imports (a name imported from a package counts as its
    submodule when there is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module}: relative import; nhidel uses absolute imports")
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nhidel":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else str(node.module))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "nhidel")
    return found - {module}


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_belongs_to_a_known_room() -> None:
    assert {room(m) for m in MODULES if m not in ENTRY_POINTS} <= set(ROOMS)
    # Each room is a package with a doorplate: its docstring says what lives there.
    for name in ROOMS[1:]:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text("utf-8")))
        assert doc and len(doc.split()) > 15, f"nhidel/{name}/__init__.py needs a doorplate"


@pytest.mark.parametrize("module", sorted(set(MODULES) - ENTRY_POINTS))
def test_a_module_imports_only_its_own_room_and_rooms_below(module: str) -> None:
    mine = ROOMS.index(room(module))
    upward = {
        target
        for target in GRAPH[module]
        if target not in ENTRY_POINTS and ROOMS.index(room(target)) > mine
    }
    assert not upward, f"{module} ({room(module)}) imports from above: {sorted(upward)}"


def test_no_module_reaches_itself_through_its_imports() -> None:
    def cycle_from(start: str) -> list[str] | None:
        path: list[str] = []

        def walk(node: str) -> list[str] | None:
            if node in path:
                return [*path[path.index(node) :], node]
            if node in done or node in ENTRY_POINTS:
                return None
            path.append(node)
            for target in sorted(GRAPH.get(node, ())):
                found = walk(target)
                if found:
                    return found
            path.pop()
            done.add(node)
            return None

        return walk(start)

    done: set[str] = set()
    for module in sorted(GRAPH):
        cycle = cycle_from(module)
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_architecture_page_names_every_module_in_its_room() -> None:
    page = (ROOT / "ARCHITECTURE.md").read_text("utf-8").splitlines()
    rows = {
        name: next((line for line in page if line.startswith(start)), "")
        for name, start in (("foundation", "| foundation"), *((r, f"| `{r}/`") for r in ROOMS[1:]))
    }
    for module, path in MODULES.items():
        if path.name == "__init__.py" and room(module) != "cli" or module in ENTRY_POINTS:
            continue
        assert f"`{path.name}`" in rows[room(module)], (
            f"ARCHITECTURE.md's {room(module)} row does not name {path.name}"
        )
