"""The architecture, checked: imports go one way (worker -> app, never back; no ML library in the web), no import
circle, routes never import each other, and HTTP is spoken in the HTTP layer only."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "worker")
ML_LIBRARIES = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors", "tokenizers", "pyarrow"}
HTTP_LAYER = ("app/main.py", "app/web/")


def modules() -> dict[str, Path]:
    """Every module of the two packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> Iterator[tuple[str, bool]]:
    """(module imported, at module level) for each import in the file, resolved to our modules where it is
    one of them (an imported name that is a submodule counts as that submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package the module is in
                base = name.rsplit(".", node.level)[0] + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in known else base), id(node) in top_level and not _type_checking(tree, node)


def _type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for block in tree.body:
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test) and node in ast.walk(block):
            return True
    return False


def graph(top_level_only: bool) -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, at_top in imports(path, name, names):
            if top_level_only and not at_top:
                continue
            # `import worker.engine.train` also runs the packages above it; they are imported modules too.
            hits = [target] if target in names else []
            edges[name] |= {hit for hit in hits if hit != name}
    return edges


def test_no_import_circle_in_app_and_worker() -> None:
    """No two modules import each other, directly or round about, at import time."""
    edges = graph(top_level_only=True)
    visiting: list[str] = []
    done: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            circles.append([*visiting[visiting.index(node) :], node])
            return
        visiting.append(node)
        for target in sorted(edges[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)
    assert not circles, "import circles: " + "; ".join(" -> ".join(circle) for circle in circles)


def test_app_never_imports_the_worker_or_an_ml_library() -> None:
    """The web process stays light, and `worker` may import `app`, never the reverse (lazy imports too)."""
    known = modules()
    offending = []
    for name, path in known.items():
        if not name.startswith("app"):
            continue
        for target, _ in imports(path, name, set(known)):
            root = target.split(".")[0]
            if root == "worker" or root in ML_LIBRARIES:
                offending.append(f"{path.relative_to(REPO)} imports {target}")
    assert not offending, "\n".join(offending)


def test_no_route_imports_another_route_module() -> None:
    known = modules()
    routes = {name for name in known if name.startswith("app.web.routes.")}
    offending = []
    for name in routes:
        for target, _ in imports(known[name], name, set(known)):
            if target.startswith("app.web.routes") and target != name:
                offending.append(f"{name} imports {target}")
    assert routes and not offending, "\n".join(offending)


def test_http_is_spoken_in_the_http_layer_only() -> None:
    """Services and the domain raise domain errors (app.errors); only app/main.py and app/web/ know HTTP."""
    speaking = []
    for path in sorted([*(REPO / "app").rglob("*.py"), *(REPO / "worker").rglob("*.py")]):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith(HTTP_LAYER):
            continue
        text = path.read_text()
        if re.search(r"\bHTTPException\b|\bfrom fastapi\b|\bimport fastapi\b|\bstarlette\b", text):
            speaking.append(relative)
    assert not speaking, f"HTTP outside the HTTP layer: {speaking}"


@pytest.mark.parametrize("room", ["runtime", "engine", "data", "merge", "serving"])
def test_the_worker_is_in_rooms(room: str) -> None:
    """worker/ shows the architecture: each room a package; only the CLI, the errors and the package itself at
    the top; the asset builders are tools, not runtime."""
    assert (REPO / "worker" / room / "__init__.py").is_file()
    top = {path.name for path in (REPO / "worker").glob("*.py")}
    assert top <= {"__init__.py", "cli.py", "errors.py"}, f"modules outside a room: {top}"
    assert not (REPO / "worker" / "tiny_model.py").exists() and (REPO / "tools" / "tiny_model.py").is_file()
