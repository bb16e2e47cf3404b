"""The README and docs/architecture.md name modules and functions that exist.

Every `path.py` they mention is a file of the project (under newsletter/, tests/, bench/ or
the root), and every `path.py` `name` pair names a function or class defined in that file, so
a rename that forgets the docs fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "architecture.md"]
_PATH = re.compile(r"`((?:[\w.-]+/)*[\w.-]+\.py)`")
_PAIR = re.compile(r"`((?:[\w.-]+/)*[\w.-]+\.py)` `(\w+)`")


def _file(mentioned: str) -> Path | None:
    for base in (ROOT, ROOT / "newsletter", ROOT / "tests", ROOT / "bench"):
        if (base / mentioned).is_file():
            return base / mentioned
    return None


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_and_function_named_in_the_docs_exists(doc: Path) -> None:
    text = doc.read_text()
    missing = sorted({m for m in _PATH.findall(text) if _file(m) is None})
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
    wrong = []
    for module, name in _PAIR.findall(text):
        path = _file(module)
        if path is not None and name not in _defined(path):
            wrong.append(f"{module} {name}")
    assert not wrong, f"{doc.name} names functions that do not exist: {wrong}"
