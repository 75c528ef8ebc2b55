"""Every pooling under every precision this machine has: one training step, evaluation and ``predict`` all work."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import save_model

import kfold_nlp.model.regressor as model_module
from kfold_nlp import predict as predict_module
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.data.loading import EncodedRows, make_loader
from kfold_nlp.model.optim import build_optimizer
from kfold_nlp.model.regressor import Pooler, build_model, load_tokenizer, tokenize
from kfold_nlp.model.regularizers import Regularizer
from kfold_nlp.model.tasks import Task
from kfold_nlp.train.device import make_accelerator
from kfold_nlp.train.loop import optimizer_step, predict

PRECISIONS = ["fp32", "bf16"] + (["fp16"] if torch.cuda.is_available() else [])
TEXTS = ["A short text.", "A somewhat longer text about reading and how hard it is.", "Tiny.",
         "The committee deliberated meticulously over the ostensibly unprecedented predicament."]
TARGETS = np.array([0.5, -1.0, 1.0, -2.0])


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def config(*overrides):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", ["model=tiny", "name=test", *overrides])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("pooling", Pooler.KINDS)
def test_pooling_trains_evaluates_and_predicts_under_each_precision(pooling, precision, tmp_path):
    cfg = config(f"model.pooling={pooling}", f"trainer.precision={precision}")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    rows = EncodedRows(tokenize(tokenizer, TEXTS, 64), np.arange(len(TEXTS)), TARGETS)
    accelerator = make_accelerator(cfg.trainer)
    optimizer = build_optimizer(cfg.optimizer, model)
    model, optimizer = accelerator.prepare(model, optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    group = list(make_loader(rows, tokenizer, 2, train=True, seed=0))[:1]
    group = [{k: v.to(accelerator.device) for k, v in b.items()} for b in group]
    losses = optimizer_step(model, Regularizer(), group, optimizer, accelerator, Task())
    assert np.isfinite(losses["loss"]) and losses["loss"] == pytest.approx(losses["task_loss"])
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    evaluated = predict(model, accelerator.prepare(make_loader(rows, tokenizer, 3, train=False)), accelerator)
    assert evaluated.shape == (len(TEXTS),) and np.isfinite(evaluated).all()

    path = tmp_path / "model.safetensors"
    save_model(accelerator.unwrap_model(model), str(path))
    predicted = predict_module.predict_texts(cfg, [path, path], TEXTS)
    assert predicted.shape == (2, len(TEXTS))
    np.testing.assert_allclose(predicted[0], evaluated, atol=2e-2 if precision != "fp32" else 1e-5)


def test_attention_pooling_ignores_padding():
    pool = Pooler("attention", 8)
    states = torch.randn(1, 5, 8)
    short = pool(states[:, :3], torch.ones(1, 3))
    padded = pool(torch.cat([states[:, :3], 1e4 * torch.ones(1, 2, 8)], 1), torch.tensor([[1, 1, 1, 0, 0]]))
    torch.testing.assert_close(short, padded)


def test_predict_holds_one_fold_model_at_a_time(tmp_path, monkeypatch):
    """Each fold model is freed before the next is built (``accelerator.prepare`` would keep them all)."""
    cfg = config()
    path = tmp_path / "model.safetensors"
    save_model(build_model(cfg.model), str(path))
    alive, real = [], model_module.build_model

    def tracked(*args, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in alive), "an earlier fold model is still alive"
        model = real(*args, **kwargs)
        alive.append(weakref.ref(model))
        return model

    monkeypatch.setattr(model_module, "build_model", tracked)
    predict_module.predict_texts(cfg, [path] * 3, TEXTS)
    assert len(alive) == 3
