"""DDP on CPU through torchrun: two real processes share each fold, and only rank 0 writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from conftest import ROOT, read_metrics, tiny_overrides, wandb_runs

pytestmark = pytest.mark.slow  # every test here runs another process (see tests/test_tiers.py)


def test_torchrun_two_processes_train_each_fold_once(tmp_path):
    run_dir = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "kfold_nlp",
           *tiny_overrides(tmp_path / "data", run_dir, logger="wandb")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert metrics["cv"]["processes"] == 2  # really distributed, not two independent copies
    oof = pd.read_csv(run_dir / "oof.csv")
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    assert len(oof) == len(train) and oof["pred"].notna().all()
    assert len(wandb_runs(run_dir)) == 4  # 3 folds + cv, from rank 0 only


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).with_name("torchrun")), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def steps(out: Path, batch_size: int, regularizer: str, processes: int | None) -> dict:
    out.mkdir()
    script = str(ROOT / "tests" / "ddp_steps.py")
    if processes:
        torchrun("--standalone", "--nproc_per_node", str(processes), script, str(out), str(batch_size), regularizer)
    else:
        subprocess.run([sys.executable, script, str(out), str(batch_size), regularizer], cwd=ROOT, check=True,
                       capture_output=True)
    return torch.load(out / "result.pt", weights_only=True)


def test_two_processes_of_batch_8_take_the_steps_of_one_process_of_batch_16(tmp_path):
    """Dropout off, plain SGD (a mis-scaled gradient would show): the same parameters after two steps."""
    two = steps(tmp_path / "two", 8, "no_dropout", processes=2)
    one = steps(tmp_path / "one", 16, "no_dropout", processes=None)
    assert two["processes"] == 2 and one["processes"] == 1
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, atol=1e-5, rtol=1e-5, msg=name)
    assert max((one["params"][k] - v).abs().max().item() for k, v in one["start"].items()) > 1e-3  # they moved


def test_each_rank_draws_its_own_dropout_masks_while_mixout_targets_agree(tmp_path):
    result = steps(tmp_path / "mixout", 8, "mixout", processes=2)
    masks, targets = result["masks"], result["targets"]
    assert not torch.equal(masks[0], masks[1])  # the same seed on every rank would repeat the masks
    assert targets.shape[1] > 1 and torch.equal(targets[0], targets[1])  # pretrained targets identical everywhere


def test_two_nodes_give_the_result_of_one_node(tmp_path):
    """Two torchrun launchers (``--nnodes=2``, c10d rendezvous on 127.0.0.1) against one launcher of 2 processes."""
    overrides = [*tiny_overrides(tmp_path / "data", tmp_path / "x"), "regularizer=no_dropout", "cv.folds=[0]"]
    one = tmp_path / "one"
    torchrun("--standalone", "--nproc_per_node", "2", "-m", "kfold_nlp",
             *[o if not o.startswith("hydra.run.dir") else f"hydra.run.dir={one}" for o in overrides])
    two = tmp_path / "two"
    port = 29400 + os.getpid() % 500
    nodes = [subprocess.Popen([str(Path(sys.executable).with_name("torchrun")), "--nnodes", "2", "--nproc_per_node",
                               "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id",
                               "two-nodes", "-m", "kfold_nlp",
                               *[o if not o.startswith("hydra.run.dir") else f"hydra.run.dir={two}"
                                 for o in overrides]],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), errors[0][-2000:] + errors[1][-2000:]
    assert read_metrics(two)["cv"]["processes"] == 2
    a, b = pd.read_csv(one / "oof.csv"), pd.read_csv(two / "oof.csv")
    assert a["id"].tolist() == b["id"].tolist()
    np.testing.assert_allclose(a["pred"], b["pred"], atol=1e-5)


def test_elastic_restart_continues_the_fold_from_its_snapshot(tiny_run, tmp_path):
    """``torchrun --max-restarts=1``: a worker killed mid-fold makes torchrun restart it, and the new worker
    continues from the latest snapshot (the log says from which step) to the uninterrupted run's results."""
    run_dir = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nnodes", "1", "--nproc_per_node", "1",
           "--max-restarts", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{29900 + os.getpid() % 90}",
           "-m", "kfold_nlp", *tiny_overrides(tiny_run.parent / "data", run_dir), "trainer.snapshot_every=1"]
    agent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (run_dir / "fold_1" / "snapshot" / "state.json").exists():
        assert agent.poll() is None, "the run ended before fold 1 had a snapshot"
        time.sleep(0.002)
    (worker,) = psutil.Process(agent.pid).children()
    worker.kill()
    stderr = agent.communicate(timeout=600)[1]
    assert agent.returncode == 0, stderr[-3000:]
    log = (run_dir / "run.log").read_text()
    assert re.search(r"fold 1: continued from its snapshot at step [1-9]", log), log[-2000:]
    oof, reference = pd.read_csv(run_dir / "oof.csv"), pd.read_csv(tiny_run / "oof.csv")
    np.testing.assert_allclose(oof["pred"], reference["pred"], atol=1e-6)
