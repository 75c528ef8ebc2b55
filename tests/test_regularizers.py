"""Property tests of the regularizers on the tiny random BERT (each one checks behaviour that a bug would break)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import kfold_nlp  # noqa: F401  (registers the ${minilm_path:} resolver)
from conftest import TEXTS
from kfold_nlp.model.regressor import build_model
from kfold_nlp.model.regularizers import Regularizer, set_dropout
from kfold_nlp.model.regularizers.base import model_inputs
from kfold_nlp.model.regularizers.mixout import MixLinear, Mixout
from kfold_nlp.model.regularizers.mixup import Mixup
from kfold_nlp.model.regularizers.msd import MultiSampleDropout, MultiSampleDropoutLayer
from kfold_nlp.model.regularizers.no_dropout import NoDropout
from kfold_nlp.model.regularizers.rdrop import RDrop, consistency
from kfold_nlp.model.tasks import GaussianNLL, Task

ROOT = Path(__file__).resolve().parents[1]
MSE = Task().loss  # the task's loss: (pred, batch) -> the MSE on batch["target"]


@pytest.fixture
def model(model_cfg):
    torch.manual_seed(0)
    return build_model(model_cfg).train()


def dropout_ps(model):
    return [m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def plain_output(model, batch):
    """The head on the un-dropped pooled features, computed by hand."""
    inputs = model_inputs(batch)
    states = model.backbone(**inputs).last_hidden_state
    return model.head(model.pool(states, inputs["attention_mask"])).squeeze(-1)


# ---------------------------------------------------------------- configs


REGULARIZER_YAMLS = sorted((ROOT / "conf" / "regularizer").glob("*.yaml"))  # the next one added is tested too


def test_the_regularizer_presets_are_found():
    assert {"baseline", "no_dropout", "msd", "mixout", "rdrop", "mixup"} <= {p.stem for p in REGULARIZER_YAMLS}


@pytest.mark.parametrize("path", REGULARIZER_YAMLS, ids=lambda p: p.stem)
def test_each_yaml_instantiates_its_regularizer_with_the_class_defaults(path):
    cfg = OmegaConf.load(path)
    values = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    reg = instantiate(cfg)
    assert isinstance(reg, Regularizer)
    assert {k: getattr(reg, k) for k in values} == values
    assert {k: getattr(type(reg)(), k) for k in values} == values  # the YAML states the defaults of direct use


# ---------------------------------------------------------------- R-Drop


def test_rdrop_consistency_zero_iff_equal():
    p1 = torch.randn(6)
    assert consistency(p1, p1.clone()) == 0
    assert consistency(p1, p1 + 0.1) > 0
    # a batch x 1 regression output must not fall into the (always zero) softmax-KL branch
    assert consistency(p1[:, None], p1[:, None] + 0.1) == pytest.approx(0.01)


def test_rdrop_consistency_gradient_pulls_together():
    p1, p2 = torch.randn(8, requires_grad=True), torch.randn(8)
    (grad,) = torch.autograd.grad(consistency(p1, p2), p1)
    assert torch.equal(torch.sign(-grad), torch.sign(p2 - p1.detach()))
    stepped = p1.detach() - 0.1 * grad
    assert ((stepped - p2).abs() < (p1.detach() - p2).abs()).all()


def test_rdrop_classification_consistency_is_symmetric_kl():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    pa, pb = a.softmax(-1), b.softmax(-1)
    kl_ab = (pa * (pa.log() - pb.log())).sum(-1).mean()
    kl_ba = (pb * (pb.log() - pa.log())).sum(-1).mean()
    assert consistency(a, b) == pytest.approx(0.5 * (kl_ab + kl_ba).item(), rel=1e-5)
    assert consistency(a, a.clone()).abs() < 1e-7
    assert consistency(a, b) > 0


def test_rdrop_without_dropout_equals_two_forwards_and_mse(model, batch):
    set_dropout(model, 0.0)
    one = RDrop(alpha=1.0).loss(model, batch, MSE).loss
    two = RDrop(alpha=1.0, single_forward=False).loss(model, batch, MSE).loss
    plain = F.mse_loss(model(**model_inputs(batch)), batch["target"])
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one, plain, atol=1e-5, rtol=1e-5)


def test_rdrop_loss_is_the_papers_form_halved(model, batch):
    """``(mse(p1, y) + mse(p2, y) + alpha * mean((p1 - p2)^2)) / 2``, written out by hand on the same masks."""
    p1, p2 = RDrop().predictions(model, batch)
    assert p1.shape == p2.shape == batch["target"].shape
    assert not torch.allclose(p1, p2)
    y = batch["target"]
    for alpha in (0.0, 2.0):
        torch.manual_seed(5)
        parts = RDrop(alpha=alpha).loss(model, batch, MSE)
        torch.manual_seed(5)
        p1, p2 = RDrop().predictions(model, batch)
        by_hand = 0.5 * (((p1 - y) ** 2).mean() + ((p2 - y) ** 2).mean() + alpha * ((p1 - p2) ** 2).mean())
        torch.testing.assert_close(parts.loss, by_hand)
        torch.testing.assert_close(parts.terms["rdrop_consistency"], ((p1 - p2) ** 2).mean())
        torch.testing.assert_close(parts.pred, torch.stack([p1, p2]))


# ---------------------------------------------------------------- Multi-Sample Dropout


def test_msd_reductions_use_the_same_masks(model, batch):
    MultiSampleDropout(k=4).setup(model)
    torch.manual_seed(1)
    pred = model(**model_inputs(batch))
    assert pred.shape == (4, len(TEXTS))
    target = batch["target"]
    torch.manual_seed(1)
    by_loss = MultiSampleDropout(k=4, reduce="loss").loss(model, batch, MSE).loss
    torch.manual_seed(1)
    by_pred = MultiSampleDropout(k=4, reduce="prediction").loss(model, batch, MSE).loss
    torch.testing.assert_close(by_loss, torch.stack([F.mse_loss(p, target) for p in pred]).mean())
    torch.testing.assert_close(by_pred, F.mse_loss(pred.mean(0), target))
    assert by_loss > by_pred  # Jensen: the two reductions really differ when the samples do


def test_msd_eval_and_p0_are_the_plain_head(model, batch):
    MultiSampleDropout(k=8, p=0.5).setup(model)
    model.eval()
    torch.testing.assert_close(model(**model_inputs(batch)), plain_output(model, batch))

    MultiSampleDropout(k=8, p=0.0).setup(model)
    set_dropout(model.backbone, 0.0)
    model.train()
    out = model(**model_inputs(batch))
    assert out.shape == batch["target"].shape
    torch.testing.assert_close(out, plain_output(model, batch))
    torch.testing.assert_close(MultiSampleDropout(k=8, p=0.0).loss(model, batch, MSE).loss,
                               F.mse_loss(out, batch["target"]))


def test_msd_masks_are_independent():
    layer = MultiSampleDropoutLayer(k=8, p=0.5).train()
    out = layer(torch.ones(4, 64))
    assert out.shape == (8, 4, 64)
    masks = out != 0
    assert all(not torch.equal(masks[i], masks[j]) for i, j in itertools.combinations(range(8), 2))
    assert torch.equal(out[masks], torch.full_like(out[masks], 2.0))  # inverted-dropout scaling 1 / (1 - p)
    assert 0.4 < masks.float().mean() < 0.6


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"p": 1.0}, {"p": -0.1}, {"reduce": "mean"}])
def test_msd_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MultiSampleDropout(**kwargs)


# ---------------------------------------------------------------- Mixout


def moved_layer(p: float, dtype=torch.float32) -> MixLinear:
    """A MixLinear whose weight has moved away from its pretrained target."""
    torch.manual_seed(0)
    layer = MixLinear.from_linear(nn.Linear(6, 4, dtype=dtype), p).train()
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    return layer


def test_mixout_p0_and_eval_are_plain_linear():
    x = torch.randn(3, 6)
    layer = moved_layer(0.0)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    layer = moved_layer(0.5).eval()
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def test_mixout_is_unbiased_with_one_mask_per_input_unit():
    layer, p = moved_layer(0.3), 0.3
    w, u = layer.weight.detach(), layer.target
    with torch.no_grad():
        draws = torch.stack([layer.mixed_weight() for _ in range(2000)])
    torch.testing.assert_close(draws.mean(0), w, atol=0.08, rtol=0)
    # every input column is either the pretrained one or the rescaled fine-tuned one, for all rows at once
    kept = torch.isclose(draws, u + (w - u) / (1 - p))
    assert (kept | torch.isclose(draws, u)).all()
    assert (kept == kept[:, :1, :]).all()
    assert 0.6 < kept[:, 0].float().mean() < 0.8  # keep probability 1 - p


def test_mixout_at_the_pretrained_weight_is_plain_whatever_the_mask():
    layer = MixLinear.from_linear(nn.Linear(6, 4), 0.7).train()
    x = torch.randn(3, 6)
    for _ in range(5):
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def test_mixout_gradient_is_exact():
    layer = moved_layer(0.5, torch.float64)

    def forward(x, w, b):
        with torch.random.fork_rng():
            torch.manual_seed(3)  # the same mask at every evaluation
            return torch.func.functional_call(layer, {"weight": w, "bias": b, "target": layer.target}, (x,))

    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    assert not torch.allclose(forward(x, w, b), F.linear(x, w, b))  # the mask really does something
    assert torch.autograd.gradcheck(forward, (x, w, b))


def test_mixout_state_dict_is_a_plain_models(model, model_cfg):
    plain_keys = set(model.state_dict())
    Mixout(p=0.1).setup(model)
    assert set(model.state_dict()) == plain_keys
    assert not any(k.endswith("target") for k in model.state_dict())
    fresh = build_model(model_cfg, pretrained=False)
    fresh.load_state_dict(model.state_dict())  # strict
    nn.Linear(6, 4).load_state_dict(moved_layer(0.1).state_dict())
    model.to(torch.float64)
    assert all(m.target.dtype == torch.float64 for m in model.modules() if isinstance(m, MixLinear))


def test_mixout_setup(model, batch):
    n_linear = sum(type(m) is nn.Linear for m in model.backbone.modules())
    weights = {n: m.weight.detach().clone() for n, m in model.backbone.named_modules() if type(m) is nn.Linear}
    Mixout(p=0.1).setup(model)
    mixed = {n: m for n, m in model.backbone.named_modules() if isinstance(m, MixLinear)}
    assert len(mixed) == n_linear > 0
    assert all(torch.equal(m.target, weights[n]) and torch.equal(m.weight, weights[n]) for n, m in mixed.items())
    assert all(p == 0 for p in dropout_ps(model))
    assert type(model.head) is nn.Linear
    assert not any(isinstance(m, MixLinear) for m in model.pool.modules())
    # a parameter of the model is what the optimizer will update: the mixed layer's weight must be it
    assert {id(p) for p in model.parameters()} >= {id(m.weight) for m in mixed.values()}


def test_mixout_layer_regex(model):
    Mixout(p=0.1, layers=r"layer\.1\.").setup(model)
    mixed = [n for n, m in model.backbone.named_modules() if isinstance(m, MixLinear)]
    assert mixed and all(".layer.1." in f".{n}" for n in mixed)
    with pytest.raises(ValueError):
        Mixout(layers="no_such_layer").setup(model)
    with pytest.raises(ValueError):
        Mixout(p=1.0)


# ---------------------------------------------------------------- no dropout / baseline


def test_no_dropout_is_deterministic_in_train_mode(model, batch):
    NoDropout().setup(model)
    assert dropout_ps(model) and all(p == 0 for p in dropout_ps(model))
    torch.testing.assert_close(model(**model_inputs(batch)), model(**model_inputs(batch)), atol=0, rtol=0)


def test_baseline_dropout_is_active_in_train_mode(model, batch):
    Regularizer().setup(model)
    assert not torch.allclose(model(**model_inputs(batch)), model(**model_inputs(batch)))


# ---------------------------------------------------------------- Mixup


def test_mixup_alpha_0_is_exactly_the_baseline_loss(model, batch):
    """Dropout on, same seed: nothing is drawn for the mix, so the loss and the masks are the baseline's."""
    torch.manual_seed(4)
    base = Regularizer().loss(model, batch, MSE)
    mixup = Mixup(alpha=0.0)
    mixup.setup(model)
    after_base = torch.get_rng_state()
    torch.manual_seed(4)
    parts = mixup.loss(model, batch, MSE)
    torch.testing.assert_close(parts.loss, base.loss, atol=0, rtol=0)
    torch.testing.assert_close(parts.pred, base.pred, atol=0, rtol=0)
    assert torch.equal(torch.get_rng_state(), after_base)


