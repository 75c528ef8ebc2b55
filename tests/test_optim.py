"""Optimizer and scheduler config groups: each YAML builds what it says, parameter groups, LLRD, penalties."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from transformers import AutoModel, DebertaV2Config, RobertaConfig

from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.model.optim import build_optimizer, build_scheduler, param_groups, weight_penalty
from kfold_nlp.model.regressor import TextRegressor, build_model, load_tokenizer

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw"]
NO_DROPOUT = ["model.head_dropout=0", "model.backbone_dropout=0"]


def config(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", ["model=tiny", *overrides])


@pytest.fixture(scope="module")
def problem():
    """A fixed tiny regression problem: 8 texts and targets, one full batch."""
    cfg = config(*NO_DROPOUT)
    texts = [f"The {w} sat on the mat and read {n} books." * (n % 3 + 1) for n, w in enumerate("abcdefgh")]
    batch = dict(load_tokenizer(cfg.model)(texts, padding=True, return_tensors="pt"))
    return batch, torch.linspace(-2.0, 1.0, 8)


def tiny_encoder(kind: str, layers: int = 3) -> nn.Module:
    """A randomly initialised RoBERTa- or DeBERTa-v2-style backbone (no download)."""
    sizes = dict(vocab_size=100, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32)
    if kind == "roberta":
        return AutoModel.from_config(RobertaConfig(**sizes))
    return AutoModel.from_config(DebertaV2Config(**sizes, relative_attention=True, position_buckets=8,
                                                 max_relative_positions=16, norm_rel_ebd="layer_norm"))


DEFINING = {  # the class and the hyper-parameters that make each YAML that optimizer and not another
    "sgd": (torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (torch.optim.Adagrad, {"lr_decay": 0.0}),
    "adadelta": (torch.optim.Adadelta, {"rho": 0.9}),
    "rmsprop": (torch.optim.RMSprop, {"alpha": 0.99, "centered": False}),
    "adam": (torch.optim.Adam, {"decoupled_weight_decay": False}),
    "adamw": (torch.optim.AdamW, {"decoupled_weight_decay": True, "weight_decay": 0.01}),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_yaml_is_that_optimizer_and_lowers_the_loss(name, problem):
    cfg = config(f"optimizer={name}", *NO_DROPOUT)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg.optimizer, model)
    cls, hyper = DEFINING[name]
    assert type(optimizer) is cls  # exactly: AdamW subclasses Adam
    assert {k: optimizer.defaults[k] for k in hyper} == hyper
    assert optimizer.defaults["lr"] == cfg.optimizer.lr
    assert "llrd" not in optimizer.defaults and "head_lr" not in optimizer.defaults
    batch, target = problem
    losses = []
    for _ in range(5):
        loss = nn.functional.mse_loss(model(**batch), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    final = nn.functional.mse_loss(model(**batch), target).item()
    assert final < 0.995 * losses[0], (name, losses, final)  # a real decrease (each default lowers it >= 1.5%)


def test_learning_rate_and_weight_decay_are_overridable():
    cfg = config("optimizer=rmsprop", "optimizer.lr=0.003", "optimizer.weight_decay=0.2")
    optimizer = build_optimizer(cfg.optimizer, build_model(cfg.model))
    assert {g["lr"] for g in optimizer.param_groups} == {0.003}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.2}


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_no_weight_decay_reaches_biases_or_layernorm(name):
    cfg = config(f"optimizer={name}", "optimizer.weight_decay=0.5", "optimizer.lr=0.1", "model.pooling=attention")
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg.optimizer, model)
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(names)  # every parameter exactly once
    no_decay = {n for n in names.values() if n.endswith("bias") or "LayerNorm" in n}
    assert len(no_decay) > 10
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert (group["weight_decay"] == 0.0) == (names[id(p)] in no_decay), names[id(p)]
    # And in effect: one step with zero gradients moves only the decayed weights (AdamW decoupled, SGD coupled).
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in model.named_parameters():
        if n in no_decay:
            assert torch.equal(p, before[n]), n
        else:
            torch.testing.assert_close(p, before[n] * (1 - 0.1 * 0.5), msg=n)


def expected_lrs(model: nn.Module, lr: float, head_lr: float, llrd: float, n_layers: int) -> dict[str, float]:
    """By name: head, pooling and pooler head_lr, encoder.layer.i lr * llrd**(top - i), the rest of the backbone
    the least."""
    out = {}
    for name, _ in model.named_parameters():
        if not name.startswith("backbone.") or name.startswith("backbone.pooler."):
            out[name] = head_lr
        elif name.startswith("backbone.encoder.layer."):
            out[name] = lr * llrd ** (n_layers - 1 - int(name.split(".")[3]))
        else:  # embeddings; DeBERTa's encoder.rel_embeddings and encoder.LayerNorm go with them
            out[name] = lr * llrd**n_layers
    return out


@pytest.mark.parametrize("kind", ["bert", "roberta", "deberta-v2"])
def test_llrd_gives_a_geometric_sequence_down_the_layers(kind):
    if kind == "bert":
        cfg = config("model.pooling=attention", "model.config_overrides.num_hidden_layers=3")
        model = build_model(cfg.model)
    else:
        model = TextRegressor(tiny_encoder(kind), pooling="attention")
    cfg = config("optimizer=adamw", "optimizer.lr=1e-3", "optimizer.llrd=0.5", "optimizer.head_lr=0.02")
    optimizer = build_optimizer(cfg.optimizer, model)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    expected = expected_lrs(model, 1e-3, 0.02, 0.5, n_layers=3)
    assert {n: lr_of[id(p)] for n, p in model.named_parameters()} == pytest.approx(expected, rel=1e-12)
    if kind == "deberta-v2":
        assert {"backbone.encoder.rel_embeddings.weight", "backbone.encoder.LayerNorm.weight"} <= set(expected)
    # Top layer first: the logged lr (get_last_lr()[0]) is the base schedule.
    assert optimizer.param_groups[0]["name"] == "encoder.layer.2" and optimizer.param_groups[0]["lr"] == 1e-3
    assert sorted({round(g["lr"], 12) for g in optimizer.param_groups}) == [1.25e-4, 2.5e-4, 5e-4, 1e-3, 0.02]


def test_llrd_off_and_head_lr_null_give_one_learning_rate():
    cfg = config("optimizer=adamw", "optimizer.lr=3e-4")
    optimizer = build_optimizer(cfg.optimizer, build_model(cfg.model))
    assert {g["lr"] for g in optimizer.param_groups} == {3e-4}


class NoLayers(nn.Module):
    config = type("Config", (), {"hidden_size": 4})()

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)


def test_llrd_without_a_layer_list_is_refused():
    model = TextRegressor(NoLayers())
    assert len(param_groups(model, lr=1e-3, weight_decay=0.0)) == 4  # llrd off: fine
    with pytest.raises(ValueError, match="llrd"):
        param_groups(model, lr=1e-3, weight_decay=0.0, llrd=0.9)


@pytest.mark.parametrize("name,warmup,expected", [
    ("linear", 0.2, [0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0]),
    ("cosine", 2, [0, 0.5] + [0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(9)]),
    ("constant", 0.2, [0, 0.5] + [1] * 9),
    ("constant", 0, [1] * 11),
])
def test_schedules_warm_up_by_ratio_or_steps_then_follow_their_shape(name, warmup, expected):
    cfg = config(f"scheduler={name}", f"scheduler.warmup={warmup}")
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps=10)
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert lrs == pytest.approx([0.1 * e for e in expected], abs=1e-12)


def test_penalties_are_l1_and_half_l2_of_the_decayed_weights_only():
    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-2.0)
    weight = model[0].weight  # the only decayed parameter: 6 entries of -2
    assert weight_penalty(model, None, 1.0) is None and weight_penalty(model, "l2", 0.0) is None
    assert weight_penalty(model, "l1", 0.1)().item() == pytest.approx(0.1 * 12)
    l2 = weight_penalty(model, "l2", 0.1)()
    assert l2.item() == pytest.approx(0.05 * 24)
    l2.backward()
    torch.testing.assert_close(weight.grad, 0.1 * weight.detach())  # the gradient of classic weight decay
    assert model[0].bias.grad is None and model[1].weight.grad is None
    with pytest.raises(ValueError, match="penalty"):
        weight_penalty(model, "l3", 0.1)
