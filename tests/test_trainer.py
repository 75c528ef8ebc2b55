"""The real training loop: exact gradient accumulation, a schedule counted in optimizer steps, clipping, penalties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import ENV, in_background, tiny_overrides
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv.run import run as run_cv
from kfold_nlp.data.loading import EncodedRows, make_loader
from kfold_nlp.model import lora
from kfold_nlp.model.optim import build_optimizer, weight_penalty
from kfold_nlp.model.regressor import build_model, load_tokenizer, tokenize
from kfold_nlp.model.regularizers import Regularizer
from kfold_nlp.model.tasks import Task
from kfold_nlp.train import snapshot
from kfold_nlp.train.device import make_accelerator
from kfold_nlp.train.loop import Diverged, eval_points, micro_batch_groups, optimizer_step, train_fold

LR = 0.05
TEXTS = [("word " * (3 + 5 * i % 17)) + f"number {i}" for i in range(12)]
TARGETS = np.linspace(-2.0, 1.0, 12)


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def config(*overrides: str):
    """Plain SGD (an update proportional to the gradient: a mis-scaled accumulation shows), no dropout, fp32."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", [
            "model=tiny", "model.head_dropout=0", "model.backbone_dropout=0", "optimizer=sgd", f"optimizer.lr={LR}",
            "scheduler=linear", "scheduler.warmup=0", "trainer.precision=fp32", "trainer.eval_every=null",
            "trainer.evals_per_epoch=1",
            "trainer.patience=null", "trainer.max_grad_norm=null", *overrides])


def fit(n_rows: int, batch_size: int, grad_accum: int, *overrides: str):
    """train_fold on the first ``n_rows`` texts; returns the parameter updates, the result and the logged (step, lr)."""
    cfg = config(f"trainer.batch_size={batch_size}", f"trainer.grad_accum={grad_accum}", "trainer.epochs=2", *overrides)
    torch.manual_seed(0)
    model = lora.adapt(build_model(cfg.model), cfg.model)  # model.peft=lora: the adapters
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokenizer = load_tokenizer(cfg.model)
    rows = EncodedRows(tokenize(tokenizer, TEXTS, 64), np.arange(n_rows), TARGETS)
    train = make_loader(rows, tokenizer, batch_size, train=True, seed=0)
    val = make_loader(rows, tokenizer, 16, train=False)
    logged = []
    accelerator = make_accelerator(cfg.trainer)
    result = train_fold(model, Regularizer(), train, val, TARGETS[:n_rows], cfg, accelerator,
                        log=lambda metrics, step: logged.append((step, metrics["train/lr"])))
    updates = {n: p.detach() - start[n] for n, p in model.named_parameters()}
    return updates, result, logged


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
@pytest.mark.parametrize("n_rows,batch_size,grad_accum,big_batch", [(8, 2, 4, 8), (10, 2, 4, 8), (10, 4, 3, 12)])
def test_accumulated_micro_batches_give_the_update_of_one_big_batch(n_rows, batch_size, grad_accum, big_batch,
                                                                    max_grad_norm):
    """4 micro-batches of 2 == 1 batch of 8, every step for 2 epochs. Weighting by rows (not 1/k) keeps it exact
    when an epoch ends in a short group (10 rows: 1 micro-batch of 2 against a batch of 2) and when the micro-batches
    of a group differ in size (4 + 4 + 2 against 10). Clipping applies once, to the accumulated gradient."""
    clip = [f"trainer.max_grad_norm={max_grad_norm}"] if max_grad_norm else []
    small, res_small, lr_small = fit(n_rows, batch_size, grad_accum, *clip)
    big, res_big, lr_big = fit(n_rows, big_batch, 1, *clip)
    steps = 2 * -(-n_rows // big_batch)  # optimizer steps: 2 epochs of one per big batch (rounded up)
    assert res_small.steps == res_big.steps == steps
    for name in big:
        assert big[name].abs().max() > 0, name
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6, msg=name)  # ~8 float32 ulps at 1.0
    # The linear schedule advanced once per optimizer step, not once per micro-batch: lr at each epoch's end.
    expected = [(steps // 2, pytest.approx(LR / 2)), (steps, pytest.approx(0.0))]
    assert lr_small == lr_big == expected
    np.testing.assert_allclose(res_small.val_pred, res_big.val_pred, rtol=1e-5)


def test_groups_are_k_micro_batches_with_a_short_last_one():
    assert [len(g) for g in micro_batch_groups(range(10), 4)] == [4, 4, 2]
    assert [len(g) for g in micro_batch_groups(range(8), 1)] == [1] * 8


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_the_penalty_enters_the_real_step_once_and_only_on_decayed_weights(kind):
    """One optimizer_step over 3 micro-batches with a penalty minus the same step without: plain SGD with lr 1 moves
    the decayed weights by -weight * (sign(w) | w) and leaves biases and LayerNorm alone."""
    cfg = config("optimizer.lr=1.0", "trainer.batch_size=2")
    tokenizer = load_tokenizer(cfg.model)
    rows = EncodedRows(tokenize(tokenizer, TEXTS, 64), np.arange(6), TARGETS)
    group = list(make_loader(rows, tokenizer, 2, train=True, seed=0))
    assert len(group) == 3
    accelerator = make_accelerator(cfg.trainer)

    def step(penalty_kind):
        torch.manual_seed(0)
        model = build_model(cfg.model)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        penalty = weight_penalty(model, penalty_kind, 0.01)
        optimizer_step(model, Regularizer(), group, build_optimizer(cfg.optimizer, model), accelerator, Task(),
                       penalty=penalty)
        return start, {n: p.detach().clone() for n, p in model.named_parameters()}

    start, plain = step(None)
    _, penalised = step(kind)
    for name, w in start.items():
        grad = (w.sign() if kind == "l1" else w) if not (name.endswith("bias") or "LayerNorm" in name) else 0 * w
        torch.testing.assert_close(penalised[name] - plain[name], -0.01 * grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fp16_is_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="fp16"):
        make_accelerator(config("trainer.precision=fp16").trainer)


@pytest.mark.parametrize("where", ["loss", "validation MSE"])
def test_a_non_finite_loss_or_validation_mse_stops_the_fold_at_once(where, monkeypatch):
    """An SGD step of lr 1e12 sends the loss to nan at step 2; a nan prediction makes the validation MSE nan."""
    if where == "loss":
        with pytest.raises(Diverged, match=r"^fold 3 diverged at step 2 \(loss nan\); lower optimizer.lr"):
            fit_fold_of(6, 2, "optimizer.lr=1e12", fold=3)
    else:
        monkeypatch.setattr("kfold_nlp.train.loop.predict", lambda *a, **k: np.full(6, np.nan))
        with pytest.raises(Diverged, match=r"^fold 0 diverged at step 2 \(validation MSE nan\)"):
            fit_fold_of(6, 2, "trainer.eval_every=2")


def test_the_divergence_hint_suggests_fp32_only_to_a_run_that_is_not_fp32():
    assert str(Diverged(1, 5, "loss", float("nan"), "bf16")) == ("fold 1 diverged at step 5 (loss nan); lower "
                                                                 "optimizer.lr or use trainer.precision=fp32")
    assert str(Diverged(1, 5, "loss", float("nan"), "fp32")) == ("fold 1 diverged at step 5 (loss nan); lower "
                                                                 "optimizer.lr")


def fit_fold_of(n_rows: int, batch_size: int, *overrides: str, fold: int = 0):
    cfg = config(f"trainer.batch_size={batch_size}", *overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    rows = EncodedRows(tokenize(tokenizer, TEXTS, 64), np.arange(n_rows), TARGETS)
    return train_fold(model, Regularizer(), make_loader(rows, tokenizer, batch_size, train=True, seed=0),
                      make_loader(rows, tokenizer, 16, train=False), TARGETS[:n_rows], cfg,
                      make_accelerator(cfg.trainer), fold=fold)



@pytest.mark.parametrize("evals", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("steps_per_epoch", [1, 2, 5, 13, 114])
def test_evaluations_per_epoch_are_evenly_spaced_and_end_the_epoch(steps_per_epoch, evals):
    points = sorted(eval_points(steps_per_epoch, None, evals))
    assert points[-1] == steps_per_epoch and points[0] >= 1
    assert len(points) == min(evals, steps_per_epoch)
    gaps = np.diff([0, *points])
    assert gaps.max() - gaps.min() <= 1, points
    assert eval_points(steps_per_epoch, 10, evals) is None  # eval_every, when set, decides


@pytest.mark.parametrize("overrides,steps", [(("trainer.evals_per_epoch=2",), [3, 6, 9, 12]),
                                             (("trainer.evals_per_epoch=1",), [6, 12]),
                                             (("trainer.eval_every=4",), [4, 6, 8, 12])])
def test_the_fold_evaluates_at_the_scheduled_steps_and_times_it(overrides, steps):
    """12 rows, batch 2: 6 steps per epoch, 2 epochs."""
    _, result, logged = fit(12, 2, 1, *overrides)
    assert [step for step, _ in logged] == steps == [h["step"] for h in result.history]
    assert 0 < result.eval_time < result.train_time and 0 < result.keep_time < result.train_time


class Killed(Exception):
    """Stands in for a SIGKILL right after a snapshot was written."""


def fit_with_snapshots(tmp_path, kill_after: int | None = None, extra: tuple = ()):
    """Dropout on, 2 micro-batches a step, 3 steps an epoch, 2 epochs; with ``kill_after`` the fold stops right
    after the snapshot of that step and is then continued from it by a second ``train_fold`` on a fresh model."""
    cfg = config("trainer.batch_size=2", "trainer.grad_accum=2", "trainer.epochs=2", "trainer.eval_every=2",
                 "trainer.snapshot_every=1", "model.head_dropout=0.3", "model.backbone_dropout=0.2", *extra)
    tokenizer = load_tokenizer(cfg.model)
    rows = EncodedRows(tokenize(tokenizer, TEXTS, 64), np.arange(12), TARGETS)

    def attempt():
        torch.manual_seed(0)
        model = lora.adapt(build_model(cfg.model), cfg.model)  # model.peft=lora: the adapters
        result = train_fold(model, Regularizer(), make_loader(rows, tokenizer, 2, train=True, seed=0),
                            make_loader(rows, tokenizer, 16, train=False), TARGETS, cfg,
                            make_accelerator(cfg.trainer), snapshot_dir=tmp_path)
        return result, {n: p.detach().clone() for n, p in model.named_parameters()}

    if kill_after is not None:
        save = snapshot.save

        def save_then_kill(*args, **kwargs):
            save(*args, **kwargs)
            if kwargs["state"]["step"] == kill_after:
                raise Killed

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(snapshot, "save", save_then_kill)
            with pytest.raises(Killed):
                attempt()
        torch.manual_seed(123)  # the resumed fold must not depend on the stream it starts with
    return attempt()


@pytest.mark.parametrize("kill_after", [1, 2, 3, 4])
def test_a_fold_continued_from_a_mid_epoch_snapshot_ends_like_an_uninterrupted_one(kill_after, tmp_path):
    """Steps 1, 2 and 4 are mid-epoch (the skipped batches and the random streams must match), 3 ends epoch 0."""
    reference, ref_params = fit_with_snapshots(tmp_path / "reference")
    result, params = fit_with_snapshots(tmp_path / "killed", kill_after)
    assert result.resumed_from == kill_after and reference.resumed_from is None
    assert result.history == reference.history and result.steps == reference.steps == 6
    np.testing.assert_array_equal(result.val_pred, reference.val_pred)
    for name, value in ref_params.items():
        torch.testing.assert_close(params[name], value, atol=0, rtol=0)


@in_background
def page_faults(folder: Path, data: Path) -> list[str]:
    """A fresh process (glibc's malloc settings are the process's: this one's are set by the runs before) that
    allocates and frees a 64 MiB tensor 8 times, first with ``KFOLD_NLP_KEEP_FREED_MEMORY=0`` (the setting refused),
    then with ``=1``: what ``keep_freed_memory`` answered and the page faults, each time (the fewest of 3 tries: the
    heap's growth can fault in one allocation's pages again now and then, which is not what is measured)."""
    import subprocess
    import sys

    script = ("import os, resource, torch\nfrom kfold_nlp.train.memory import keep_freed_memory\n"
              "def faults():\n"
              "    torch.ones(2**24)\n    torch.ones(2**24)\n"
              "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
              "    for _ in range(8): torch.ones(2**24)\n"
              "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
              "def fewest():\n    return min(faults() for _ in range(3))\n"
              "os.environ['KFOLD_NLP_KEEP_FREED_MEMORY'] = '0'\nprint(keep_freed_memory(), fewest())\n"
              "os.environ['KFOLD_NLP_KEEP_FREED_MEMORY'] = '1'\nprint(keep_freed_memory(), fewest())")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env=ENV).stdout.split()


@pytest.mark.process  # glibc's malloc settings are the process's: a fresh one
def test_keep_freed_memory_stops_the_page_faults_of_reallocating_a_big_tensor(page_faults):
    """A 64 MiB tensor freed and allocated again, 8 times: glibc unmaps it and the kernel faults in 16k fresh pages
    each time; with the setting the memory stays in the process and is reused."""
    out = page_faults
    assert out[0] == "False" and out[2] == "True"
    faults = {"0": int(out[1]), "1": int(out[3])}
    if faults["0"] < 8 * 2**14 / 2:
        pytest.skip(f"this kernel backs the allocations with huge pages already ({faults['0']} faults)")
    assert faults["1"] < faults["0"] / 4, faults  # plain: every allocation faults; kept: at most the first


def test_early_stopping_ends_the_fold_before_its_planned_steps_and_says_so(tmp_path, caplog):
    """lr 0: the validation MSE never improves after the first evaluation, so patience 1 stops at the second; the
    result keeps the planned steps and the fold's line announces the early stop."""
    _, result, _ = fit(8, 2, 1, "optimizer.lr=0", "trainer.patience=1", "trainer.eval_every=1")
    assert (result.steps, result.planned_steps, result.best_step) == (2, 8, 1)

    overrides = [o for o in tiny_overrides(tmp_path / "data", tmp_path, n_train=24) if not o.startswith("hydra.")]
    with caplog.at_level("INFO", logger="kfold_nlp"):
        run_cv(config(*overrides, "logger=none", "name=exp", "cv.folds=[0]", "trainer.eval_every=1",
                      "optimizer.lr=0", "trainer.patience=1", "trainer.epochs=3"), tmp_path / "run")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fold 0: val RMSE")]
    assert "at step 1 of 2 (stopped early: 1 evaluation without a better one; 6 planned)" in line
