"""Cheaper dropout masks (``trainer.fast_dropout``) keep dropout's law: each element dropped with probability p,
independently, the kept ones scaled so the expectation is unchanged, drawn from torch's seeded stream; attention
with them is SDPA's math with those masks, and SDPA itself wherever no mask is drawn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

from kfold_nlp.model.regressor import TextRegressor
from kfold_nlp.model.regularizers import set_dropout
from kfold_nlp.train import fast_dropout
from kfold_nlp.train.fast_dropout import FastDropout, drop, drop_threshold, keep_mask
from test_trainer import config, fit_fold_of

N = 1 << 22  # mask elements per law check: a 6-sigma band is about +-0.0009 around p = 0.1


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_each_element_is_dropped_with_probability_p_independently_of_its_neighbours(p):
    torch.manual_seed(0)
    dropped = ~keep_mask((N,), p)
    q = drop_threshold(p) / 2**16
    assert abs(q - p) <= 2**-17
    sigma = math.sqrt(q * (1 - q) / N)
    assert abs(dropped.float().mean().item() - q) < 6 * sigma
    # neighbours share a 64-bit word four at a time: pairs at every offset within and across words are independent
    for offset in (1, 2, 3, 4, 5):
        both = (dropped[:-offset] & dropped[offset:]).float().mean().item()
        assert abs(both - q * q) < 6 * math.sqrt(q * q * (1 - q * q) / N), offset


def test_kept_values_are_scaled_by_the_inverse_keep_probability_and_the_gradient_is_the_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 300, requires_grad=True)
    y = drop(x, 0.1)
    kept = y != 0
    scale = 2**16 / (2**16 - drop_threshold(0.1))
    torch.testing.assert_close(y[kept], x[kept] * scale, rtol=0, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)
    ones = torch.ones(N)
    assert abs(drop(ones, 0.1).mean().item() - 1.0) < 6 * math.sqrt(0.1 / 0.9 / N)  # the expectation is kept


def test_masks_come_from_torchs_seeded_stream_and_vanish_where_dropout_does():
    x = torch.randn(8, 50)
    state = torch.get_rng_state()
    first = drop(x, 0.2)
    torch.set_rng_state(state)  # what a snapshot restores
    assert torch.equal(drop(x, 0.2), first)
    assert not torch.equal(drop(x, 0.2), first)
    assert drop(x, 0.0) is x and drop(x, 0.5, training=False) is x
    assert torch.equal(drop(x, 1.0), torch.zeros_like(x))


def tiny_bert(dropout: float = 0.1) -> TextRegressor:
    torch.manual_seed(0)
    return TextRegressor(BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64,
                                              hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)))


def batch():
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, 7:] = 0
    mask[2, 10:] = 0
    return ids, mask


def test_apply_converts_every_dropout_and_changes_nothing_without_masks():
    plain, fast = tiny_bert(), tiny_bert()
    n_dropouts = sum(type(m) is nn.Dropout for m in plain.modules())
    assert fast_dropout.apply(fast) == n_dropouts and fast_dropout.uses_fast_attention(fast)
    assert sum(isinstance(m, FastDropout) for m in fast.modules()) == n_dropouts
    assert set_dropout(fast, 0.1) == n_dropouts  # whatever walks dropout modules still finds them
    assert fast.state_dict().keys() == plain.state_dict().keys()
    ids, mask = batch()
    plain.eval(), fast.eval()
    assert torch.equal(fast(ids, mask), plain(ids, mask))  # evaluation: sdpa itself
    plain.train(), fast.train()
    set_dropout(plain, 0.0), set_dropout(fast, 0.0)
    assert torch.equal(fast(ids, mask), plain(ids, mask))  # no dropout: sdpa itself


def test_attention_with_masks_is_sdpas_math_with_those_masks():
    torch.manual_seed(0)
    module = nn.Module()
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    allowed = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    allowed[0, ..., 6:] = False  # the first row's last 3 keys are padding
    torch.manual_seed(5)
    out, _ = fast_dropout.attention(module, q, k, v, allowed, dropout=0.2, scaling=8**-0.5)
    torch.manual_seed(5)
    keep = keep_mask((2, 4, 9, 9), 0.2)
    scores = (q @ k.transpose(-2, -1) * 8**-0.5).masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(-1) * keep / (1 - drop_threshold(0.2) / 2**16)
    torch.testing.assert_close(out, (probs @ v).transpose(1, 2))
    v2 = v.clone()
    v2[0, :, 6:] = 100.0  # padded keys' values never reach an output
    torch.manual_seed(5)
    torch.testing.assert_close(fast_dropout.attention(module, q, k, v2, allowed, dropout=0.2, scaling=8**-0.5)[0], out)
    sdpa, _ = fast_dropout.attention(module, q, k, v, allowed, dropout=0.0, scaling=8**-0.5)
    reference = nn.functional.scaled_dot_product_attention(q, k, v, allowed, scale=8**-0.5).transpose(1, 2)
    torch.testing.assert_close(sdpa, reference)


def test_mpnet_keeps_its_own_attention_whose_dropout_module_draws_the_cheaper_masks():
    torch.manual_seed(0)
    model = TextRegressor(MPNetModel(MPNetConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64)))
    assert fast_dropout.apply(model) > 0 and not fast_dropout.uses_fast_attention(model)
    assert all(isinstance(layer.attention.attn.dropout, FastDropout) for layer in model.backbone.encoder.layer)
    ids, mask = batch()
    model.train()
    assert torch.isfinite(model(ids, mask)).all()


def test_the_trainer_draws_its_own_masks_only_where_dropout_is_on():
    """Without dropout the switch changes nothing, bit for bit; with it the masks (and so the run) are its own."""
    off = fit_fold_of(12, 2, "trainer.fast_dropout=false")
    on = fit_fold_of(12, 2, "trainer.fast_dropout=true")
    np.testing.assert_array_equal(on.val_pred, off.val_pred)
    dropout = ("model.head_dropout=0.1", "model.backbone_dropout=0.1")
    off = fit_fold_of(12, 2, *dropout, "trainer.fast_dropout=false")
    on = fit_fold_of(12, 2, *dropout, "trainer.fast_dropout=true")
    assert on.steps == off.steps and not np.array_equal(on.val_pred, off.val_pred)
    assert np.isfinite(on.val_pred).all()


def test_the_trainer_converts_the_model_only_when_asked(monkeypatch):
    applied = []
    monkeypatch.setattr(fast_dropout, "apply", lambda model: applied.append(model) or 0)
    fit_fold_of(4, 2, "trainer.fast_dropout=false")
    assert applied == []
    fit_fold_of(4, 2, "trainer.fast_dropout=true")
    assert len(applied) == 1
    assert config().trainer.fast_dropout is True  # the shipped default
