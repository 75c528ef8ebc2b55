"""`make test-fast` (``pytest -m "not slow"``) starts no program: every test that does, itself, through a helper or
through a fixture (the CLI, ``subprocess``: ``torchrun``, ``make``, ``pip``; papermill's kernel), is marked ``slow``.

Read from the test files' ``ast``, so a new test that runs the CLI without the mark fails here instead of making the
fast tier slow unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SLOW_CALLS = {"run_cli", "start_until", "report.render", "report.main"}  # the CLI, papermill
SLOW_MODULES = ("subprocess.", "papermill.")


def dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def is_fixture(fn) -> bool:
    return any(dotted(d.func if isinstance(d, ast.Call) else d) == "pytest.fixture" for d in fn.decorator_list)


def marks(nodes) -> set[str]:
    """``pytest.mark.<name>`` in decorators or a ``pytestmark`` value (one mark, or a list of them)."""
    found = set()
    for node in nodes:
        for sub in ast.walk(node):
            name = dotted(sub)
            if name.startswith("pytest.mark.") and name.count(".") == 2:
                found.add(name.rsplit(".", 1)[1])
    return found


class Module:
    """One test file's top-level functions, the names it imports from the other test files, its ``pytestmark``."""

    def __init__(self, path: Path, modules: dict):
        self.name, self.modules, tree = path.stem, modules, ast.parse(path.read_text(encoding="utf-8"))
        self.functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        self.imported = {a.asname or a.name: (n.module, a.name) for n in ast.walk(tree)  # in functions too
                         if isinstance(n, ast.ImportFrom) and n.module and (path.parent / f"{n.module}.py").is_file()
                         for a in n.names}
        self.pytestmark = marks(n.value for n in tree.body if isinstance(n, ast.Assign)
                                and any(dotted(t) == "pytestmark" for t in n.targets))

    def resolve(self, name: str):
        """(module, function) that ``name`` means here: its own, one imported from a test file, a conftest fixture;
        None for anything else."""
        if name in self.functions:
            return self, self.functions[name]
        if name in self.imported:
            other, original = self.imported[name]
            return self.modules[other].resolve(original)
        conftest = self.modules.get("conftest")
        fixture = conftest.functions.get(name) if conftest and self is not conftest else None
        return (conftest, fixture) if fixture and is_fixture(fixture) else None


def load(folder: Path) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    modules |= {p.stem: Module(p, modules) for p in folder.glob("*.py")}
    return modules


def why_slow(module: Module, fn, seen=None) -> str | None:
    """What in ``fn`` (its calls, the helpers it calls, the fixtures it requests) starts another process."""
    seen = seen if seen is not None else set()
    if (module.name, fn.name) in seen:
        return None
    seen.add((module.name, fn.name))
    requested = [a.arg for a in fn.args.args]
    requested += [c.value for d in fn.decorator_list if isinstance(d, ast.Call) and dotted(d.func).endswith(
        "usefixtures") for c in d.args if isinstance(c, ast.Constant)]
    called = [dotted(n.func) for n in ast.walk(fn) if isinstance(n, ast.Call)]
    for name in called:
        if name in SLOW_CALLS or name.startswith(SLOW_MODULES):
            return name
    for name in [*requested, *called]:
        target = module.resolve(name)
        if target and (why := why_slow(*target, seen)):
            return f"{name} -> {why}"
    return None


def unmarked_slow_tests(folder: Path) -> list[str]:
    found = []
    for module in load(folder).values():
        for name, fn in module.functions.items():
            if not name.startswith("test_") or "slow" in module.pytestmark | marks(fn.decorator_list):
                continue
            if why := why_slow(module, fn):
                found.append(f"{module.name}.py::{name} ({why})")
    return found


def test_every_test_that_starts_a_process_is_marked_slow():
    assert unmarked_slow_tests(TESTS) == []


def test_the_check_sees_through_helpers_and_fixtures(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "import pytest, subprocess\n"
        "def run_cli(*a):\n    return subprocess.run(a)\n"
        "@pytest.fixture\ndef cli_run():\n    run_cli('x')\n")
    (tmp_path / "test_x.py").write_text(
        "import pytest, subprocess\nfrom conftest import run_cli\n"
        "def helper():\n    subprocess.run(['make'])\n"
        "def test_helper():\n    helper()\n"
        "def test_fixture(cli_run):\n    pass\n"
        "@pytest.mark.slow\ndef test_marked():\n    run_cli('y')\n"
        "def test_in_process():\n    assert sum([1]) == 1\n")
    assert sorted(unmarked_slow_tests(tmp_path)) == ["test_x.py::test_fixture (cli_run -> run_cli)",
                                                     "test_x.py::test_helper (helper -> subprocess.run)"]
