"""The system tests stand alone: each file of tests/system runs on its own against a converged
lab. Shared helpers live in tests/system/conftest.py, never in another test file, and a fixture
that changes the lab for its tests puts it back in a `finally`, whatever the tests did."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = ROOT / "tests" / "system"
FILES = sorted(SYSTEM.glob("*.py"))


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(tree: ast.Module) -> set[str]:
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {name.split(".")[0] for name in names}


def is_fixture(function: ast.FunctionDef) -> bool:
    def name(decorator: ast.expr) -> str:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return ast.unparse(target)

    return any(name(d) in ("pytest.fixture", "fixture", "contextlib.contextmanager") for d in function.decorator_list)


def unguarded_yields(function: ast.FunctionDef) -> list[int]:
    """Lines of the `yield`s of `function` that no try/finally around them guards."""
    guarded = {
        id(node)
        for block in ast.walk(function)
        if isinstance(block, ast.Try) and block.finalbody
        for statement in block.body
        for node in ast.walk(statement)
    }
    return [node.lineno for node in ast.walk(function) if isinstance(node, ast.Yield) and id(node) not in guarded]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_system_test_file_imports_no_other_test_file(path):
    others = sorted(name for name in imported_modules(parsed(path)) if name.startswith("test_"))
    assert others == [], f"{path.name} imports {others}: move what they share to tests/system/conftest.py"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_fixtures_that_yield_restore_the_lab_in_a_finally(path):
    functions = [node for node in ast.walk(parsed(path)) if isinstance(node, ast.FunctionDef) and is_fixture(node)]
    unguarded = {f.name: lines for f in functions if (lines := unguarded_yields(f))}
    assert unguarded == {}, f"{path.name}: yield outside try/finally in {unguarded}"


def test_the_checks_see_the_fixtures():
    """The two checks above read real fixtures: a yield fixture exists, and the parser finds it."""
    yielding = [
        node.name
        for path in FILES
        for node in ast.walk(parsed(path))
        if isinstance(node, ast.FunctionDef)
        and is_fixture(node)
        and any(isinstance(n, ast.Yield) for n in ast.walk(node))
    ]
    assert {"left_alone", "on_builtin", "grown", "hostile", "stopped"} <= set(yielding), yielding
