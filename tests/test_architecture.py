"""The package's shape: layers that only point down, no cycles, short functions, task decisions in the tasks.

Imports are read from the source (every ``import``, at module level, inside functions and under
``TYPE_CHECKING`` alike), so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hubft"

# Lower layers first; a module may import its own package and anything in a lower layer, nothing else.
LAYERS = [
    {"_version", "errors"},
    {"files", "faults", "registry"},
    {"config"},
    {"models", "data", "losses", "optim"},
    {"tasks"},
    {"hub"},
    {"train", "inference"},
    {"cli", "testing"},
    {"__init__"},
]
LONGEST_FUNCTION = 60  # lines of code, docstrings and comments not counted


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return {name for name in out if name == "hubft" or name.startswith("hubft.")}


def _edges() -> dict[str, set[tuple[str, str]]]:
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for module, path in _modules().items():
        source = _package_of(module)
        for target in _imports(path):
            if _package_of(target) != source:
                edges[source].add((_package_of(target), module))
    return edges


def _layer(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def test_every_package_has_a_layer():
    packages = {_package_of(m) for m in _modules()}
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)


def test_imports_only_point_down():
    upward = [f"{module} imports hubft.{target}" for source, targets in _edges().items()
              for target, module in targets if _layer(target) >= _layer(source)]
    assert upward == []


def test_the_library_layers_never_import_train_or_the_cli():
    for source in ("models", "data", "losses", "optim", "tasks", "hub"):
        assert not {t for t, _ in _edges().get(source, ())} & {"train", "cli"}, source


def test_there_are_no_import_cycles_between_packages():
    graph = {source: {t for t, _ in targets} for source, targets in _edges().items()}
    seen, stack = set(), []

    def visit(node: str) -> None:
        if node in stack:
            pytest.fail(f"import cycle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in sorted(graph):
        visit(node)


def _code_lines(path: Path) -> dict[str, int]:
    """Lines of code of every function, by ``file:line name``, docstrings and comments left out."""
    source = path.read_text()
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    code = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            code.update(range(tok.start[0], tok.end[0] + 1))
    return {f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}":
            len([n for n in range(node.lineno, node.end_lineno + 1) if n in code and n not in docstrings])
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_no_function_is_longer_than_the_limit():
    lengths = {}
    for path in PACKAGE.rglob("*.py"):
        lengths |= _code_lines(path)
    long = {name: n for name, n in lengths.items() if n > LONGEST_FUNCTION}
    assert long == {}


@pytest.mark.parametrize("literal", ['"image-classification"', '"accuracy"', '"map"', '"cross_entropy"', '"bce"'])
def test_what_depends_on_the_task_is_decided_in_the_tasks(literal):
    """No code outside hubft/tasks picks a task's metric, default loss or name (the config's default aside)."""
    allowed = {PACKAGE / "config.py"} if literal == '"image-classification"' else set()
    found = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
             if "tasks" not in p.relative_to(PACKAGE).parts[:1] and p not in allowed
             and p.parent.name != "losses" and literal in p.read_text()]
    assert found == []


def test_the_lazy_public_names_are_also_visible_to_type_checkers():
    import hubft

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    typed = {(node.module, a.asname or a.name) for node in guarded.body if isinstance(node, ast.ImportFrom)
             for a in node.names}
    lazy = {(module, name) for module, names in hubft._LAZY.items() for name in names}
    # A name may be imported from the package that re-exports it rather than from its module.
    assert {name for _, name in typed} == {name for _, name in lazy}
    for module, name in typed:
        assert getattr(hubft, name) is getattr(__import__(module, fromlist=[name]), name)
    assert set(hubft.__all__) >= {name for _, name in lazy}
