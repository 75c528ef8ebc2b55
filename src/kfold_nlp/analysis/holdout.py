"""What a run's holdout says of its selection policies now lives in ``kfold_nlp.metrics`` (collecting a run computes
it, the analysis reads it): ``optimism`` stays importable here for the tests written against this module."""

from __future__ import annotations

from ..metrics import optimism  # noqa: F401
