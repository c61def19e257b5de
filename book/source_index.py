"""Where a name is defined in a Python source, its exact text, and whether a port module mirrors its spec module.

Stdlib :mod:`ast` only (no framework is imported, no port is imported), so the checks run in both environments on
all four ports. The tables it checks against are :mod:`core_spec.public_api` (``LESSONS``, ``SHARED``,
``PORT_CONSTANTS``, ``MODULE_LAYERS``); the rules are those of the alignment contract (plan of issue 15,
section 3, in the spirit of transformers' ``check_copies``):

1. every target of ``LESSONS[module]`` that is not a ``builtin:`` exists in the port module (``Class.method``: the
   class exists and defines the method); so does every ``PORT_CONSTANTS[module]`` name;
2. the targets come in the order of the rows (a method counts at its class's place; methods of one class by
   their order in the class);
3. every public top-level function or class that is not a target comes after the last target (framework extras
   follow the lesson; private ``_names`` may sit anywhere);
4. no top-level definition has the name of a ``SHARED[module]`` entry (neutral code is imported, never copied);
5. the spec (``port="spec"``) defines every ``Lesson.spec`` of the module, in the order of the rows.

Each problem is one line naming the file, the name, its line and where it is expected::

    umx_jax/filtering.py: wiener (line 204) must come after wiener_planar (line 259), as in
    core_spec/reference/filtering.py

(one line, wrapped here).

The side-by-side book (issue 17) extracts its code with :func:`source_of`.
"""

from __future__ import annotations

import ast
import itertools
import re
import textwrap
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core_spec.public_api import BUILTIN, LESSONS, MODULE_LAYERS, PORT_CONSTANTS, SHARED, Lesson

__all__ = [
    "SPEC",
    "Definition",
    "ImportEdge",
    "alignment_problems",
    "check_module",
    "definitions",
    "import_cycles",
    "import_edges",
    "intra_imports",
    "layering_problems",
    "locate",
    "mirror_problems",
    "shared_problems",
    "source_of",
    "spec_location",
]

SPEC = "spec"
"""The ``port`` argument that checks the spec side (rule 5) instead of a port."""

