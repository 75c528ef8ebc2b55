"""Snapshots: what is saved comes back, the random streams continue where they stopped, a kill never loses both."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from kfold_nlp.train import snapshot


def _optimizer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    return layer, opt, sched


def test_save_then_load_gives_back_every_part_and_the_random_streams(tmp_path):
    layer, opt, sched = _optimizer()
    gen = torch.Generator().manual_seed(3)
    torch.randn(2, generator=gen)
    snapshot.save(tmp_path, model_state=layer.state_dict(), optimizer=opt, scheduler=sched,
                  selections={"best": (layer.state_dict(), np.array([0.5, -1.0])), "ema": (layer.state_dict(), None)},
                  state={"step": 7, "epoch": 1, "batch": 3}, sampler_state=gen.get_state())
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.randn(1, generator=gen).item())

    random.random(), np.random.rand(), torch.rand(1), torch.randn(1, generator=gen)  # the streams move on
    snap = snapshot.load(tmp_path)
    snapshot.set_rng_state(snap.rng["tensors"], snap.rng["plain"])
    gen.set_state(snap.rng["tensors"]["sampler"])
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.randn(1, generator=gen).item())
    assert again == expected
    assert snap.state == {"step": 7, "epoch": 1, "batch": 3}
    assert all(torch.equal(snap.model[k], v) for k, v in layer.state_dict().items())
    np.testing.assert_array_equal(snap.selections["best"][1], [0.5, -1.0])
    assert snap.selections["ema"][1] is None
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(snap.optimizer)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert snap.scheduler["last_epoch"] == sched.state_dict()["last_epoch"]


def test_a_kill_between_the_two_renames_keeps_the_previous_snapshot(tmp_path):
    layer, opt, sched = _optimizer()
    args = dict(model_state=layer.state_dict(), optimizer=opt, scheduler=sched, selections={})
    snapshot.save(tmp_path, **args, state={"step": 1})
    os.replace(tmp_path / "snapshot", tmp_path / "snapshot.old")  # what a kill after the first rename leaves
    (tmp_path / ".snapshot.x.tmp").mkdir()  # and a half-written next one
    assert snapshot.load(tmp_path).state == {"step": 1}
    snapshot.save(tmp_path, **args, state={"step": 2})
    assert snapshot.load(tmp_path).state == {"step": 2} and not (tmp_path / "snapshot.old").exists()
    snapshot.remove(tmp_path)
    assert snapshot.load(tmp_path) is None and not list(tmp_path.iterdir())
