"""One owner per concept: a run folder's file names are spelled in kfold_nlp.rundir only; the entry point delegates."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import kfold_nlp.rundir as rundir

SRC = Path(__file__).resolve().parents[1] / "src" / "kfold_nlp"

# What a run folder holds, as RunDir and FoldDir name it.
RUN_FILES = {value for cls in (rundir.RunDir, rundir.FoldDir) for key, value in vars(cls).items()
             if key.isupper() and isinstance(value, str) and "." in value}

# bundle/infer.py runs inside an inference bundle without this package: its names are the bundle's own.
EXEMPT = {SRC / "rundir.py", SRC / "bundle" / "infer.py"}


def _string_literals(path: Path):
    """Every string in the code (f-strings' parts too), docstrings aside: they may name files in prose."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_the_run_file_names_are_what_the_owner_says():
    assert {"result.json", "metrics.json", "oof.csv", "submission.csv", "run_config.yaml", "folds.csv",
            "model.safetensors", "fingerprint.json"} <= RUN_FILES


def test_no_run_file_name_is_spelled_outside_the_run_folder_owner():
    names = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, sorted(RUN_FILES))) + r")(?![\w])")
    found = [f"{path.relative_to(SRC)}:{line}: {text!r}" for path in sorted(SRC.rglob("*.py")) if path not in EXEMPT
             for line, text in _string_literals(path) if names.search(text)]
    assert not found, "run-file names outside kfold_nlp/rundir.py (use RunDir/FoldDir):\n" + "\n".join(found)


def test_the_entry_point_only_delegates():
    tree = ast.parse((SRC / "__main__.py").read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    body = [n for n in main.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert main.end_lineno - main.lineno <= 20 and len(body) <= 3
