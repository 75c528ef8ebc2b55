"""Regularizers for fine-tuning: each one is a module here plus a YAML in ``conf/regularizer/``.

A regularizer may change the model once (``setup``) and decides how a training batch becomes a loss (``loss``).
Evaluation never goes through it: the model in eval mode is always the plain deterministic network.
"""

from .base import Regularizer, set_dropout

__all__ = ["Regularizer", "set_dropout"]
