"""The import graph of `mdir/`, read from the source (AST, nothing imported).

Layers (issue 15): the lower packages — ``models/``, ``losses.py``, ``methods/``, ``data/``,
``metrics/`` — never import the upper ones (``training/``, ``tune/``, ``retrieval/``) nor the
registry's CLI; the registry (`mdir.registry`) imports none of training, Tune, metrics or
retrieval; and no two modules of `mdir/` import each other, directly or through others.
Every import statement counts, including the ones inside functions (a lazy import is still
a dependency); only ``if TYPE_CHECKING:`` blocks are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mdir"

LOWER = ("mdir.models", "mdir.losses", "mdir.methods", "mdir.data", "mdir.metrics")
UPPER = ("mdir.training", "mdir.tune", "mdir.retrieval", "mdir.registry.cli")
REGISTRY_MAY_NOT = ("mdir.training", "mdir.tune", "mdir.metrics", "mdir.retrieval")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest `mdir` module that `target` names (``mdir.a.b.func`` → ``mdir.a.b``)."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def _is_type_checking(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of ``if TYPE_CHECKING:`` (annotations, never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _is_type_checking(node):
            todo.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        todo.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module → the `mdir` modules it imports (``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                if t.startswith("mdir"):
                    dep = _resolve(t, modules)
                    if dep and dep != name:
                        deps.add(dep)
        graph[name] = deps
    return graph


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_graph_sees_the_packages():
    g = import_graph()
    assert {"mdir.methods", "mdir.registry.generators", "mdir.training.loop"} <= set(g)
    assert "mdir.registry.generators" in g["mdir.training.loop"]  # lazy import counted
    assert "mdir.training.config" not in g["mdir.training.preflight"]  # TYPE_CHECKING only


def test_lower_layers_do_not_import_upper_ones():
    bad = [
        f"{m} imports {d}"
        for m, deps in import_graph().items()
        if _under(m, LOWER)
        for d in sorted(deps)
        if _under(d, UPPER)
    ]
    assert not bad, "\n".join(bad)


def test_registry_imports_no_user_of_it():
    bad = [
        f"{m} imports {d}"
        for m, deps in import_graph().items()
        if _under(m, ("mdir.registry",))
        for d in sorted(deps)
        if _under(d, REGISTRY_MAY_NOT)
    ]
    assert not bad, "\n".join(bad)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_find_cycles_on_a_toy_graph():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(g) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "\n".join(" ⇄ ".join(c) for c in cycles)


#: The only modules outside `mdir.dev` that may use the local-services harness.
DEV_USERS = ("mdir.dev", "mdir.demo")


def test_product_code_does_not_import_the_dev_harness():
    """`mdir.dev` (local Ray head, MLflow and S3 servers, drills) is for tests and the demo:
    no library module depends on it, lazily or not."""
    bad = [
        f"{m} imports {d}"
        for m, deps in import_graph().items()
        if not _under(m, DEV_USERS)
        for d in sorted(deps)
        if _under(d, ("mdir.dev",))
    ]
    assert not bad, "\n".join(bad)
    assert "mdir.dev.ray_head" in import_graph()["mdir.demo"]  # the check sees the harness


def test_ray_private_modules_are_used_in_raypatch_only():
    """Every `ray._private` / `ray._raylet` import in `mdir/` and the cluster scripts is in
    `mdir/raypatch.py` (whose canary is tests/test_raypatch.py)."""
    bad = []
    for path in [*ROOT.rglob("*.py"), *(ROOT.parent / "cluster").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            hits = [n for n in names if n.startswith(("ray._private", "ray._raylet"))]
            if hits and path.name != "raypatch.py":
                bad.append(f"{path.relative_to(ROOT.parent)}: {', '.join(hits)}")
        if "ray._private" in path.read_text() and path.name != "raypatch.py":
            bad.append(f"{path.relative_to(ROOT.parent)} names ray._private")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("pkg", ["mdir.models", "mdir.methods", "mdir.data", "mdir.metrics"])
def test_lower_packages_exist(pkg):
    assert pkg in import_graph()
