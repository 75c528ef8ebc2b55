"""The run folder's owner: every file name in it, where each fold lives, which folds are finished, the run's own
config (older ones brought up to date), the ``latest`` links, and one reader per kind of file, each checking what
it reads (it parses, has its keys or columns and rows, the values are finite, the ids are the expected ones) and
raising ``DataError`` naming the file and what to do. A damaged file is one line, never a traceback or a silently
wrong score. No other module spells a run file's name (tests/test_run_files.py checks)."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import DataError
from .files import write_json


class FoldDir:
    """``fold_<k>/`` (or ``refit/``): a fold's model, its predictions and, written last, ``result.json``."""

    RESULT, MODEL, JOBLIB, OOF, HOLDOUT, TEST, SOFT = ("result.json", "model.safetensors", "model.joblib", "oof.csv",
                                                       "holdout_pred.csv", "test_pred.csv", "soft_targets.csv")

    def __init__(self, path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FoldDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def result(self) -> Path:
        return self.path / self.RESULT

    @property
    def model(self) -> Path:
        return self.path / self.MODEL

    @property
    def joblib(self) -> Path:
        """A scikit-learn member's fitted pipeline (instead of ``model.safetensors``)."""
        return self.path / self.JOBLIB

    @property
    def oof(self) -> Path:
        return self.path / self.OOF

    @property
    def holdout_pred(self) -> Path:
        return self.path / self.HOLDOUT

    @property
    def test_pred(self) -> Path:
        return self.path / self.TEST

    @property
    def soft_targets(self) -> Path:
        return self.path / self.SOFT

    def finished(self) -> bool:
        """The one definition of a finished fold: its ``result.json`` exists (it is written last)."""
        return self.result.exists()

    def read_result(self) -> dict:
        return read_result(self.result)

    def write(self, result: dict, *, model_writer=None, model_file: str | None = None,
              tables: dict[str, pd.DataFrame] | None = None) -> None:
        """Write the fold's files, ``result.json`` last (what makes the fold finished): ``model_writer(path)``
        writes the model to ``model_file`` (default ``model.safetensors``) atomically; ``tables`` maps
        ``oof``/``holdout_pred``/``test_pred`` to their tables."""
        from .files import atomic_path, write_csv

        self.path.mkdir(parents=True, exist_ok=True)
        if model_writer is not None:
            with atomic_path(self.path / (model_file or self.MODEL)) as tmp:
                model_writer(tmp)
        for key, table in (tables or {}).items():
            write_csv(table, getattr(self, key))
        write_json(result, self.result)


class RunDir:
    """A run folder: ``run_config.yaml`` (what makes it one), ``folds.csv``, ``fingerprint.json``, ``fold_<k>/``,
    and once collected ``oof.csv``, ``submission.csv``, ``metrics.json`` (and ``holdout.csv``)."""

    CONFIG, FOLDS, FINGERPRINT = "run_config.yaml", "folds.csv", "fingerprint.json"
    METRICS, OOF, SUBMISSION, HOLDOUT = "metrics.json", "oof.csv", "submission.csv", "holdout.csv"
    PREDICTIONS, REFIT, PRUNED, HYDRA, LOG = "predictions", "refit", "pruned.json", ".hydra", "run.log"
    LATEST = "latest"

    def __init__(self, path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def fold(self, k: int) -> FoldDir:
        return FoldDir(self.path / f"fold_{k}")

    @property
    def refit(self) -> FoldDir:
        return FoldDir(self.path / self.REFIT)

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def folds_csv(self) -> Path:
        return self.path / self.FOLDS

    @property
    def fingerprint(self) -> Path:
        return self.path / self.FINGERPRINT

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def oof(self) -> Path:
        return self.path / self.OOF

    @property
    def submission(self) -> Path:
        return self.path / self.SUBMISSION

    @property
    def holdout(self) -> Path:
        return self.path / self.HOLDOUT

    @property
    def predictions(self) -> Path:
        return self.path / self.PREDICTIONS

    @property
    def pruned(self) -> Path:
        return self.path / self.PRUNED

    @property
    def hydra(self) -> Path:
        return self.path / self.HYDRA

    @property
    def hydra_config(self) -> Path:
        """Hydra's copy of a start's config (rewritten by every start; the run's own is ``run_config.yaml``)."""
        return self.path / self.HYDRA / "config.yaml"

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    def is_run(self) -> bool:
        """A run folder is one that ``prepare`` started: it holds ``run_config.yaml``."""
        return self.config.is_file()

    def is_collected(self) -> bool:
        """Its results are collected: ``metrics.json`` exists (written last by collecting)."""
        return self.metrics.is_file()

    def finished(self, folds) -> list[int]:
        return [k for k in folds if self.fold(k).finished()]

    def unfinished(self, folds) -> list[int]:
        return [k for k in folds if not self.fold(k).finished()]

    def fold_dirs(self) -> list[FoldDir]:
        """Every ``fold_<k>/`` present, in fold order."""
        found = [p for p in self.path.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()]
        return [FoldDir(p) for p in sorted(found, key=lambda p: int(p.name[5:]))]

    def read_config(self) -> DictConfig:
        return read_run_config(self.path)

    def read_metrics(self) -> dict:
        return json.loads(self.metrics.read_text())

    def is_stub(self, extra=()) -> bool:
        """A folder holding only what Hydra (and the run lock, ``extra``) wrote at start-up: no result of ours."""
        return self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {self.HYDRA, self.LOG, *extra}

    def point_latest(self, data_name: str | None) -> None:
        """``<experiment>/latest`` -> this folder (its real name, never the link itself), and ``latest-<data>`` ->
        the newest on that data (``data.name``): what ``make predict``/``collect`` take by default, so that a run on
        another data set never becomes theirs silently."""
        run_dir = self.path.resolve()
        for name in [self.LATEST, *([f"{self.LATEST}-{data_name}"] if data_name else [])]:
            tmp = run_dir.parent / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(run_dir.name)
            os.replace(tmp, run_dir.parent / name)

    def remove(self) -> None:
        """Remove the folder, and its parent when that is left empty."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()

    # What the analysis reads of a Hydra job's folder: its overrides (what tells a sweep's jobs apart), the run's
    # name when it was saved unresolved, and the sweep callback's record of the job.
    JOB_STATUS = "job_status.json"

    @property
    def job_status(self) -> Path:
        """``job_status.json``: a sweep job's state (ok, failed, pruned) and wall time, by ``analysis.callbacks``."""
        return self.path / self.JOB_STATUS

    def is_job(self) -> bool:
        """Hydra ran a job here (it holds ``.hydra/``): a run, or a sweep job that failed before its run began."""
        return self.hydra.is_dir()

    def read_overrides(self) -> list[str]:
        """The command-line overrides of the Hydra job that made the folder (``.hydra/overrides.yaml``); none
        without one."""
        path = self.hydra / "overrides.yaml"
        return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []

    def run_name(self, cfg) -> str | None:
        """The run's ``name``; Hydra saves ``${hydra:...}`` in it unresolved, so look that up in ``hydra.yaml``."""
        import re

        raw = OmegaConf.to_container(cfg).get("name")
        m = re.fullmatch(r"\$\{hydra:([\w.]+)\}", str(raw))
        if m and (self.hydra / "hydra.yaml").exists():
            return OmegaConf.select(OmegaConf.load(self.hydra / "hydra.yaml"), f"hydra.{m[1]}")
        return raw

    def prediction(self, source, models: str = "folds") -> Path:
        """Where ``make predict`` writes its bag of ``source``: ``predictions/<input name>`` for the fold models,
        ``<stem>-refit``/``<stem>-all`` (the input's suffix kept) for the other choices, so none overwrites another."""
        source = Path(source)
        return self.predictions / (source.name if models == "folds" else f"{source.stem}-{models}{source.suffix}")


def check_run_folder(path: Path, key: str) -> None:
    """``key`` (``resume``, ``distill.teacher``) names a run folder: one that ``prepare`` started."""
    from .errors import ConfigError

    if not path.exists():
        raise ConfigError(f"{key}={path}: does not exist")
    if not path.is_dir():
        raise ConfigError(f"{key}={path}: is a file; give the run folder (the one holding {RunDir.CONFIG})")
    if not RunDir(path).is_run():
        raise ConfigError(f"{key}={path}: not a run folder (no {RunDir.CONFIG})")


REFIT = RunDir.REFIT  # <run>/refit/: the model ``make refit`` trained on every training row

_CHOSEN: dict[str, str] = {}  # a new run's folder name, per process: Hydra resolves ``hydra.run.dir`` more than once
_TAKEN: set[str] = set()  # names another start took first


def run_path(resume, fresh: str) -> str:
    """The ``${run_dir:}`` resolver: ``resume=<run folder>`` continues that folder (its real path: resuming
    ``outputs/<name>/latest`` continues, and points ``latest`` at, the folder the link names); otherwise a new
    folder, ``fresh`` or ``fresh-2``, ``fresh-3``... (a ``resume`` that names a file gets a new one too, which the
    refused start removes). Nothing is created while a config resolves: ``claim`` creates the folder."""
    if resume and not Path(str(resume)).is_file():
        return str(Path(str(resume)).resolve())
    if fresh not in _CHOSEN:
        _CHOSEN[fresh] = next(path for path in (fresh if n == 1 else f"{fresh}-{n}" for n in range(1, 10_000))
                              if not os.path.lexists(path) and path not in _TAKEN)
    return _CHOSEN[fresh]


def claim(resolve) -> Path:
    """Create the folder ``resolve()`` names (a start's ``hydra.run.dir``) with ``os.mkdir``, which is atomic: when
    two starts in the same second chose the same new name, the second chooses again. A folder named by hand
    (``hydra.run.dir=...``) or resumed may exist already."""
    while True:
        path = Path(os.path.abspath(str(resolve())))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            lost = [fresh for fresh, chosen in _CHOSEN.items() if os.path.abspath(chosen) == str(path)]
            if not lost:
                return path
            for fresh in lost:
                _TAKEN.add(_CHOSEN.pop(fresh))


def fold_dir(run_dir: Path, fold: int) -> Path:
    return RunDir(run_dir).fold(fold).path


def expected_folds(cfg) -> list[int]:
    return list(cfg.cv.folds) if cfg.cv.folds is not None else list(range(cfg.cv.n_splits))


def unfinished(run_dir: Path, folds: list[int]) -> list[int]:
    return RunDir(run_dir).unfinished(folds)


RESULT_KEYS = ("mse", "rmse", "train_time_s")  # what collecting a fold reads from its result.json


RESTORE = "restore it or start a new run"


def _short(err: Exception) -> str:
    """The gist of a parser's message (YAML's names the file again, over several lines: the problem and line)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        return f"{err.problem} at line {err.problem_mark.line + 1}"
    return " ".join(str(err).split())[:120]


def retrain(path: Path) -> str:
    """The advice for a damaged file of ``fold_<k>/``: retrain that fold."""
    fdir = FoldDir(path.parent)
    return f"retrain that fold: delete {fdir.result} and resume with RESUME={fdir.path.parent}"


def _read_whole(path: Path, fix: str) -> bytes:
    """The bytes of a file the run wrote, refused when empty or cut short: every writer ends its last line, and a
    file cut mid-line may still parse (a number cut to fewer digits)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {fix}") from None
    if not data.strip():
        raise DataError(f"{path}: empty; {fix}")
    if not data.endswith(b"\n"):
        raise DataError(f"{path}: cut short (no line end after its last line); {fix}")
    return data


def read_run_config(run_dir: Path) -> DictConfig:
    """The config a run folder was started with (``run_config.yaml``), refused when it is cut short, does not parse
    or lacks a key the schema requires (a file cut at a line end parses up to there). A config from before a key
    existed is brought up to date (``config.schema.upgrade``)."""
    # here, not above: the schema loads torch and transformers, which predict and distillation import only after
    # config.paths.offline_for_local
    from .config.schema import first_missing, upgrade

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DataError(f"{run_dir}: does not exist")
    path = RunDir(run_dir).config
    if not path.is_file():
        raise DataError(f"{run_dir}: not a run folder (no {RunDir.CONFIG})")
    data = _read_whole(path, RESTORE)
    try:
        cfg = OmegaConf.create(data.decode())  # parsed as OmegaConf.load parses a file
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as err:
        raise DataError(f"{path}: unreadable ({_short(err)}); {RESTORE}") from None
    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else None
    if isinstance(tree, dict):
        tree = upgrade(tree)
        cfg = OmegaConf.create(tree)
    absent = first_missing(tree)
    if absent:
        raise DataError(f"{path}: incomplete (no {absent}); {RESTORE}")
    return cfg


def read_result(path: Path) -> dict:
    """A fold's ``result.json``: a mapping whose scores and times are finite numbers."""
    data = _read_whole(path, retrain(path))
    try:
        result = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({_short(err)}); {retrain(path)}") from None
    bad = [k for k in RESULT_KEYS if not isinstance(result, dict) or not _finite(result.get(k))]
    if bad:
        raise DataError(f"{path}: no finite {bad[0]!r}; {retrain(path)}")
    return result


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_csv(path: Path, columns: tuple[str, ...], fix: str, **kwargs) -> pd.DataFrame:
    """A CSV a run wrote, refused (``fix``: what to do) when it is cut short, does not parse or lacks one of
    ``columns``."""
    data = _read_whole(path, fix)
    try:
        table = pd.read_csv(io.BytesIO(data), **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({_short(err)}); {fix}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no {missing[0]!r} column (columns: {', '.join(map(str, table.columns))}); {fix}")
    return table


def check_ids(path: Path, ids, expected, what: str) -> None:
    """Refuse a per-fold file whose ids are not exactly ``expected`` (in order): rows would be misaligned."""
    ids, expected = list(map(str, ids)), list(map(str, expected))
    if ids != expected:
        first = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
        raise DataError(f"{path}: ids differ from {what} (first at row {first + 1}: {len(ids)} rows, "
                        f"{len(expected)} expected); the data changed since this run started: start a new run")


def read_preds(path: Path, expected, what: str, columns: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """A fold's ``pred`` column, its ids checked against ``expected``; a file with fewer or more rows (cut short)
    and a blank or non-finite prediction are refused (a mean would skip it silently, or it would turn the CV score
    and the bag into NaN). ``columns``: every prediction column, ``pred`` and each ``pred_<policy>`` (by
    ``pred`` and by the policy's name)."""
    table = read_csv(path, ("id", "pred"), retrain(path), dtype={"id": str})
    ids, expected = table["id"].astype(str).tolist(), list(map(str, expected))
    if len(ids) != len(expected):
        raise DataError(f"{path}: {len(ids)} rows, {len(expected)} expected; {retrain(path)}")
    check_ids(path, ids, expected, what)
    out = {}
    for col in [c for c in table.columns if c == "pred" or (columns and c.startswith("pred_"))]:
        pred = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(pred)
        if bad.any():
            raise DataError(f"{path}: blank or non-finite {col} in {int(bad.sum())} row(s), first at data row "
                            f"{int(np.flatnonzero(bad)[0]) + 1}; {retrain(path)}")
        out[col.removeprefix("pred_")] = pred
    return out if columns else out["pred"]


def check_model(path: Path) -> None:
    """A fold model's ``model.safetensors`` is whole: its header parses and covers the file (a cut file does not)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as err:
        raise DataError(f"{path}: unreadable ({_short(err)}); {retrain(path)}") from None
