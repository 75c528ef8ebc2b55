"""Shared fixtures: tiny randomly initialised models on a small generated set, so each run takes seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_overrides(data_dir: Path, run_dir: Path, n_train: int = 48, logger: str = "none") -> list[str]:
    """A whole CV run in a few seconds: tiny model, 3 folds, 1 epoch, a 48-row generated set; the baseline
    regularizer (the model's own dropout), so that resumes and DDP ranks have random masks to get right.
    ``logger``: a conf/logger choice (``wandb``: offline)."""
    return [
        "model=tiny",
        "regularizer=baseline",
        f"data.path={data_dir}/train.csv",
        f"data.test_path={data_dir}/test.csv",
        f"data.generate.n_train={n_train}",
        "data.generate.n_test=6",
        "cv.n_splits=3",
        "trainer.epochs=1",
        "trainer.batch_size=8",
        "trainer.eval_every=2",
        f"logger={logger}",
        *(["logger.mode=offline"] if logger == "wandb" else []),
        f"hydra.run.dir={run_dir}",
    ]


def run_cli(*args: str, module: str = "kfold_nlp", check: bool = True) -> subprocess.CompletedProcess:
    """Run the real entry point in a subprocess from the project root."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def copy_run(run_dir: Path, dest: Path, models: bool = False) -> Path:
    """A copy of a finished run folder without its W&B files (and models unless asked) that logs nothing when
    collected or resumed."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("wandb", *([] if models else ["*.safetensors"])))
    config = dest / "run_config.yaml"
    config.write_text(config.read_text().replace("mode: offline", "mode: disabled"))
    return dest


def start_until(overrides: list[str], marker: bytes, **popen) -> subprocess.Popen:
    """Start the real entry point and return it once its stderr (the progress bars) has shown ``marker``."""
    proc = subprocess.Popen([sys.executable, "-m", "kfold_nlp", *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **popen)
    seen = b""
    while marker not in seen:
        chunk = proc.stderr.read1(65536)
        assert chunk, seen.decode()[-2000:]
        seen += chunk
    return proc


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def wandb_runs(run_dir: Path) -> list[dict]:
    """What each offline W&B run under ``run_dir`` recorded: name, state, summary, group, job type, history.

    wandb 0.31 writes no summary file offline, so read the .wandb log with ``wandb leet inspect``.
    """
    wandb = str(Path(sys.executable).with_name("wandb"))
    runs = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*")):
        out = subprocess.run([wandb, "leet", "inspect", "--summary", "--json", str(path)], capture_output=True,
                             text=True)
        if out.returncode:  # the log of a process killed while writing it may not parse
            runs.append({"name": None, "state": "unreadable", "summary": {}, "path": path.name})
            continue
        info = json.loads(out.stdout)
        out = subprocess.run([wandb, "leet", "inspect", "--json", str(path)], capture_output=True, text=True,
                             check=True)
        records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        run = next((r["run"] for r in records if r["type"] == "run"), {})  # a killed run may have none
        info |= {"group": run.get("run_group"), "job_type": run.get("job_type"),
                 "history": [r["history"]["item"] for r in records if r["type"] == "history"]}
        runs.append(info)
    return runs


@pytest.fixture
def memory_runs():
    """The runs ``logger=memory`` records in this process, empty at the start of the test."""
    from kfold_nlp.track import memory

    memory.RUNS.clear()
    yield memory.RUNS
    memory.RUNS.clear()


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps its state process-wide; a test that builds accelerators gets its own."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete CV run of the real CLI with offline W&B; read-only for the tests that share it."""
    base = tmp_path_factory.mktemp("tiny_run")
    run_dir = base / "run"
    run_cli(*tiny_overrides(base / "data", run_dir, logger="wandb"))
    return run_dir


@pytest.fixture(scope="session")
def tiny_train(tiny_run) -> pd.DataFrame:
    return pd.read_csv(tiny_run.parent / "data" / "train.csv", dtype={"id": str})


TEXTS = ["The cat sat on the mat.", "A much longer sentence about reading levels of old texts.",
         "Short one.", "Readability depends on words, sentences and ideas."]


@pytest.fixture(scope="session")
def model_cfg():
    """The tiny random BERT's ``model`` group."""
    from omegaconf import OmegaConf

    import kfold_nlp  # noqa: F401  (registers the ${minilm_path:} resolver)

    return OmegaConf.load(ROOT / "conf/model/tiny.yaml")


@pytest.fixture(scope="session")
def batch(model_cfg):
    """``TEXTS`` collated as a training batch: random targets and standard errors (one 0, like CommonLit's anchor)."""
    import torch

    from kfold_nlp.model.regressor import load_tokenizer

    enc = load_tokenizer(model_cfg)(TEXTS, padding=True, return_tensors="pt")
    return dict(enc) | {"target": torch.randn(len(TEXTS), generator=torch.Generator().manual_seed(0)),
                        "index": torch.arange(len(TEXTS)), "standard_error": torch.tensor([0.5, 0.0, 0.45, 0.6])}

