"""How the fold models' predictions become one (``cv.bagging``): the choices and the combination, for the submission,
the holdout, ``make predict`` and the exported bundles alike."""

from __future__ import annotations

import numpy as np

BAGGING = ("mean", "median")


def bag(preds: np.ndarray, how: str) -> np.ndarray:
    """Combine the fold models' predictions (folds x rows) into one row of predictions."""
    if how not in BAGGING:
        raise ValueError(f"cv.bagging must be one of {', '.join(BAGGING)}, got {how!r}")
    return np.mean(preds, 0) if how == "mean" else np.median(preds, 0)
