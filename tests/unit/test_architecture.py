"""The code's shape: no import cycle among the project's modules, and dependencies that run one way
(docs/design.md): tokenizer <- pipelines <- flows; training stands alone; pipelines never imports Prefect."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "flows", "training", "tokenizer")
ALLOWED = {  # what each package may import of the project's packages (and of Prefect)
    "tokenizer": set(),
    "training": set(),
    "pipelines": {"tokenizer"},
    "flows": {"pipelines", "tokenizer", "training", "prefect"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports, anywhere in the file (function-level imports too). Importing
    `a.b.c` also runs the `__init__` of `a.b` and `a`, so those count, unless they contain `name`."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import"
            base = node.module or ""
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    edges = set()
    for target in targets:
        parts = target.split(".")
        for k in range(1, len(parts) + 1):
            candidate = ".".join(parts[:k])
            if candidate in known and candidate != name and not name.startswith(candidate + "."):
                edges.add(candidate)
    return edges


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    graph = _graph()
    assert len(graph) > 40
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_dependencies_run_one_way() -> None:
    wrong = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                )  # fmt: skip
                for top in {n.split(".")[0] for n in names}:
                    if top in (*PACKAGES, "prefect") and top != package and top not in ALLOWED[package]:
                        wrong.append(f"{path.relative_to(REPO)} imports {top}")
    assert not wrong, wrong
