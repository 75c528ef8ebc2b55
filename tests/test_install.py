"""An install without ``-e`` (a wheel's layout) finds its configs and notebook, runs from any folder, and leaves the
benchmarks behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.process  # pip, and the installed package in a process of its own (see tests/test_tiers.py)


def test_a_non_editable_install_finds_conf_and_notebook(tmp_path):
    src = tmp_path / "checkout"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    for name in ("src", "conf", "notebooks", "benchmarks"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(src)], check=True, capture_output=True)
    shutil.rmtree(src)  # nothing may be read from the source tree any more
    env = os.environ | {"PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c",
                            "import kfold_nlp.config.paths as p; print(p.CONFIG_DIR); print(p.NOTEBOOK)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(path.startswith(str(target)) for path in where), where
    assert (target / "kfold_nlp" / "conf" / "experiment" / "rdrop.yaml").is_file()
    assert not (target / "benchmarks").exists() and not list(target.glob("**/race.py"))  # in the repository only
    shown = subprocess.run([sys.executable, "-m", "kfold_nlp", "experiment=rdrop", "--cfg", "job"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "kfold_nlp.model.regularizers.rdrop.RDrop" in shown.stdout
