"""The one formula of every random stream a fold draws, so that a single process reproduces a run whatever
launched it."""

from __future__ import annotations


def stream_seed(seed: int, fold: int, rank: int = 0, step: int = 0) -> int:
    """Fold ``fold``'s model and data order (``rank`` 0, step 0: ``seed + fold``), another DDP rank's dropout masks,
    and a rank's fresh stream when it resumes at ``step``."""
    return seed + fold + 7919 * rank + 104729 * step
