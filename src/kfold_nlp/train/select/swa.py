"""``swa``: the plain mean of the weights at the fold's last planned evaluations (``AveragedModel``'s)."""

from __future__ import annotations

from .base import Averaged


class Swa(Averaged):
    """The mean of the weights at the planned evaluations ``at``: the last ``evals`` of the fold."""

    chosen = "SWA of the evaluations to"
    needs_evaluations = True

    def __init__(self, model, planned=(), evals: int = 4):
        super().__init__(model, planned)
        self.at = set(planned[-evals:])

    def evaluated(self, model, step, mse, pred, epoch_end):
        if step in self.at and step != self.updates_at:
            self.averaged.update_parameters(model)
            self.updates_at = step
