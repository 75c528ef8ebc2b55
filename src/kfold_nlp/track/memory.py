"""An in-memory tracker (``logger=memory``): every run kept in ``RUNS``, for tests that check what was logged."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.rules import List
from .base import Run, Tracker


@dataclass
class MemoryRun(Run):
    name: str
    group: str
    job_type: str
    config: dict
    tags: list
    id: str | None = None
    history: list = field(default_factory=list)  # one dict per ``log`` call, with its ``_step``
    summary: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    state: str = "running"

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.history.append({"_step": step, **metrics})

    def update_summary(self, values: dict) -> None:
        self.summary.update(values)

    def table(self, key: str, frame) -> None:
        self.tables[key] = frame.copy()

    def finish(self, failed: bool = False) -> None:
        self.state = "failed" if failed else "finished"


RUNS: list[MemoryRun] = []  # every run started in this process, in order (a test clears it)


class MemoryTracker(Tracker):
    params = {"tags": List}

    def __init__(self, tags=()):
        self.tags = list(tags)

    def start(self, *, run_dir, name, group, job_type, config, tags=(), run_id=None) -> Run:
        """``run_id`` continues that run (its history grows) if this process started it."""
        for run in RUNS:
            if run_id is not None and run.id == run_id:
                run.state = "running"
                return run
        run = MemoryRun(id=run_id or f"{name}-{len(RUNS)}", name=name, group=group, job_type=job_type,
                        config=config, tags=[*self.tags, *tags])
        RUNS.append(run)
        return run
