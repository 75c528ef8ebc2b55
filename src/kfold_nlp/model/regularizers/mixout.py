"""Mixout (Lee et al. 2020, arXiv:1909.11299): dropout towards the pretrained weights instead of towards zero.

Each training forward, every input unit of a linear layer keeps its fine-tuned weight column ``w`` with
probability ``1 - p`` or is swapped for the pretrained column ``u``; rescaling keeps the expected weight at ``w``:
``W = ((1 - m) * u + m * w - p * u) / (1 - p)``, ``m ~ Bernoulli(1 - p)`` of shape ``1 x in_features``.
This pulls fine-tuning towards ``u`` (an L2 penalty to ``u`` in expectation) and so stabilises it on small data.
Gradients go through plain autograd, so they are exact: ``dW/dw = m / (1 - p)`` (the reference implementation's
hand-written backward omits the ``1 / (1 - p)``).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ...config.rules import PROBABILITY, Str
from ...errors import ConfigError
from .base import Regularizer, set_dropout


class MixLinear(nn.Linear):
    """``nn.Linear`` that mixes its weight with a pretrained ``target`` in train mode; plain linear otherwise.

    ``target`` is a non-persistent buffer: it follows ``.to()``/``.half()`` but stays out of ``state_dict()``, so
    checkpoints have exactly a plain model's keys (and load into plain ``nn.Linear`` layers).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.0,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.p = p
        self.register_buffer("target", self.weight.detach().clone(), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, p: float) -> MixLinear:
        """Wrap an existing layer: shares its parameters and takes its current weight as the pretrained target."""
        mixed = cls(linear.in_features, linear.out_features, linear.bias is not None, p, device="meta")
        mixed.weight = linear.weight
        mixed.bias = linear.bias
        mixed.target = linear.weight.detach().clone()
        return mixed

    def mixed_weight(self) -> torch.Tensor:
        """The weight of one training forward, with a fresh mask (one per input unit, shared by all rows)."""
        w, u = self.weight, self.target
        keep = torch.empty(1, self.in_features, device=w.device, dtype=w.dtype).bernoulli_(1 - self.p)
        # ((1 - m) u + m w - p u) / (1 - p)  ==  u + m (w - u) / (1 - p)
        return torch.addcmul(u, keep / (1 - self.p), w - u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return super().forward(x)
        return F.linear(x, self.mixed_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


class Mixout(Regularizer):
    """Turn the backbone's linear layers into ``MixLinear`` (targets = the loaded weights) and all dropout off.

    ``layers`` is ``"all"`` or a regex searched in module names relative to the backbone (e.g. ``"encoder"`` or
    ``"layer\\.(4|5)\\."``). The new head and pooler have no pretrained weights to mix towards and stay plain.
    """

    params = {"p": PROBABILITY, "layers": Str}
    acts_on_backbone_weights = True

    def __init__(self, p: float = 0.1, layers: str = "all"):
        self.check_params(p=p, layers=layers)
        self.p, self.layers = p, layers
        try:
            self.pattern = None if layers == "all" else re.compile(layers)
        except re.error as err:
            raise ConfigError(f"regularizer.layers={layers}: not a regular expression ({err})") from None

    def setup(self, model: nn.Module) -> None:
        names = [name for name, module in model.backbone.named_modules()
                 if type(module) is nn.Linear and (self.pattern is None or self.pattern.search(name))]
        if not names:
            raise ConfigError(f"regularizer.layers={self.layers}: matches no nn.Linear in the backbone")
        for name in names:
            model.backbone.set_submodule(name, MixLinear.from_linear(model.backbone.get_submodule(name), self.p))
        set_dropout(model, 0.0)