@pytest.mark.parametrize("task", [Task(), GaussianNLL(min_se=0.25)], ids=["single", "gaussian"])
def test_mixup_loss_is_the_closed_form_mixed_loss(model, batch, task):
    """``loss(head(lam f + (1 - lam) f[perm]), lam y + (1 - lam) y[perm])`` with every label column mixed, for the
    ``lam`` and ``perm`` drawn from the same seed; the logged predictions are the unmixed rows'."""
    set_dropout(model, 0.0)
    mixup = Mixup(alpha=0.4)
    mixup.setup(model)
    torch.manual_seed(2)  # a draw that really mixes: lam 0.54, no row paired with itself
    lam, perm = mixup.draw(len(TEXTS), "cpu")  # the loss's first draw (no dropout: nothing else is random)
    torch.manual_seed(2)
    parts = mixup.loss(model, batch, task.loss)
    assert 0.1 < lam < 0.9 and not torch.equal(perm, torch.arange(len(TEXTS)))
    f = model.features(**model_inputs(batch))
    mixed_pred = model.head(lam * f + (1 - lam) * f[perm]).squeeze(-1)
    y = lam * batch["target"] + (1 - lam) * batch["target"][perm]
    se = lam * batch["standard_error"] + (1 - lam) * batch["standard_error"][perm]
    if isinstance(task, GaussianNLL):
        by_hand = ((mixed_pred - y) ** 2 / (2 * se.clamp(min=0.25) ** 2)).mean()
    else:
        by_hand = ((mixed_pred - y) ** 2).mean()
    torch.testing.assert_close(parts.loss, by_hand)
    torch.testing.assert_close(parts.pred, model.head(f).squeeze(-1))
    assert parts.terms["mixup_lambda"].item() == pytest.approx(lam)


