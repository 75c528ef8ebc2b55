"""The offline inference bundle: its script, run where Hydra, OmegaConf, W&B and kfold_nlp cannot be imported,
reproduces ``make predict``; a missing or changed file is refused with one line."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import Result, tiny_overrides
from kfold_nlp import predict
from kfold_nlp.bundle import export
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv.run import run as run_cv
from test_bundle_input import run_bundle

pytestmark = pytest.mark.slow  # whole CV runs, then their bundles (see tests/test_tiers.py)

# What the script runs under: this environment's packages without these (a competition image has none of them).
EXCLUDED = ("hydra", "omegaconf", "wandb", "kfold_nlp", "kfold-nlp", "kfold_nlp-", "__editable__")
RUNNER = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
script = sys.argv[2]
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def bare_site(tmp_path_factory) -> Path:
    """A site-packages folder of links to this environment's packages, less the excluded ones (``python -S`` then
    sees no other: the project's editable install is a .pth file of the real site-packages)."""
    import site

    site_dir = tmp_path_factory.mktemp("bare-site")
    for real in site.getsitepackages():
        for entry in Path(real).iterdir():
            if entry.suffix == ".pth" or entry.name.lower().startswith(EXCLUDED):
                continue
            if not (site_dir / entry.name).exists():
                (site_dir / entry.name).symlink_to(entry)
    for name in ("hydra", "omegaconf", "wandb", "kfold_nlp"):
        probe = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(site_dir)!r}); "
                                f"import {name}"], capture_output=True, text=True)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, name
    return site_dir


def run_script(site_dir: Path, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """``python infer.py ARGS`` where only ``site_dir``'s packages can be imported (``python -S``)."""
    return subprocess.run([sys.executable, "-S", "-c", RUNNER, str(site_dir), str(bundle / "infer.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=bundle.parent)


def run_here(bundle: Path, *args: str) -> Result:
    """``python infer.py ARGS`` in this process (``runpy``, as a script runs), which has every library: the bundle's
    code must not import any of the excluded ones (its imports, read from its ``ast``; one test runs it without
    them)."""
    trees = [ast.parse(path.read_text()) for path in bundle.rglob("*.py")]
    imported = {a.name.split(".")[0] for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names} | {n.module.split(".")[0] for tree in trees for n in ast.walk(tree)
                                     if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert not {m for m in imported if m.lower().startswith(EXCLUDED)}, imported
    return run_bundle(bundle, *args)


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, fresh_accelerator_state_module):
    """A tiny run in fp32 (the precision the script predicts in), with the mean-pooled 3 fold models."""
    base = tmp_path_factory.mktemp("bundle")
    overrides = [o for o in tiny_overrides(base / "data", base) if not o.startswith("hydra.")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [*overrides, "name=test", "trainer.precision=fp32"])
    run_cv(cfg, base / "run")
    return base / "run"


@pytest.fixture(scope="module")
def fresh_accelerator_state_module():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


@pytest.mark.process  # python -S over a site-packages without the project's libraries
def test_the_bundle_reproduces_make_predict_without_the_projects_libraries(fp32_run, bare_site, tmp_path):
    test_csv = fp32_run.parent / "data" / "test.csv"
    expected = predict.predict_run(fp32_run, test_csv)
    summary = export.export_run(fp32_run, tmp_path / "bundle")
    bundle = summary["out"]
    assert summary["models"] == 3 and sorted(p.name for p in bundle.glob("fold_*.safetensors")) == [
        "fold_0.safetensors", "fold_1.safetensors", "fold_2.safetensors"]
    proc = run_script(bare_site, bundle, str(test_csv), "--out", str(tmp_path / "submission.csv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str})
    assert list(got.columns) == list(expected.columns) and got["id"].tolist() == expected["id"].tolist()
    np.testing.assert_allclose(got["target"], expected["target"], atol=1e-5, rtol=0)

    half = export.export_run(fp32_run, tmp_path / "half", fp16=True)
    assert half["size_mb"] < 0.6 * summary["size_mb"] + 1  # the models are most of it, at half their size
    proc = run_here(half["out"], test_csv, "--out", tmp_path / "half.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(pd.read_csv(tmp_path / "half.csv")["target"], expected["target"], atol=1e-2)


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_changed_or_missing_file_of_the_bundle_is_refused_with_one_line(damage, fp32_run, tmp_path):
    bundle = export.export_run(fp32_run, tmp_path / "bundle")["out"]
    target = bundle / "fold_1.safetensors" if damage == "changed" else bundle / "tokenizer" / "tokenizer.json"
    if damage == "changed":
        data = bytearray(target.read_bytes())
        data[-1] ^= 1
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    proc = run_here(bundle, fp32_run.parent / "data" / "test.csv", "--out", tmp_path / "s.csv")
    lines = proc.stderr.strip().splitlines()
    reason = "changed since the export (sha256 differs); export the run again" if damage == "changed" else \
        "missing; copy the whole bundle (or export the run again)"
    assert proc.returncode == 2 and lines == [f"error: {target}: {reason}"], proc.stderr
    assert not (tmp_path / "s.csv").exists()


def test_the_manifest_records_the_versions_and_a_checksum_of_every_file(fp32_run, tmp_path):
    bundle = export.export_run(fp32_run, tmp_path / "bundle")["out"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files and {"torch", "transformers", "python"} <= set(manifest["versions"])
    with pytest.raises(SystemExit) as exit_:  # a folder that is not a bundle is never replaced
        export.main([str(fp32_run), "--out", str(fp32_run)])
    assert exit_.value.code == 2


def test_a_classical_members_bundle_reproduces_make_predict(tmp_path):
    overrides = [o for o in tiny_overrides(tmp_path / "data", tmp_path) if not o.startswith("hydra.")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [*overrides, "name=test", "model=tfidf_ridge", "trainer.precision=fp32"])
    run_cv(cfg, tmp_path / "run")
    test_csv = tmp_path / "data" / "test.csv"
    bundle = export.export_run(tmp_path / "run", tmp_path / "bundle")["out"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "scikit-learn" in manifest["versions"] and "torch" not in manifest["versions"]
    proc = run_here(bundle, test_csv, "--out", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(pd.read_csv(tmp_path / "s.csv")["target"],
                               predict.predict_run(tmp_path / "run", test_csv)["target"], atol=1e-9)


def test_an_ensembles_bundle_reproduces_its_blended_submission(fp32_run, tmp_path):
    from kfold_nlp.analysis import ensemble

    data = fp32_run.parent / "data"
    overrides = [o for o in tiny_overrides(data, tmp_path) if not o.startswith("hydra.")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [*overrides, "name=tfidf", "model=tfidf_ridge", "trainer.precision=fp32"])
    run_cv(cfg, tmp_path / "tfidf")
    ensemble.main([str(fp32_run), str(tmp_path / "tfidf"), "--method", "mean", "--out", str(tmp_path / "blend"),
                   "--logger", "none"])
    summary = export.export_ensemble(tmp_path / "blend", tmp_path / "bundle")
    assert summary["models"] == 6 and len(list((summary["out"] / "members").iterdir())) == 2
    proc = run_here(summary["out"], data / "test.csv", "--out", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = pd.read_csv(tmp_path / "blend" / "submission.csv")
    np.testing.assert_allclose(pd.read_csv(tmp_path / "s.csv")["target"], expected["target"], atol=1e-5)
