"""Optimizer parameter groups: no weight decay on biases and LayerNorm weights."""

from __future__ import annotations

from torch import nn

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith(NO_DECAY) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(opt_cfg, model: nn.Module):
    """``opt_cfg`` is the ``optimizer`` config group: a ``_partial_`` torch.optim class plus its hyper-parameters."""
    from hydra.utils import instantiate

    weight_decay = opt_cfg.get("weight_decay", 0.0)
    return instantiate(opt_cfg)(param_groups(model, weight_decay))
