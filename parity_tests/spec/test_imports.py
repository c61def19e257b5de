"""The import walker of :mod:`book.source_index` (``intra_imports``, ``import_cycles``, ``layering_problems``)
on a synthetic package and on copies of the real ports with an import injected. Source text only: both
environments.

The ports themselves against :data:`core_spec.public_api.MODULE_LAYERS` are checked by
``parity_tests/spec/test_alignment_ports.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from book.source_index import ImportEdge, import_cycles, import_edges, intra_imports, layering_problems
from core_spec.frameworks import REPO_ROOT
from core_spec.public_api import MODULE_LAYERS, PORTS

PACKAGE = {
    "__init__.py": "from .a import run\nfrom . import b\n",
    "a.py": (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from . import b\n"
        "if TYPE_CHECKING:\n"
        "    from .c import Hint\n"
        "else:\n"
        "    from .d import fallback\n"
        "\n"
        "\n"
        "def run():\n"
        "    from pkg.c import thing\n"
        "    import pkg.d\n"
        "    return thing, os\n"
    ),
    "b.py": "from pkg import helper\nfrom .. import outside\nimport pkgx.c\nimport pkg\n",
    "c.py": "class K:\n    def m(self):\n        from .a import run\n",
    "d.py": "import typing\nif typing.TYPE_CHECKING:\n    from .a import run\nfrom .sub.tool import y\n",
    "e.py": "",
    "sub/__init__.py": "",
    "sub/tool.py": "from .. import a\n",
}


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    for name, text in PACKAGE.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def test_intra_imports_module_and_function_level_type_checking_skipped(pkg: Path) -> None:
    assert intra_imports(pkg) == {
        "__init__": {"a", "b"},
        "a": {"b", "c", "d"},  # .c under TYPE_CHECKING skipped; its else branch and the function-level ones kept
        "b": {"__init__"},  # `from pkg import helper` and `import pkg`; `from ..` and `pkgx` are outside
        "c": {"a"},  # inside a method
        "d": {"sub"},  # `typing.TYPE_CHECKING` skipped; a subpackage is one node
        "e": set(),
    }
    assert import_edges(pkg)[:3] == [
        ImportEdge("__init__", "a", 1),
        ImportEdge("__init__", "b", 2),
        ImportEdge("a", "b", 3),
    ]
    assert ImportEdge("a", "c", 11) in import_edges(pkg) and ImportEdge("a", "d", 12) in import_edges(pkg)


def test_import_cycles() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "y": {"x"}, "x": {"y"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"], ["x", "y", "x"]]
    assert import_cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"b"}}) == [["a", "b", "a"]]  # the shortest


def test_layering_problems_name_the_edge_and_both_layers(pkg: Path) -> None:
    layers = {"__init__": 3, "a": 2, "b": 0, "c": 1, "d": 1}
    assert layering_problems(pkg, layers) == [
        "pkg/e.py: the module has no layer in core_spec.public_api.MODULE_LAYERS",
        "pkg/b.py:1 imports pkg.__init__: b is layer 0, __init__ layer 3; a module imports only lower layers",
        "pkg/c.py:3 imports pkg.a: c is layer 1, a layer 2; a module imports only lower layers",
        "pkg: import cycle __init__ -> b -> __init__ (__init__.py:2, b.py:1); modules in one cycle: __init__, a, b, c",
    ]


@pytest.mark.parametrize("port", sorted(PORTS))
def test_an_injected_import_is_caught_in_a_real_port(tmp_path: Path, port: str) -> None:
    """A copy of the port with a function-level import of ``train`` from ``transforms`` (layer 1 -> 5) and a
    ``TYPE_CHECKING`` import of ``train`` in ``resample``: the first is reported, the second is not an edge."""
    copy = tmp_path / port
    copy.mkdir()
    for file in (REPO_ROOT / port).glob("*.py"):
        shutil.copy(file, copy / file.name)
    assert "train" not in intra_imports(copy)["transforms"] and "train" not in intra_imports(copy)["resample"]
    before = layering_problems(copy)
    transforms = (copy / "transforms.py").read_text()
    line = transforms.count("\n") + 3
    (copy / "transforms.py").write_text(
        transforms + "\n\ndef _probe():\n    from .train import fit\n\n    return fit\n"
    )
    resample = (copy / "resample.py").read_text()
    (copy / "resample.py").write_text(
        resample + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .train import fit\n"
    )
    assert "train" in intra_imports(copy)["transforms"] and "train" not in intra_imports(copy)["resample"]
    new = [p for p in layering_problems(copy) if p not in before]
    assert new[0] == (
        f"{port}/transforms.py:{line + 1} imports {port}.train: transforms is layer {MODULE_LAYERS['transforms']}, "
        f"train layer {MODULE_LAYERS['train']}; a module imports only lower layers"
    )
    assert all("import cycle" in p for p in new[1:]), new  # transforms may now close a cycle through train