def test_mixup_lambda_is_beta_and_eval_and_checkpoints_are_the_plain_models(model, model_cfg, batch):
    torch.manual_seed(0)
    lams = torch.tensor([Mixup(alpha=0.4).draw(4, "cpu")[0] for _ in range(4000)])
    assert lams.mean() == pytest.approx(0.5, abs=0.02)
    assert lams.var() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), abs=0.01)  # Beta(a, a): 1 / (4 (2a + 1))
    plain_keys = set(model.state_dict())
    Mixup(alpha=0.4).setup(model)
    assert set(model.state_dict()) == plain_keys
    model.eval()
    torch.testing.assert_close(model(**model_inputs(batch)), plain_output(model, batch))


@pytest.mark.parametrize("alpha", [-1, 1e-30, 0.001, 101, 1e39, float("inf"), float("nan")])
def test_mixup_rejects_an_alpha_float32_beta_sampling_cannot_draw_from(alpha):
    with pytest.raises(ValueError, match=r"^regularizer.alpha=\S+: must be 0 or a number >= 0.01 and <= 100$"):
        Mixup(alpha=alpha)


@pytest.mark.parametrize("alpha", [0, 0.01, 0.4, 100])
def test_mixup_accepts_alpha_0_and_the_sampling_range(alpha):
    lam, _ = Mixup(alpha=alpha).draw(4, "cpu") if alpha else (0.5, None)
    assert 0 <= lam <= 1
