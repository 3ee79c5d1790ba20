"""The layering rules import-linter cannot state: no module of the package imports
another module's ``_private`` names, and library modules print nothing and parse no
command lines (that is the CLI package's job)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kvs_toolkit"
# composing modules allowed to print/parse: the CLI package and the demo (it narrates)
FRONT = ("cli/", "demo.py")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _package_of(path: Path) -> str:
    # a module's package (for __init__.py: the package itself, whose private names the
    # package's own modules may share)
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])


def test_no_module_imports_another_modules_private_names() -> None:
    offences = []
    for path in _modules():
        own = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kvs_toolkit"):
                module = node.module or ""
                if module == own or module == _package_of(path):
                    continue
                offences += [
                    f"{path.relative_to(PACKAGE)}:{node.lineno} imports {module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert offences == [], "\n".join(offences)


def test_library_modules_hold_no_argparse_and_no_print() -> None:
    offences = []
    for path in _modules():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(FRONT):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "argparse" in names:
                    offences.append(f"{relative}:{node.lineno} imports argparse")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
            ):
                offences.append(f"{relative}:{node.lineno} calls print()")
    assert offences == [], "\n".join(offences)
