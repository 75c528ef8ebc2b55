"""The offline inference bundle: its script, run where Hydra, OmegaConf, W&B and kfold_nlp cannot be imported,
reproduces ``make predict``; a missing or changed file is refused with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import tiny_overrides
from kfold_nlp import predict
from kfold_nlp.bundle import export
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv.run import run as run_cv

pytestmark = pytest.mark.slow  # the bundle's script runs in another process (see tests/test_tiers.py)

# What the script runs under: these imports fail, as on a competition image without the project's environment.
BLOCKED = ("hydra", "omegaconf", "wandb", "kfold_nlp", "accelerate")
RUNNER = f"""
import runpy, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is not in this environment")
sys.meta_path.insert(0, Blocked())
for name in list(sys.modules):
    if name.split(".")[0] in {BLOCKED!r}:
        del sys.modules[name]
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def run_script(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", RUNNER, str(bundle / "infer.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=bundle.parent)


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


def test_the_bundle_reproduces_make_predict_without_the_projects_libraries(fp32_run, tmp_path):
    test_csv = fp32_run.parent / "data" / "test.csv"
    expected = predict.predict_run(fp32_run, test_csv)
    summary = export.export_run(fp32_run, tmp_path / "bundle")
    bundle = summary["out"]
    assert summary["models"] == 3 and sorted(p.name for p in bundle.glob("fold_*.safetensors")) == [
        "fold_0.safetensors", "fold_1.safetensors", "fold_2.safetensors"]
    proc = run_script(bundle, str(test_csv), "--out", str(tmp_path / "submission.csv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str})
    assert list(got.columns) == list(expected.columns) and got["id"].tolist() == expected["id"].tolist()
    np.testing.assert_allclose(got["target"], expected["target"], atol=1e-5, rtol=0)

    half = export.export_run(fp32_run, tmp_path / "half", fp16=True)
    assert half["size_mb"] < 0.6 * summary["size_mb"] + 1  # the models are most of it, at half their size
    proc = run_script(half["out"], str(test_csv), "--out", str(tmp_path / "half.csv"))
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
    proc = run_script(bundle, str(fp32_run.parent / "data" / "test.csv"), "--out", str(tmp_path / "s.csv"))
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
