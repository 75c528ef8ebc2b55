"""DDP on CPU through torchrun: two real processes share each fold, and only rank 0 writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from conftest import ROOT, read_metrics, tiny_overrides, wandb_runs


def test_torchrun_two_processes_train_each_fold_once(tmp_path):
    run_dir = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "kfold_nlp",
           *tiny_overrides(tmp_path / "data", run_dir, logger="offline")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert metrics["cv"]["processes"] == 2  # really distributed, not two independent copies
    oof = pd.read_csv(run_dir / "oof.csv")
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    assert len(oof) == len(train) and oof["pred"].notna().all()
    assert len(wandb_runs(run_dir)) == 4  # 3 folds + cv, from rank 0 only
