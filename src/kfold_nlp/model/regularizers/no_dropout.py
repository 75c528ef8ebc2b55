"""No dropout anywhere: strong CommonLit solutions found regression fine-tuning works best without it."""

from __future__ import annotations

from .base import Regularizer, set_dropout


class NoDropout(Regularizer):
    def setup(self, model):
        set_dropout(model, 0.0)
