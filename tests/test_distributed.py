"""DDP on CPU through torchrun: two real processes share each fold, and only rank 0 writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import ddp_steps
from conftest import ENV, ROOT, fresh_process, in_background, kill_when, read_metrics, tiny_overrides, wandb_runs

pytestmark = pytest.mark.process  # every test here runs torchrun (see tests/test_tiers.py)

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([TORCHRUN, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@in_background
def two_process_run(folder: Path, data: Path) -> Path:
    """``torchrun --standalone --nproc_per_node 2`` of the tiny run with offline W&B; read-only."""
    torchrun("--standalone", "--nproc_per_node", "2", "-m", "kfold_nlp",
             *tiny_overrides(data, folder / "run", logger="wandb"))
    return folder / "run"


def test_torchrun_two_processes_train_each_fold_once(two_process_run, tiny_data):
    run_dir = two_process_run
    metrics = read_metrics(run_dir)
    assert metrics["cv"]["processes"] == 2  # really distributed, not two independent copies
    oof = pd.read_csv(run_dir / "oof.csv")
    train = pd.read_csv(tiny_data / "train.csv")
    assert len(oof) == len(train) and oof["pred"].notna().all()
    assert len(wandb_runs(run_dir)) == 4  # 3 folds + cv, from rank 0 only


@in_background
def two_process_steps(folder: Path, data: Path) -> Path:
    """tests/ddp_steps.py under torchrun, 2 processes of batch 8, without dropout and with Mixout."""
    torchrun("--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "ddp_steps.py"), str(folder), "8",
             "no_dropout,mixout")
    return folder


def test_two_processes_of_batch_8_take_the_steps_of_one_process_of_batch_16(two_process_steps, tmp_path):
    """Dropout off, plain SGD (a mis-scaled gradient would show): the same parameters after two steps."""
    two = torch.load(two_process_steps / "no_dropout.pt", weights_only=True)
    with fresh_process():  # one process: this one
        ddp_steps.main([str(tmp_path), "16", "no_dropout"])
    one = torch.load(tmp_path / "no_dropout.pt", weights_only=True)
    assert two["processes"] == 2 and one["processes"] == 1
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, atol=1e-5, rtol=1e-5, msg=name)
    assert max((one["params"][k] - v).abs().max().item() for k, v in one["start"].items()) > 1e-3  # they moved


def test_each_rank_draws_its_own_dropout_masks_while_mixout_targets_agree(two_process_steps):
    result = torch.load(two_process_steps / "mixout.pt", weights_only=True)
    masks, targets = result["masks"], result["targets"]
    assert not torch.equal(masks[0], masks[1])  # the same seed on every rank would repeat the masks
    assert targets.shape[1] > 1 and torch.equal(targets[0], targets[1])  # pretrained targets identical everywhere


@in_background
def two_node_run(folder: Path, data: Path) -> SimpleNamespace:
    """Two torchrun launchers (``--nnodes=2``, c10d rendezvous on 127.0.0.1) of the tiny run's fold 0."""
    port = 29400 + os.getpid() % 500
    nodes = [subprocess.Popen([TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes", "-m", "kfold_nlp",
                               *tiny_overrides(data, folder / "run"), "cv.folds=[0]"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    return SimpleNamespace(run_dir=folder / "run", returncodes=[node.returncode for node in nodes], errors=errors)


def test_two_nodes_give_the_result_of_one_node(two_node_run, two_process_run):
    """Two nodes against one launcher of 2 processes (the shared run's fold 0: the same overrides, the same
    seeds)."""
    two = two_node_run.run_dir
    assert two_node_run.returncodes == [0, 0], two_node_run.errors[0][-2000:] + two_node_run.errors[1][-2000:]
    assert read_metrics(two)["cv"]["processes"] == 2
    a, b = pd.read_csv(two_process_run / "oof.csv").query("fold == 0"), pd.read_csv(two / "oof.csv")
    assert a["id"].tolist() == b["id"].tolist()
    np.testing.assert_allclose(a["pred"], b["pred"], atol=1e-5)


@in_background
def elastic_restart(folder: Path, data: Path) -> SimpleNamespace:
    """``torchrun --max-restarts=1`` of the tiny run (a snapshot every step) whose worker is killed once fold 1 has
    a snapshot (tests/kill_when.py): torchrun restarts it."""
    run_dir = folder / "run"
    cmd = [TORCHRUN, "--nnodes", "1", "--nproc_per_node", "1", "--max-restarts", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{29900 + os.getpid() % 90}", "-m", "kfold_nlp",
           *tiny_overrides(data, run_dir), "trainer.snapshot_every=1"]
    agent = kill_when(cmd, exists=[run_dir / "fold_1" / "snapshot" / "state.json"], children=True)
    assert agent["met"], f"the run ended before fold 1 had a snapshot:\n{agent['stderr']}"
    return SimpleNamespace(run_dir=run_dir, returncode=agent["returncode"], stderr=agent["stderr"])


def test_elastic_restart_continues_the_fold_from_its_snapshot(elastic_restart, tiny_run):
    """A worker killed mid-fold makes torchrun restart it, and the new worker continues from the latest snapshot
    (the log says from which step) to the uninterrupted run's results."""
    run_dir = elastic_restart.run_dir
    assert elastic_restart.returncode == 0, elastic_restart.stderr[-3000:]
    log = (run_dir / "run.log").read_text()
    assert re.search(r"fold 1: continued from its snapshot at step [1-9]", log), log[-2000:]
    oof, reference = pd.read_csv(run_dir / "oof.csv"), pd.read_csv(tiny_run / "oof.csv")
    np.testing.assert_allclose(oof["pred"], reference["pred"], atol=1e-6)
