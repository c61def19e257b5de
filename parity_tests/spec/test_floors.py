"""The three floors of ``../shared/DESIGN.md`` on the source (stdlib ``ast``, both environments): every import in
every file of a package, at module level or inside a function, goes down the floors.

- floor 0, ``core_spec`` (the spec): imports nothing of the project but itself; of what is not the standard
  library only NumPy, SciPy and safetensors (the canonical file format);
- floor 1, the ports and ``weights_convert`` (numerics, readers): import only themselves and ``core_spec``; a
  port's ``__main__.py`` may forward to the tool;
- floor 2, the tool (``unmix``): imports floors 0 and 1, never ``book``, ``benchmarks``, ``parity_tests`` or
  ``scripts`` (floor 3, which may import anything);
- below the tool no command line and no progress bars: no ``argparse``, no ``tqdm``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from core_spec.frameworks import REPO_ROOT

FLOORS = {
    "core_spec": 0,
    "umx_torch": 1,
    "umx_tf": 1,
    "umx_jax": 1,
    "umx_nnabla": 1,
    "weights_convert": 1,
    "unmix": 2,
    "book": 3,
    "benchmarks": 3,
    "parity_tests": 3,
    "scripts": 3,
}
SPEC_THIRD_PARTY = {"numpy", "scipy", "safetensors"}
TOOL_ONLY = {"argparse", "tqdm"}  # command lines and progress bars


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path``, a file under ``root`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = list(path.relative_to(root).parts[:-1])  # the file's package: ["core_spec", "reference"]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def floor_problems(root: Path, packages: dict[str, int] = FLOORS) -> list[str]:
    """Every import in ``root``'s packages that breaks a floor rule (module docstring), as ``file:line: why``."""
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for package, floor in packages.items():
        folder = root / package
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else []:
            rel = path.relative_to(root)
            if "fixtures" in rel.parts:
                continue
            forwards = floor == 1 and package != "weights_convert" and rel.name == "__main__.py"
            for line, module in imports_of(path, root):
                top = module.split(".")[0]
                where = f"{rel}:{line}: imports {module}"
                if floor == 3:
                    continue
                if top in TOOL_ONLY and floor < 2 and not forwards:
                    problems.append(f"{where} (a command line or progress bar below the tool floor)")
                    continue
                if top == package or top not in packages:
                    if floor == 0 and top not in packages and top not in stdlib and top not in SPEC_THIRD_PARTY:
                        problems.append(f"{where} (the spec imports only NumPy, SciPy and safetensors)")
                    continue
                theirs = packages[top]
                allowed = theirs == 0 if floor == 1 else theirs < floor
                if forwards and theirs == 2:
                    allowed = True
                if not allowed:
                    problems.append(f"{where} (floor {floor} imports floor {theirs})")
    return problems


def test_the_tree_keeps_its_floors() -> None:
    problems = floor_problems(REPO_ROOT)
    assert problems == [], f"{len(problems)} imports break the floors:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("package", "file", "source", "expected"),
    [
        ("core_spec", "x.py", "from umx_torch import stft\n", "floor 0 imports floor 1"),
        ("core_spec", "x.py", "def f():\n    import weights_convert.sources\n", "floor 0 imports floor 1"),
        ("core_spec", "x.py", "import torch\n", "the spec imports only"),
        ("core_spec", "sub/x.py", "import argparse\n", "a command line"),
        ("umx_torch", "x.py", "from tqdm import tqdm\n", "progress bar"),
        ("umx_torch", "x.py", "from umx_jax import stft\n", "floor 1 imports floor 1"),
        ("umx_torch", "x.py", "from unmix.separate import main\n", "floor 1 imports floor 2"),
        ("weights_convert", "__main__.py", "from unmix.convert import main\n", "floor 1 imports floor 2"),
        ("unmix", "x.py", "from parity_tests.harness import check\n", "floor 2 imports floor 3"),
        ("core_spec", "sub/x.py", "from ..tolerances import judge\nfrom .. import configs\n", None),
        ("umx_torch", "__main__.py", "import argparse\nfrom unmix.separate import main\n", None),
        ("unmix", "x.py", "import argparse\nfrom umx_torch import stft\nfrom core_spec import configs\n", None),
        ("benchmarks", "x.py", "from parity_tests.harness import check\n", None),
    ],
)
def test_the_checker_reports_what_breaks_a_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, file: str, source: str, expected: str | None
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    path = tmp_path / package / file
    path.parent.mkdir(parents=True)
    path.write_text(source)
    problems = floor_problems(tmp_path)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems
