"""Tasks (``task=single|multitask|gaussian``): each loss in closed form, learned task weights, the target-only
output, composition with every regularizer, and end-to-end runs of the real CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_model

from conftest import TEXTS, cli, read_metrics, tiny_overrides
from kfold_nlp import predict as predict_module
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.config.schema import ConfigError, validate
from kfold_nlp.data.loading import EncodedRows, make_loader
from kfold_nlp.model.optim import build_optimizer
from kfold_nlp.model.regressor import build_model, load_tokenizer, target_column
from kfold_nlp.model.regularizers.base import model_inputs
from kfold_nlp.model.tasks import GaussianNLL, MultiTask, Task
from kfold_nlp.train.device import make_accelerator
from kfold_nlp.train.loop import optimizer_step, predict

ROOT = Path(__file__).resolve().parents[1]
REGULARIZERS = sorted(p.stem for p in (ROOT / "conf" / "regularizer").glob("*.yaml"))
pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def multitask_model(model_cfg):
    torch.manual_seed(0)
    model = build_model(model_cfg, n_outputs=2)
    task = MultiTask()
    task.setup(model)
    return model, task


def config(*overrides):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", ["model=tiny", "name=test", *overrides])


# ---------------------------------------------------------------- losses in closed form


def test_multitask_loss_is_kendalls_formula_and_its_log_variances_get_the_closed_form_gradient(model_cfg, batch):
    model, task = multitask_model(model_cfg)
    s = [0.3, -0.7]
    with torch.no_grad():
        model.task_weights.log_vars.copy_(torch.tensor(s))
    pred = model.eval()(**model_inputs(batch))
    assert pred.shape == (len(TEXTS), 2)
    loss = task.loss(pred, batch)
    l_target = ((pred[:, 0] - batch["target"]) ** 2).mean()
    l_se = ((pred[:, 1] - batch["standard_error"]) ** 2).mean()
    by_hand = (math.exp(-s[0]) * l_target / 2 + s[0] / 2) + (math.exp(-s[1]) * l_se / 2 + s[1] / 2)
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    # d/ds_i [exp(-s_i) L_i / 2 + s_i / 2] = (1 - exp(-s_i) L_i) / 2
    expected = torch.stack([(1 - math.exp(-s[0]) * l_target) / 2, (1 - math.exp(-s[1]) * l_se) / 2]).detach()
    torch.testing.assert_close(model.task_weights.log_vars.grad, expected)
    assert model.head.weight.grad is not None and model.head.weight.grad[1].abs().sum() > 0  # the se column learns


def test_the_log_variances_are_optimized_in_the_head_group_without_decay_and_logged(model_cfg, batch):
    cfg = config("task=multitask", "trainer.precision=fp32", "optimizer.head_lr=0.1")
    model, task = multitask_model(cfg.model)
    optimizer = build_optimizer(cfg.optimizer, model)
    (group,) = [g for g in optimizer.param_groups if any(p is model.task_weights.log_vars for p in g["params"])]
    assert group["name"] == "head/no_decay" and group["weight_decay"] == 0 and group["lr"] == 0.1
    accelerator = make_accelerator(cfg.trainer)
    losses = optimizer_step(model.train(), instantiate(cfg.regularizer), [batch], optimizer, accelerator, task)
    assert not torch.equal(model.task_weights.log_vars.detach(), torch.zeros(2))  # the optimizer moved them
    assert {"mtl_logvar_target", "mtl_logvar_se", "mtl_weight_target", "mtl_weight_se", "mtl_mse_se"} <= set(losses)
    assert losses["mtl_logvar_target"] == 0 and losses["mtl_weight_se"] == 1  # the values the step started from


def test_gaussian_nll_floors_the_noise_so_a_zero_standard_error_stays_finite(batch):
    pred = torch.tensor([0.1, -0.4, 1.2, 0.0], requires_grad=True)
    task = GaussianNLL(min_se=0.25)
    loss = task.loss(pred, batch)
    variance = batch["standard_error"].clamp(min=0.25) ** 2
    torch.testing.assert_close(loss, ((pred - batch["target"]) ** 2 / (2 * variance)).mean())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    # the zero-se row weighs 1 / 0.25^2, the others 1 / se^2: rows the annotators agreed on count more
    weight = pred.grad.abs() / (pred - batch["target"]).abs().detach()
    assert weight[1] > weight[0] and weight[1] > weight[3]
    with pytest.raises(ConfigError, match=r"task.min_se=0: must be a number > 0"):
        GaussianNLL(min_se=0)


def test_single_is_the_mse(batch):
    pred = torch.randn(len(TEXTS))
    torch.testing.assert_close(Task().loss(pred, batch), torch.nn.functional.mse_loss(pred, batch["target"]))


# ---------------------------------------------------------------- only the target is scored


def test_evaluation_and_predict_return_the_target_column_only(tmp_path):
    cfg = config("task=multitask", "trainer.precision=fp32")
    model, _ = multitask_model(cfg.model)
    model.eval()
    tokenizer = load_tokenizer(cfg.model)
    rows = EncodedRows(dict(tokenizer(TEXTS, truncation=True, max_length=64)), np.arange(len(TEXTS)))
    accelerator = make_accelerator(cfg.trainer)
    evaluated = predict(model, accelerator.prepare(make_loader(rows, tokenizer, 3, train=False)), accelerator)
    with torch.no_grad():
        full = model(**tokenizer(TEXTS, padding=True, return_tensors="pt"))
    assert evaluated.shape == (len(TEXTS),)
    np.testing.assert_allclose(evaluated, full[:, 0].numpy(), atol=1e-5)
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))  # with task_weights: make predict must build the same two-output model
    np.testing.assert_allclose(predict_module.predict_texts(cfg, [path], TEXTS)[0], evaluated, atol=1e-5)


# ---------------------------------------------------------------- every task with every regularizer


@pytest.mark.parametrize("task_name", ["single", "multitask", "gaussian"])
@pytest.mark.parametrize("reg_name", REGULARIZERS)
def test_every_task_composes_with_every_regularizer(task_name, reg_name, model_cfg, batch):
    task = instantiate(OmegaConf.load(ROOT / f"conf/task/{task_name}.yaml"))
    torch.manual_seed(0)
    model = build_model(model_cfg, n_outputs=task.n_outputs).train()
    task.setup(model)
    regularizer = instantiate(OmegaConf.load(ROOT / f"conf/regularizer/{reg_name}.yaml"))
    regularizer.setup(model)
    parts = regularizer.loss(model, batch, task.loss)
    assert parts.loss.dim() == 0 and torch.isfinite(parts.loss)
    assert target_column(parts.pred, model).shape[-1] == len(TEXTS)
    parts.loss.backward()
    assert model.head.weight.grad is not None
    if task_name == "multitask":
        assert model.task_weights.log_vars.grad is not None


def test_rdrop_consistency_is_on_the_target_column_of_a_two_output_head(model_cfg, batch):
    from kfold_nlp.model.regularizers.rdrop import RDrop

    model, task = multitask_model(model_cfg)
    model.train()
    torch.manual_seed(1)
    parts = RDrop(alpha=1.0).loss(model, batch, task.loss)
    torch.manual_seed(1)
    p1, p2 = RDrop().predictions(model, batch)
    torch.testing.assert_close(parts.terms["rdrop_consistency"], ((p1[:, 0] - p2[:, 0]) ** 2).mean())
    torch.testing.assert_close(parts.loss, 0.5 * (task.loss(p1, batch) + task.loss(p2, batch)
                                                  + ((p1[:, 0] - p2[:, 0]) ** 2).mean()))


def test_msd_with_a_two_output_head_averages_the_k_sample_losses(model_cfg, batch):
    from kfold_nlp.model.regularizers.msd import MultiSampleDropout

    model, task = multitask_model(model_cfg)
    MultiSampleDropout(k=3).setup(model)
    model.train()
    torch.manual_seed(2)
    parts = MultiSampleDropout(k=3).loss(model, batch, task.loss)
    assert parts.pred.shape == (3, len(TEXTS), 2)
    torch.testing.assert_close(parts.loss, torch.stack([task.loss(p, batch) for p in parts.pred]).mean())


# ---------------------------------------------------------------- data and config checks


@pytest.mark.slow
def test_a_data_set_without_standard_error_is_refused_with_one_line(tiny_train, tmp_path):
    path = tmp_path / "train.csv"
    tiny_train.drop(columns="standard_error").to_csv(path, index=False)
    run_dir = tmp_path / "run"
    proc = cli("cv", "model=tiny", f"data.path={path}", "data.generate=null", "cv.n_splits=3", "task=gaussian",
               "logger.mode=disabled", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {path}: no 'standard_error' column, which task=gaussian needs (use task=single)"]
    assert not run_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("se", ["-0.5", "inf"])
def test_a_negative_or_infinite_standard_error_is_refused_naming_file_row_and_column(se, tiny_train, tmp_path):
    """GaussianNLL floors se at min_se (so CommonLit's anchor, se 0, is safe), which would hide a negative se;
    an infinite one would weigh its row 0. Both are refused before anything is written."""
    path = tmp_path / "train.csv"
    tiny_train.astype({"standard_error": str}).assign(
        standard_error=lambda t: t["standard_error"].mask(t.index == 4, se)).to_csv(path, index=False)
    run_dir = tmp_path / "run"
    proc = cli("cv", "model=tiny", f"data.path={path}", "data.generate=null", "cv.n_splits=3", "task=gaussian",
               "logger.mode=disabled", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {path}: negative or infinite 'standard_error' (task=gaussian needs a finite value "
                     f">= 0) in 1 row(s); first at data row 5 (id {tiny_train['id'][4]!r})"]
    assert not run_dir.exists()


def test_a_zero_standard_error_is_accepted(tiny_train):
    from kfold_nlp.model.tasks import check_columns

    cfg = OmegaConf.create({"task": {"_target_": "kfold_nlp.model.tasks.GaussianNLL"}, "data": {"path": "train.csv"}})
    check_columns(cfg, tiny_train.assign(standard_error=tiny_train["standard_error"].mask(tiny_train.index == 0, 0)))


def test_a_task_param_is_checked_by_the_schema():
    with pytest.raises(ConfigError, match=r"^task.min_se=-1: must be a number > 0"):
        validate(config("task=gaussian", "task.min_se=-1"), check_files=False)
    with pytest.raises(ConfigError, match=r"^task.nosuch: not a key of this task"):
        validate(config("task=gaussian", "+task.nosuch=1"), check_files=False)


# ---------------------------------------------------------------- the real CLI


CLI_RUNS = {  # every new choice, each composed with another regularizer or task
    "multitask+rdrop": ["task=multitask", "regularizer=rdrop", "logger=csv"],
    "gaussian+msd": ["task=gaussian", "regularizer=msd"],
    "mixup+multitask": ["experiment=mixup", "task=multitask"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", CLI_RUNS)
def test_new_choices_run_end_to_end_through_the_cli(name, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_overrides(tiny_data, run_dir) if not o.startswith("logger")]
    if "logger=csv" not in CLI_RUNS[name]:
        overrides.append("logger=none")
    cli("cv", *overrides, "cv.folds=[0]", *CLI_RUNS[name])
    oof = pd.read_csv(run_dir / "oof.csv")
    assert list(oof.columns) == ["id", "fold", "target", "pred"] and oof["pred"].notna().all()
    assert math.isfinite(read_metrics(run_dir)["cv"]["rmse"])
    sub = pd.read_csv(run_dir / "submission.csv")
    assert list(sub.columns) == ["id", "target"]
    if name.startswith("multitask"):
        out = tmp_path / "pred.csv"  # make predict on a two-output run: the target column, as bagged
        cli("predict", run_dir, tiny_data / "test.csv", "--out", out)
        np.testing.assert_allclose(pd.read_csv(out)["target"], sub["target"], atol=1e-5)
        logged = pd.read_csv(run_dir / "csv" / "rdrop-fold0" / "metrics.csv").groupby("step")["metric"].agg(set)
        logged = [m for m in logged if "train/mtl_logvar_se" in m]
        assert logged and all({"train/mtl_weight_se", "train/task_loss"} <= m for m in logged)