_CONSTANT = re.compile(r"_*[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Definition:
    """A top-level definition of a source (or, from :func:`locate`, a method: ``name="Class.method"``).

    Attributes:
        name: the defined name.
        kind: ``"def"`` (function, also ``async def``), ``"class"`` or ``"const"`` (an UPPER_CASE assignment).
        lineno: its first line (1-based), decorators included.
        end_lineno: its last line.
        methods: for a class, the names of the functions defined in its body, in source order.
    """

    name: str
    kind: str
    lineno: int
    end_lineno: int
    methods: tuple[str, ...] = ()


def _first_line(node: ast.AST) -> int:
    decorators = getattr(node, "decorator_list", ())
    return min([node.lineno] + [d.lineno for d in decorators])


def _statements(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a body, descending into ``if`` / ``try`` / ``with`` blocks (still module level)."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body)
            yield from _statements(node.orelse)
        elif isinstance(node, ast.Try | getattr(ast, "TryStar", ast.Try)):
            yield from _statements(node.body)
            for handler in node.handlers:
                yield from _statements(handler.body)
            yield from _statements(node.orelse)
            yield from _statements(node.finalbody)
        elif isinstance(node, ast.With | ast.AsyncWith):
            yield from _statements(node.body)
        else:
            yield node


def _assigned_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    else:
        return []
    names = []
    for target in targets:
        elements = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
        names += [e.id for e in elements if isinstance(e, ast.Name)]
    return names


@dataclass(frozen=True)
class _Index:
    top: tuple[Definition, ...]
    methods: Mapping[str, Definition]  # "Class.method" -> the method (first definition)


@lru_cache(maxsize=128)
def _tree(source: str) -> ast.Module:
    return ast.parse(source)


@lru_cache(maxsize=64)
def _index(source: str) -> _Index:
    top: list[Definition] = []
    methods: dict[str, Definition] = {}
    for node in _statements(_tree(source).body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            top.append(Definition(node.name, "def", _first_line(node), node.end_lineno or node.lineno))
        elif isinstance(node, ast.ClassDef):
            names = []
            for item in _statements(node.body):
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.append(item.name)
                    key = f"{node.name}.{item.name}"
                    end = item.end_lineno or item.lineno
                    methods.setdefault(key, Definition(key, "def", _first_line(item), end))
            end = node.end_lineno or node.lineno
            top.append(Definition(node.name, "class", _first_line(node), end, tuple(names)))
        else:
            for name in _assigned_names(node):
                if _CONSTANT.fullmatch(name):
                    top.append(Definition(name, "const", node.lineno, node.end_lineno or node.lineno))
    return _Index(tuple(top), methods)


def definitions(source: str) -> list[Definition]:
    """The top-level functions, classes and UPPER_CASE constants of ``source``, in source order (definitions in
    module-level ``if`` / ``try`` / ``with`` blocks included; a name defined twice appears twice)."""
    return list(_index(source).top)


def locate(source: str, target: str) -> Definition | None:
    """The definition of ``target`` (``"name"`` or ``"Class.method"``) in ``source``: the first one when a name is
    defined twice; ``None`` when it is not defined (a ``builtin:`` target is never defined)."""
    if target.startswith(BUILTIN):
        return None
    index = _index(source)
    if "." in target:
        return index.methods.get(target)
    return next((d for d in index.top if d.name == target), None)


def source_of(source: str, target: str) -> str:
    """The exact text of ``target`` (``"name"`` or ``"Class.method"``) in ``source``: its whole lines from the first
    decorator to the end of its body, a method dedented to column 0. The side-by-side book extracts its code with
    this.

    Raises:
        KeyError: ``target`` is not defined in ``source`` (or is a ``builtin:`` target).
    """
    found = locate(source, target)
    if found is None:
        raise KeyError(f"{target} is not defined in this source")
    lines = source.splitlines(keepends=True)[found.lineno - 1 : found.end_lineno]
    return textwrap.dedent("".join(lines))


def spec_location(spec: str) -> tuple[str, str]:
    """``"reference.transforms.stft"`` -> ``("core_spec/reference/transforms.py", "stft")``: the file (relative to
    the repository root) and the name of a spec object of :data:`core_spec.public_api.LESSONS` / ``SHARED``."""
    module, _, name = spec.rpartition(".")
    if not module or not name:
        raise ValueError(f"spec object {spec!r} is not a dotted path below core_spec (e.g. 'reference.umx.open_unmix')")
    return "core_spec/" + module.replace(".", "/") + ".py", name


# --- the alignment rules -----------------------------------------------------------------------------------------


def _key(source: str, target: str) -> tuple[int, int]:
    """Where a target sits for the order rule: its top-level line; a method at its class's line, then its own."""
    found = locate(source, target)
    assert found is not None
    if "." in target:
        cls = locate(source, target.split(".", 1)[0])
        assert cls is not None
        return cls.lineno, found.lineno
    return found.lineno, 0


def _toplevel_name(target: str) -> str:
    return target.split(".", 1)[0]


def _steps(module: str, port: str, path: str) -> list[tuple[int, str, Lesson]]:
    """(row number, the name to find, lesson) for the rows of ``module`` the port (or the spec file) defines."""
    steps = []
    for row, lesson in enumerate(LESSONS[module], start=1):
        if port == SPEC:
            if lesson.spec is None or spec_location(lesson.spec)[0] != path:
                continue
            steps.append((row, spec_location(lesson.spec)[1], lesson))
        else:
            target = lesson.ports[port]
            if not target.startswith(BUILTIN):
                steps.append((row, target, lesson))
    return steps


def _table(module: str) -> str:
    return f"core_spec.public_api.LESSONS[{module!r}]"


def _reference(module: str, *lessons: Lesson) -> str:
    """The spec file the lessons mirror, if they all live in one; else the table."""
    files = {spec_location(lesson.spec)[0] if lesson.spec else None for lesson in lessons}
    if len(files) == 1 and None not in files:
        return files.pop()
    return _table(module)


def _expected_place(steps: list[tuple[int, str, Lesson]], i: int) -> str:
    before = steps[i - 1][1] if i > 0 else None
    after = steps[i + 1][1] if i + 1 < len(steps) else None
    if before and after:
        return f"after {before} and before {after}"
    if after:
        return f"first, before {after}"
    if before:
        return f"last, after {before}"
    return "the only one"


def mirror_problems(
    module: str, port: str, source: str, path: str | None = None, *, allow_missing: bool = False
) -> list[str]:
    """Rules 1-3 (a port) or 5 (``port="spec"``) for one module's source; one readable line per problem.

    Args:
        module: a key of :data:`core_spec.public_api.LESSONS` (``"filtering"``).
        port: a port package (``"umx_jax"``) or :data:`SPEC`.
        source: the text of the module file.
        path: the file's name in the messages; for the spec it also selects which rows are checked (those whose
            spec object lives in that file). Default ``<port>/<module>.py``, ``core_spec/reference/<module>.py``.
        allow_missing: do not report targets that are not defined (their order and the extras are still checked
            against the ones that are): for a spec that is still being written.
    """
    if path is None:
        path = f"core_spec/reference/{module}.py" if port == SPEC else f"{port}/{module}.py"
    steps = _steps(module, port, path)
    problems: list[str] = []
    present: list[tuple[str, Lesson]] = []
    for i, (row, target, lesson) in enumerate(steps):
        if locate(source, target) is not None:
            present.append((target, lesson))
            continue
        if allow_missing:
            continue
        reason = ""
        cls = locate(source, _toplevel_name(target)) if "." in target else None
        if cls is not None:
            reason = f" (class {cls.name} at line {cls.lineno} has no method {target.split('.', 1)[1]})"
        where = _reference(module, lesson) if port != SPEC else _table(module)
        problems.append(
            f"{path}: {target} is not defined{reason}; expected as lesson {row} of {len(LESSONS[module])} "
            f"of {module}, {_expected_place(steps, i)}, as in {where}"
        )
    for (prev, prev_lesson), (target, lesson) in itertools.pairwise(present):
        if _key(source, target) < _key(source, prev):
            line, prev_line = locate(source, target), locate(source, prev)
            assert line is not None and prev_line is not None
            where = (
                _reference(module, prev_lesson, lesson) if port != SPEC else f"core_spec.public_api.LESSONS[{module!r}]"
            )
            problems.append(
                f"{path}: {target} (line {line.lineno}) must come after {prev} (line {prev_line.lineno}), as in {where}"
            )
    if port == SPEC:
        return problems
    for name in PORT_CONSTANTS.get(module, ()):
        if locate(source, name) is None:
            problems.append(
                f"{path}: {name} is not defined; every port defines its own (core_spec.public_api.PORT_CONSTANTS)"
            )
    if present:
        targets = {_toplevel_name(target) for target, _ in present}
        shared = {spec_location(s)[1] for s in SHARED.get(module, ())}
        tops = [locate(source, _toplevel_name(target)) for target, _ in present]
        last = max((d for d in tops if d is not None), key=lambda d: d.lineno)
        for d in definitions(source):
            if d.kind == "const" or d.name.startswith("_") or d.name in targets or d.name in shared:
                continue
            if d.lineno < last.lineno:
                problems.append(
                    f"{path}: {d.name} (line {d.lineno}) is public and not a lesson of {module}: it must come after "
                    f"the last lesson {last.name} (line {last.lineno}), or be private"
                )
    return problems


def shared_problems(module: str, port: str, source: str, path: str | None = None) -> list[str]:
    """Rule 4: the top-level definitions of a port module that redefine a ``SHARED[module]`` name."""
    path = path or f"{port}/{module}.py"
    shared = {spec_location(s)[1]: s for s in SHARED.get(module, ())}
    return [
        f"{path}: {d.name} (line {d.lineno}) redefines core_spec.{shared[d.name]}: import it instead"
        for d in definitions(source)
        if d.name in shared
    ]


def alignment_problems(
    module: str, port: str, source: str, path: str | None = None, *, allow_missing: bool = False
) -> list[str]:
    """Every rule for one module's source (a port: 1-4; ``port="spec"``: 5). See :func:`mirror_problems`."""
    problems = mirror_problems(module, port, source, path, allow_missing=allow_missing)
    if port != SPEC:
        problems += shared_problems(module, port, source, path)
    return problems


def check_module(root: str | Path, module: str, port: str, *, allow_missing: bool = False) -> list[str]:
    """:func:`alignment_problems` for the files under the repository ``root``: ``<port>/<module>.py``, or every
    spec file the module's lessons live in (``core_spec/reference/demucs.py`` and ``core_spec/shapes.py`` for
    ``demucs``). A missing port module is one problem; a missing spec file reports its lessons as not defined
    (nothing with ``allow_missing``)."""
    root = Path(root)
    if port != SPEC:
        path = f"{port}/{module}.py"
        if not (root / path).is_file():
            return [f"{path}: missing; every port has the modules of core_spec.public_api.MODULES"]
        return alignment_problems(module, port, (root / path).read_text(), path, allow_missing=allow_missing)
    problems: list[str] = []
    files = dict.fromkeys(spec_location(lesson.spec)[0] for lesson in LESSONS[module] if lesson.spec)
    for path in files:
        source = (root / path).read_text() if (root / path).is_file() else ""
        problems += mirror_problems(module, SPEC, source, path, allow_missing=allow_missing)
    return problems


# --- imports inside a package -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportEdge:
    """``source`` imports ``target`` (module names inside one package, ``"__init__"`` for the package) at
    ``lineno`` of ``source``'s file."""

    source: str
    target: str
    lineno: int


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement below ``node`` (function and class bodies included), ``if TYPE_CHECKING:`` bodies
    skipped (their ``else`` kept)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                if isinstance(stmt, ast.Import | ast.ImportFrom):
                    yield stmt
                yield from _imports(stmt)
        else:
            yield from _imports(child)


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> list[str]:
    def member(name: str) -> str:
        return name if name in modules else "__init__"

    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == package:
                out.append(member(parts[1]) if len(parts) > 1 else "__init__")
        return out
    if node.level > 1:
        return []  # above the package
    parts = node.module.split(".") if node.module else []
    if node.level == 0:
        if not parts or parts[0] != package:
            return []
        parts = parts[1:]
    if parts:
        return [member(parts[0])]
    return [member(alias.name) for alias in node.names]


def import_edges(package_dir: str | Path) -> list[ImportEdge]:
    """The intra-package imports of the ``*.py`` files directly in ``package_dir`` (relative, or absolute through
    the package's name), at module or function level, ``TYPE_CHECKING`` blocks skipped; sorted by file and line.
    ``from . import name`` / ``from package import name`` is an edge to the module ``name`` if there is one, else to
    ``"__init__"``."""
    package_dir = Path(package_dir)
    files = sorted(package_dir.glob("*.py"))
    modules = {f.stem for f in files} | {d.name for d in package_dir.iterdir() if (d / "__init__.py").is_file()}
    edges = []
    for file in files:
        for node in _imports(_tree(file.read_text())):
            for target in _targets(node, package_dir.name, modules):
                if target != file.stem:
                    edges.append(ImportEdge(file.stem, target, node.lineno))
    return sorted(edges, key=lambda e: (e.source, e.lineno, e.target))


def intra_imports(package_dir: str | Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (see :func:`import_edges`); every ``*.py`` file of the
    package is a key."""
    graph: dict[str, set[str]] = {f.stem: set() for f in Path(package_dir).glob("*.py")}
    for edge in import_edges(package_dir):
        graph[edge.source].add(edge.target)
    return graph


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The import cycles of a graph (:func:`intra_imports`): one per group of modules that import each other
    (strongly connected, more than one module), the shortest closed path ``[a, b, ..., a]`` through the group's
    smallest name."""
    return [_shortest_cycle(graph, group, min(group)) for group in _cycle_groups(graph)]


def _cycle_groups(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan), sorted by their smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups, key=min)


def _shortest_cycle(graph: Mapping[str, set[str]], group: set[str], start: str) -> list[str]:
    parents: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph.get(v, ())):
            if w == start:
                path = [v]
                while (parent := parents[path[-1]]) is not None:
                    path.append(parent)
                return [*reversed(path), start]
            if w in group and w not in parents:
                parents[w] = v
                queue.append(w)
    raise AssertionError(f"{start} is in a strongly connected group but on no cycle")


def layering_problems(package_dir: str | Path, layers: Mapping[str, int] = MODULE_LAYERS) -> list[str]:
    """A port package against :data:`core_spec.public_api.MODULE_LAYERS`: every module has a layer, every import
    goes to a lower layer, and there is no import cycle. One readable line per problem."""
    package_dir = Path(package_dir)
    package = package_dir.name
    problems = [
        f"{package}/{f.name}: the module has no layer in core_spec.public_api.MODULE_LAYERS"
        for f in sorted(package_dir.glob("*.py"))
        if f.stem not in layers
    ]
    edges = import_edges(package_dir)
    seen = set()
    for e in edges:
        if e.source not in layers or e.target not in layers or (e.source, e.target) in seen:
            continue
        seen.add((e.source, e.target))
        if layers[e.target] >= layers[e.source]:
            problems.append(
                f"{package}/{e.source}.py:{e.lineno} imports {package}.{e.target}: {e.source} is layer "
                f"{layers[e.source]}, {e.target} layer {layers[e.target]}; a module imports only lower layers"
            )
    lines = {(e.source, e.target): e.lineno for e in reversed(edges)}
    graph: dict[str, set[str]] = {f.stem: set() for f in package_dir.glob("*.py")}
    for e in edges:
        graph[e.source].add(e.target)
    for group in _cycle_groups(graph):
        cycle = _shortest_cycle(graph, group, min(group))
        where = ", ".join(f"{a}.py:{lines[a, b]}" for a, b in itertools.pairwise(cycle))
        problems.append(
            f"{package}: import cycle {' -> '.join(cycle)} ({where}); modules in one cycle: {', '.join(sorted(group))}"
        )
    return problems
