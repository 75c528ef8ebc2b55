"""``best`` and ``best_epoch``: the weights of the lowest validation MSE, of every evaluation or of the epochs'
last ones only (fewer chances to be lucky).

Both choose on the very rows the CV then scores: the CV is the minimum of a noisy curve and flatters the model by an
amount only a holdout measures (``cv.holdout``).
"""

from __future__ import annotations

from .base import Policy, copy_state


class Best(Policy):
    """The weights of the lowest validation MSE so far, over every evaluation."""

    chosen = "best at step"
    needs_evaluations = True
    reads_scores = True
    epoch_end_only = False

    def __init__(self, model=None, planned=()):
        super().__init__(model, planned)
        self.weights = None

    def evaluated(self, model, step, mse, pred, epoch_end):
        if (epoch_end or not self.epoch_end_only) and mse < self.mse:
            self.mse, self.step, self.pred, self.weights = mse, step, pred, copy_state(model)

    def final(self, model):
        return self.weights if self.weights is not None else copy_state(model)

    def state(self):
        return self.weights, {"mse": self.mse, "step": self.step}

    def restore(self, tensors, meta, pred):
        super().restore(tensors, meta, pred)
        self.weights = tensors


class BestEpoch(Best):
    """The weights of the lowest validation MSE among the epochs' last evaluations."""

    chosen = "best epoch end at step"
    epoch_end_only = True
