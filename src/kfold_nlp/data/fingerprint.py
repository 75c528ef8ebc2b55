"""What makes two starts the same run: the train file's fingerprint and the config keys that may not change.

A run folder keeps ``fingerprint.json`` (the train file's content hash, rows, and a hash of each column the run
reads) and each finished fold's ``result.json`` keeps ``made_from`` (the data and config digests it was trained
under). Resume, collect and distillation compare them with what they are given now, so a changed train file, a
teacher trained on other data, or a fold copied in from another run is refused with one line naming what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ..errors import DataError
from ..files import read_json
from ..rundir import RunDir, read_csv

NAME = RunDir.FINGERPRINT


FREE_KEYS = ("resume", "logger", "launcher", "output", "collect")  # may differ between starts of one run folder


COLUMNS = ("id", "text", "target", "standard_error")  # what a run reads of its train file (when present)


def flat(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: configs compared key by key."""
    out = {}
    for key, value in tree.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def binding(saved: dict) -> dict:
    """The flat keys of a saved config that fix what a fold computes (not the name, the Hydra choices, the keys
    free between starts, nor which folds a start trains)."""
    return {k: v for k, v in saved.items()
            if k.split(".")[0] not in (*FREE_KEYS, "choices", "name") and k != "cv.folds"}


def _digest(data) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else json.dumps(data, sort_keys=True,
                                                                           default=str).encode()).hexdigest()[:16]


def config_digest(run_config: Path) -> str:
    """The digest of a run's saved ``run_config.yaml`` over its binding keys."""
    return _digest(binding(flat(OmegaConf.to_container(OmegaConf.load(run_config)))))


def _column(values: pd.Series) -> str:
    if values.dtype.kind == "f":
        return _digest(np.ascontiguousarray(values.to_numpy(np.float64)).tobytes())
    return _digest("\x00".join(map(str, values)).encode())


def of_data(path: Path, train: pd.DataFrame) -> dict:
    """The train file's fingerprint: bytes, rows and each column the run reads (as loaded: ids, texts, targets)."""
    return {"file": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(), "rows": len(train),
            **{c: _column(train[c]) for c in COLUMNS if c in train}}


def data_digest(fingerprint: dict) -> str:
    """What a fold's result depends on of the data: the columns, not the file's name or bytes."""
    return _digest({k: v for k, v in fingerprint.items() if k not in ("file", "sha256")})


def differences(saved: dict, now: dict) -> list[str]:
    """What changed between two fingerprints, in words (empty: the run reads the same data)."""
    if saved.get("rows") != now.get("rows"):
        return [f"{saved.get('rows')} rows then, {now.get('rows')} now"]
    return [f"{'ids' if c == 'id' else c + 's' if c in ('text', 'target') else c} differ"
            for c in COLUMNS if saved.get(c) != now.get(c)]


def check_data(run_dir: Path, now: dict, folds: pd.DataFrame | None = None) -> list[str]:
    """Refuse a run folder whose train file changed since it started; returns notes (bytes changed, columns not).

    A folder from before fingerprints has none: its ``folds.csv`` targets are compared instead (``folds``: this
    start's table), and the fingerprint is then written by the caller.
    """
    path = run_dir / NAME
    if path.is_file():
        saved = read_json(path)
        if saved.get("backbone") != now.get("backbone"):  # a pretraining's manifest (model/manifest.py)
            raise DataError(f"model.backbone: its pretraining changed since {run_dir} started (its "
                            f"pretrain_manifest.json differs); put that backbone back, or start a new run")
        changed = differences(saved, now)
        if changed:
            raise DataError(f"{now['file']}: the train file changed since {run_dir} started ({', '.join(changed)}); "
                            f"put the original back, or start a new run")
        return [] if saved.get("sha256") == now["sha256"] else [
            f"{now['file']}: its bytes changed since this run started, but not the columns the run reads"]
    kept = RunDir(run_dir).folds_csv
    if folds is not None and kept.is_file():
        old = read_csv(kept, ("id",), "start a new run", dtype={"id": str})
        if len(old) == len(folds) and "target" in old and not np.array_equal(old["target"].to_numpy(float),
                                                                            folds["target"].to_numpy(float)):
            row = int(np.flatnonzero(old["target"].to_numpy(float) != folds["target"].to_numpy(float))[0]) + 1
            raise DataError(f"{now['file']}: the train file changed since {run_dir} started (targets differ, first "
                            f"at data row {row}); put the original back, or start a new run")
    return []


def made_from(run_dir: Path) -> dict:
    """What a fold trained in ``run_dir`` records in its ``result.json``."""
    return {"data": data_digest(read_json(run_dir / NAME)), "config": config_digest(RunDir(run_dir).config)}


def check_fold(run_dir: Path, fold_dir: Path, result: dict) -> None:
    """Refuse a finished fold that was trained on other data or under another config than ``run_dir``'s (a fold
    copied in from another run). Folds from before fingerprints carry no record and are taken as they are."""
    record = result.get("made_from")
    if record is None or not (run_dir / NAME).is_file():
        return
    expected = made_from(run_dir)
    changed = [what for what in ("data", "config") if record.get(what) != expected[what]]
    if changed:
        result_file = RunDir(run_dir).fold(0).RESULT
        raise DataError(f"{fold_dir / result_file}: this fold was trained on another {' and '.join(changed)} "
                        f"than {run_dir}; retrain it (delete {fold_dir.name}/{result_file} and resume)")
