"""``ema``: an exponential moving average of the weights over the optimizer steps (``AveragedModel``'s)."""

from __future__ import annotations

from torch.optim.swa_utils import get_ema_multi_avg_fn

from .base import Averaged


class Ema(Averaged):
    """theta_t = d * theta_(t-1) + (1 - d) * w_t over the optimizer steps, starting from the first step's weights."""

    chosen = "EMA of the steps to"

    def __init__(self, model, planned=(), decay: float = 0.98):
        super().__init__(model, planned, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self._step = 0

    def stepped(self, model):
        self.averaged.update_parameters(model)
        self._step += 1
        self.updates_at = self._step

    def restore(self, tensors, meta, pred):
        super().restore(tensors, meta, pred)
        self._step = meta["updates_at"]
