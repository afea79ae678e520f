"""The structure drawn from the code's imports: one-way arrows between layers, no circle, small modules.

Every ``import`` in ``deepseek_pool/**`` counts: at the top of a module, inside a function
(a lazy import is still an arrow), and under ``if TYPE_CHECKING:`` (a type-only arrow is
still a dependency a reader must follow). ``python -m tests.test_layers`` prints the
package-level graph as text, for the architecture map.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import deepseek_pool

PACKAGE = Path(deepseek_pool.__file__).resolve().parent
ROOT = PACKAGE.name

#: The foundation: plain values, the exception tree, settings and data that every layer may use.
FOUNDATION = ("errors", "config", "types", "messages", "params", "models", "forks", "process")

#: What each layer may import, as the packages' ``__init__`` docstrings say (design.md's layers).
#: ``api`` is the flat public namespace (``deepseek_pool/__init__.py`` and the compatibility
#: module ``deepseek_pool.redis_storage``); a layer's own modules may always import each other.
MAY_IMPORT: Dict[str, Set[str]] = {
    "cli": {"api", "batch", "pool", "money", "budget", "client", "wire", "telemetry", "foundation", "testing"},
    "contrib": {"batch", "pool", "money", "budget", "client", "wire", "telemetry", "foundation"},
    "batch": {"pool", "money", "budget", "client", "wire", "telemetry", "foundation"},
    "pool": {"money", "budget", "client", "wire", "telemetry", "foundation"},
    "api": {"pool", "money", "budget", "client", "wire", "telemetry", "foundation"},
    # design.md: a client may take a limiter and a cache
    "client": {"money", "budget", "wire", "telemetry", "foundation"},
    "money": {"foundation"},
    "budget": {"foundation"},
    "wire": {"telemetry", "foundation"},  # the attempt loop and the stream call telemetry's no-op-by-default interface
    "telemetry": {"foundation"},
    "testing": {"foundation"},
    "foundation": set(),
}

#: Layers from the top down, for the printed graph.
ORDER = (
    "cli",
    "contrib",
    "batch",
    "api",
    "pool",
    "client",
    "money",
    "budget",
    "wire",
    "telemetry",
    "testing",
    "foundation",
)

#: A module may be a little over 500 lines; none over this.
MAX_LINES = 550

#: Modules the lead is still splitting (issue 21). Remove each entry once it is under MAX_LINES:
#: test_no_module_is_too_long fails, naming it, as soon as one is.
STILL_BEING_SPLIT: Set[str] = set()


def module_paths() -> Dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported_modules(tree: ast.AST, module: str, is_package: bool, modules: Set[str]) -> Iterator[str]:
    """The modules each import statement reaches, anywhere in the module (functions and TYPE_CHECKING too).

    ``from .batch import runner`` reaches the module ``batch.runner``, not the package: a
    package's ``__init__`` is a module of its own, with its own arrows.
    """
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                yield submodule if submodule in modules else origin


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports."""
    paths = module_paths()
    graph: Dict[str, Set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        reached = _imported_modules(tree, module, path.name == "__init__.py", set(paths))
        graph[module] = {name for name in reached if name in paths and name != module}
    return graph


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts or parts == ["redis_storage"]:
        return "api"
    if parts[0] == "__main__":
        return "cli"
    if parts[0] in FOUNDATION:
        return "foundation"
    return parts[0]


def circles(graph: Dict[str, Set[str]]) -> List[Set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[Set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_graph(graph: Dict[str, Set[str]]) -> Dict[str, Dict[str, Set[Tuple[str, str]]]]:
    """Layer -> layer it imports -> the (importer, imported) module pairs behind that arrow."""
    layers: Dict[str, Dict[str, Set[Tuple[str, str]]]] = {}
    for module, targets in graph.items():
        for target in targets:
            source_layer, target_layer = layer_of(module), layer_of(target)
            if source_layer != target_layer:
                layers.setdefault(source_layer, {}).setdefault(target_layer, set()).add((module, target))
    return layers


def line_counts() -> Dict[str, int]:
    return {module: len(path.read_text(encoding="utf-8").splitlines()) for module, path in module_paths().items()}


# -- the checks ---------------------------------------------------------------------------------


def test_the_parser_sees_every_kind_of_import() -> None:
    """Lazy and type-only imports are arrows too: the other checks would pass blind without them."""
    source = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        from . import errors
        from .pool import pool
        if TYPE_CHECKING:
            from .client import DeepSeekClient
        def later():
            import deepseek_pool.testing
        """
    )
    reached = set(_imported_modules(ast.parse(source), f"{ROOT}.example", False, set(module_paths())))
    expected = {f"{ROOT}.errors", f"{ROOT}.pool.pool", f"{ROOT}.client", f"{ROOT}.testing"}
    assert expected <= reached, expected - reached
    graph = import_graph()
    assert f"{ROOT}.cli.commands" in graph[f"{ROOT}.cli"], "a relative import in a package's __init__"
    assert {layer_of(module) for module in graph} <= set(MAY_IMPORT), "every module belongs to a known layer"


def test_no_circle_between_modules() -> None:
    found = [sorted(component) for component in circles(import_graph())]
    assert not found, f"modules that import each other (directly or around a loop): {found}"


def test_arrows_between_layers_point_one_way() -> None:
    layers = layer_graph(import_graph())
    upward = {
        f"{source} -> {target}": sorted(pairs)
        for source, targets in layers.items()
        for target, pairs in targets.items()
        if target not in MAY_IMPORT[source]
    }
    assert not upward, f"arrows the layers' docstrings do not allow: {upward}"
    allowed = {layer: targets - {layer} for layer, targets in MAY_IMPORT.items()}
    assert not circles(allowed), "MAY_IMPORT itself must point one way"
    edges = {source: set(targets) for source, targets in layers.items()}
    assert not circles(edges), f"layers that import each other: {circles(edges)}"


def test_no_module_is_too_long() -> None:
    counts = line_counts()
    too_long = {
        module: lines for module, lines in counts.items() if lines > MAX_LINES and module not in STILL_BEING_SPLIT
    }
    assert not too_long, f"modules over {MAX_LINES} lines: split them by concern: {too_long}"
    done = sorted(module for module in STILL_BEING_SPLIT if counts.get(module, 0) <= MAX_LINES)
    assert not done, f"under {MAX_LINES} lines now (or gone): remove them from STILL_BEING_SPLIT: {done}"


def test_every_package_says_what_it_may_import() -> None:
    for module, path in module_paths().items():
        if path.name != "__init__.py" or module == ROOT:
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert "May import" in docstring, f"{module}'s docstring does not say what it may import"


def test_each_package_names_the_layers_it_imports() -> None:
    """A package's "May import" paragraph names every layer (and foundation module) its code imports."""
    graph = import_graph()
    for package, path in module_paths().items():
        if path.name != "__init__.py" or package == ROOT:
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        allowed = docstring[docstring.find("May import") :]
        imported = {
            target
            for module, targets in graph.items()
            if module == package or module.startswith(package + ".")
            for target in targets
            if layer_of(target) != layer_of(package)
        }
        named = {target.split(".")[1] for target in imported if target != ROOT}
        missing = sorted(name for name in named if f"{ROOT}.{name}" not in allowed and f"~{ROOT}.{name}" not in allowed)
        missing = [name for name in missing if f".{name}`" not in allowed]
        assert not missing, f"{package} imports {missing}, which its docstring's 'May import' does not name"


# -- the map, as text ---------------------------------------------------------------------------


def describe() -> str:
    """The package-level import graph and the largest modules, as text."""
    graph = import_graph()
    layers = layer_graph(graph)
    lines = ["Layers, top down, and what each imports:"]
    for layer in ORDER:
        targets = [target for target in ORDER if target in layers.get(layer, {})]
        lines.append(f"  {layer:<10} -> {', '.join(targets) if targets else '(nothing of the package)'}")
    lines.append("Foundation modules: " + ", ".join(FOUNDATION))
    found = circles(graph)
    lines.append("Circles: " + ("; ".join(" <-> ".join(sorted(c)) for c in found) if found else "none"))
    counts = sorted(line_counts().items(), key=lambda item: -item[1])
    lines.append("Largest modules: " + ", ".join(f"{module} {count}" for module, count in counts[:5]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(describe() + "\n")
