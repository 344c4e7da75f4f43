"""The import structure of ``gte_st``: no import cycles (counting every import that runs, inside functions too, and
leaving out only ``if TYPE_CHECKING:`` blocks), dependencies that point one way through the layers, and no module
importing another module's private names. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gte_st"

# The layers, lowest first: a module may import from its own layer and the layers below, never above.
LAYERS: list[set[str]] = [
    {"gte_st", "gte_st.errors", "gte_st.files", "gte_st.fingerprint", "gte_st.checkpoints", "gte_st.readers",
     "gte_st.weights", "gte_st.registry", "gte_st.training_summary", "gte_st.hardware", "gte_st.calibration"},
    {"gte_st.pooling", "gte_st.losses"},
    {"gte_st.model", "gte_st.encoding", "gte_st.data", "gte_st.corpus", "gte_st.convert", "gte_st.default_data",
     "gte_st.duplicates", "gte_st.clusters", "gte_st.vocabulary", "gte_st.ranking", "gte_st.lora",
     "gte_st.interpolation"},
    {"gte_st.training", "gte_st.evaluation", "gte_st.search", "gte_st.hub", "gte_st.loading", "gte_st.export",
     "gte_st.model_card"},
    {"gte_st.commands"},
    {"gte_st.cli", "gte_st.training.__main__"},  # entry points
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import in ``path`` that runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((base, [alias.name for alias in node.names], node.lineno))
        visit(node)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    """module -> the gte_st modules it imports (``from gte_st.x import y`` also counts ``gte_st.x.y`` when that is a
    module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names, _ in imports_of(path):
            if not target.startswith("gte_st"):
                continue
            if target in modules:
                edges[name].add(target)
            for item in names:
                if f"{target}.{item}" in modules:
                    edges[name].add(f"{target}.{item}")
        edges[name].discard(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return found


def _layer(module: str) -> int | None:
    best = None
    for level, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and (best is None or len(member) > len(best[1])):
                best = (level, member)
    return None if best is None else best[0]


def test_there_are_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_there_are_no_cycles_between_packages():
    """The same at package level (``gte_st.training.*`` is one node): a package whose modules import each other
    through another package is a cycle too (the model card below training reading training's summary was one)."""

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    collapsed: dict[str, set[str]] = {}
    for source, targets in graph().items():
        collapsed.setdefault(top(source), set()).update(top(t) for t in targets if top(t) != top(source))
    collapsed.pop("gte_st", None)  # the package root re-exports lazily
    for targets in collapsed.values():
        targets.discard("gte_st")
    found = cycles(collapsed)
    assert not found, "package cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_module_has_a_layer_and_imports_point_down():
    edges = graph()
    unplaced = sorted(m for m in edges if _layer(m) is None)
    assert not unplaced, f"modules without a layer in LAYERS: {unplaced}"
    upward = [
        f"{source} (layer {_layer(source)}) imports {target} (layer {_layer(target)})"
        for source, targets in sorted(edges.items())
        for target in sorted(targets)
        if _layer(target) > _layer(source)
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for target, names, line in imports_of(path):
            if not target.startswith("gte_st"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            # a private module (``commands/_args.py``) is shared by the modules of its own package only
            parts = target.split(".")
            hidden = [p for p in parts[1:] if p.startswith("_") and not p.startswith("__")]
            own_package = ".".join(parts[: parts.index(hidden[0])]) if hidden else ""
            outsider = bool(hidden) and not module_name(path).startswith(own_package + ".")
            if private or outsider:
                offenders.append(f"{module_name(path)}:{line} imports {private or ''} from {target}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_finds_a_cycle_and_an_upward_import():
    """Negative controls: the graph walk sees imports inside functions, and both checks fire."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    edges = graph()
    assert "gte_st.loading" in edges["gte_st.commands._args"]  # a function-level import
    assert _layer("gte_st.cli") > _layer("gte_st.commands.eval") > _layer("gte_st.search.index")
