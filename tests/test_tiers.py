"""The tiers stay what they say: every test that starts another process, itself, through a helper or through a
fixture (``subprocess``: a killed or signalled run, ``torchrun``, ``make``, ``pip``; a launcher's or a search's jobs;
papermill's kernel), is marked ``process``; every other test that runs the CLI (``conftest.cli``, in this process) is
marked ``slow`` or ``process``; ``process`` tests are ``slow`` too (conftest), so that `make test-fast`
(``pytest -m "not slow"``) runs neither, and ``pytest -m process`` lists the tests that still pay for a process.

Read from the test files' ``ast``, so a new test that runs the CLI without the mark fails here instead of making the
fast tier slow unnoticed. A fixture whose work runs in the background (``conftest.in_background``) is read like any
other: its process is its tests'.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PROCESS_CALLS = {"run_process", "start_until", "report.render", "report.main"}  # another process, papermill's kernel
PROCESS_MODULES = ("subprocess.", "papermill.")
PROCESS_COMMANDS = {"hpo", "report"}  # in-process commands that start processes: a search's trials, a kernel
LAUNCHER = re.compile(r"launcher=(joblib|submitit|slurm|$)")  # a launcher's jobs are processes (f"launcher={x}")
CLI_CALLS = {"cli"}  # the entry point in this process (conftest.cli)
WHY_NOT = {"leet"}  # W&B's own reader of a run's log (conftest.leet): a native tool of milliseconds, not a run


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


def literal(node) -> str | None:
    """A string constant, or an f-string's text with its fields left empty."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return None


def starts_a_process(call: ast.Call) -> str | None:
    name = dotted(call.func)
    if name in PROCESS_CALLS or name.startswith(PROCESS_MODULES):
        return name
    if name in CLI_CALLS and call.args and literal(call.args[0]) in PROCESS_COMMANDS:
        return f"{name} {literal(call.args[0])}"
    launcher = next((t for a in call.args if (t := literal(a)) is not None and LAUNCHER.search(t)), None)
    return f"{name}({launcher!r})" if launcher is not None else None


def why(module: Module, fn, kind: str, seen=None) -> str | None:
    """What in ``fn`` (its calls, the helpers it calls, the fixtures it requests) starts another process
    (``kind="process"``) or runs the CLI in this one (``kind="cli"``)."""
    seen = seen if seen is not None else set()
    if (module.name, fn.name) in seen or fn.name in WHY_NOT:
        return None
    seen.add((module.name, fn.name))
    requested = [a.arg for a in fn.args.args]
    requested += [c.value for d in fn.decorator_list if isinstance(d, ast.Call) and dotted(d.func).endswith(
        "usefixtures") for c in d.args if isinstance(c, ast.Constant)]
    calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call)]
    for call in calls:
        found = starts_a_process(call) if kind == "process" else dotted(call.func) if dotted(
            call.func) in CLI_CALLS else None
        if found:
            return found
    for name in [*requested, *(dotted(c.func) for c in calls)]:
        target = module.resolve(name)
        if target and (found := why(*target, kind, seen)):
            return f"{name} -> {found}"
    return None


def unmarked(folder: Path) -> list[str]:
    """Tests that start a process without the ``process`` mark, or run the CLI without ``slow`` or ``process``."""
    found = []
    for module in load(folder).values():
        for name, fn in module.functions.items():
            if not name.startswith("test_"):
                continue
            have = module.pytestmark | marks(fn.decorator_list)
            if "process" not in have and (reason := why(module, fn, "process")):
                found.append(f"{module.name}.py::{name} (process: {reason})")
            elif not have & {"slow", "process"} and (reason := why(module, fn, "cli")):
                found.append(f"{module.name}.py::{name} (slow: {reason})")
    return found


def test_every_test_that_starts_a_process_or_runs_the_cli_is_marked():
    assert unmarked(TESTS) == []


def test_the_check_sees_through_helpers_and_fixtures(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "import pytest, subprocess\n"
        "def run_process(*a):\n    return subprocess.run(a)\n"
        "def cli(*a):\n    pass\n"
        "@pytest.fixture\ndef process_run():\n    run_process('x')\n"
        "@pytest.fixture\ndef cli_run():\n    cli('cv')\n")
    (tmp_path / "test_x.py").write_text(
        "import pytest, subprocess\nfrom conftest import cli, run_process\n"
        "def helper():\n    subprocess.run(['make'])\n"
        "def search(*a):\n    cli('hpo', *a)\n"
        "def test_helper():\n    helper()\n"
        "def test_fixture(process_run):\n    pass\n"
        "def test_search():\n    search('x')\n"
        "def test_launcher():\n    cli('cv', f'launcher={1}')\n"
        "def test_cli(cli_run):\n    pass\n"
        "@pytest.mark.slow\ndef test_cli_marked():\n    cli('collect')\n"
        "@pytest.mark.slow\ndef test_process_marked_slow_only():\n    run_process('y')\n"
        "@pytest.mark.process\ndef test_marked():\n    run_process('y')\n"
        "def test_in_process():\n    assert sum([1]) == 1\n")
    assert sorted(unmarked(tmp_path)) == [
        "test_x.py::test_cli (slow: cli_run -> cli)",
        "test_x.py::test_fixture (process: process_run -> run_process)",
        "test_x.py::test_helper (process: helper -> subprocess.run)",
        "test_x.py::test_launcher (process: cli('launcher='))",
        "test_x.py::test_process_marked_slow_only (process: run_process)",
        "test_x.py::test_search (process: search -> cli hpo)"]
