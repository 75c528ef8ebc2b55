"""The tracker interface: a run per fold (and one per CV summary) that logs metrics, a summary and tables.

The base classes track nothing (``logger=none``, the ranks other than 0 under DDP); ``make`` builds the tracker the
config's ``logger`` names, so the runner never imports a tracking library itself.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

WANDB_TARGET = "kfold_nlp.track.wandb.WandbTracker"


class Run:
    """One tracked run. ``id`` is what a fold continuing from its snapshot passes back to ``Tracker.start``."""

    id: str | None = None

    def log(self, metrics: dict, step: int | None = None) -> None:
        """One history row (the metrics of ``step``)."""

    def replay(self, rows: list[tuple[int, dict]]) -> None:
        """History a continued run may have lost (a killed process's tracker may not have written it): ``(step,
        metrics)`` rows logged again before anything newer; a tracker that kept them skips them."""
        for step, metrics in rows:
            self.log(metrics, step)

    def update_summary(self, values: dict) -> None:
        """Update the run's summary: its final values, one per key."""

    def table(self, key: str, frame) -> None:
        """A whole table (a ``pandas.DataFrame``): the OOF predictions, an ensemble's members."""

    def finish(self, failed: bool = False) -> None:
        """Close the run; ``failed``: the block it tracked raised."""


class Tracker:
    """Starts runs; this base class is the null tracker (``logger=none``)."""

    params: dict = {}  # each YAML key's type (config.rules), checked by the schema

    def check(self) -> None:
        """Refuse (``ConfigError``) a tracker that cannot log, before the run folder is filled."""

    def start(self, *, run_dir: Path, name: str, group: str, job_type: str, config: dict, tags=(),
              run_id: str | None = None) -> Run:
        """A run ``name`` in ``group``; ``run_id`` (a ``Run.id`` saved earlier) continues that run."""
        return Run()


def target(logger_cfg) -> str:
    """The tracker class's path; a run folder saved before trackers were chosen by config used W&B."""
    return logger_cfg.get("_target_") or WANDB_TARGET


def tracker_class(logger_cfg) -> type:
    from hydra.utils import get_class

    return get_class(target(logger_cfg))


def make(logger_cfg) -> Tracker:
    """The tracker ``logger_cfg`` names; under DDP only rank 0 tracks."""
    if logger_cfg is None or int(os.environ.get("RANK", 0)) != 0:
        return Tracker()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.merge({"_target_": target(logger_cfg)}, logger_cfg), _convert_="all")


@contextmanager
def tracked(tracker: Tracker, **start):
    """``tracker.start(**start)``, finished on every path out: as failed when the block raised."""
    run = tracker.start(**start)
    try:
        yield run
    except BaseException:
        run.finish(failed=True)
        raise
    run.finish()


def group_name(cfg, job: dict) -> str:
    """Experiment name for a single run; in a Hydra sweep one group per job, so no two jobs share runs."""
    if job.get("sweep_id") is not None:
        return f"{cfg.name}-{job['sweep_id']}-job{job['num']}"
    return str(cfg.name)
