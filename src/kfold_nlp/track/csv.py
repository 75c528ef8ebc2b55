"""CSV files (``logger=csv``): each run in ``<run folder>/csv/<run name>/``, readable without any tracking library.

``metrics.csv`` (one row per logged value: step, metric, value), ``summary.json``, ``run.json`` (name, group, job
type, tags, state, config) and one ``<key>.csv`` per table. A retried run replaces its folder; a continued one
(``run_id``: a fold resumed from its snapshot) appends to it.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from ..config.rules import List
from ..files import read_json, write_csv, write_json
from .base import Run, Tracker


class CsvRun(Run):
    def __init__(self, folder: Path, info: dict):
        self.folder, self.info, self.id = folder, info, info["id"]
        path = folder / "summary.json"
        self.values = read_json(path) if path.exists() else {}
        write_json(info, folder / "run.json")

    def log(self, metrics: dict, step: int | None = None) -> None:
        path = self.folder / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:  # appended and closed each time: a killed run keeps its rows
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "metric", "value"])
            writer.writerows([step, key, value] for key, value in metrics.items())

    def replay(self, rows: list[tuple[int, dict]]) -> None:
        """Rows of steps the file already holds are not written twice (a killed CSV run kept them)."""
        path, kept = self.folder / "metrics.csv", set()
        if path.exists():
            with path.open(newline="") as f:
                kept = {row["step"] for row in csv.DictReader(f)}
        super().replay([(step, m) for step, m in rows if str(step) not in kept])

    def update_summary(self, values: dict) -> None:
        self.values |= values
        write_json(self.values, self.folder / "summary.json")

    def table(self, key: str, frame) -> None:
        write_csv(frame, self.folder / f"{key.replace('/', '_')}.csv")

    def finish(self, failed: bool = False) -> None:
        self.info["state"] = "failed" if failed else "finished"
        write_json(self.info, self.folder / "run.json")


class CsvTracker(Tracker):
    params = {"tags": List}

    def __init__(self, tags=()):
        self.tags = list(tags)

    def start(self, *, run_dir, name, group, job_type, config, tags=(), run_id=None) -> Run:
        folder = Path(run_dir, "csv", name)
        if run_id is None:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return CsvRun(folder, {"id": name, "name": name, "group": group, "job_type": job_type,
                               "tags": [*self.tags, *tags], "state": "running", "config": config})
