"""Preparing a run folder: data and config checks, folds.csv, fingerprint.json, run_config.yaml; resume rules."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..config.rules import override_key
from ..data import fingerprint
from ..data.fingerprint import FREE_KEYS
from ..data.folds import HOLDOUT, assign
from ..data.tables import DataError, load_data
from ..files import atomic_path, write_csv, write_json
from ..model import manifest
from ..model.classical import check_texts, is_classical
from ..model.regressor import load_tokenizer, tokenize
from ..model.tasks import check_columns
from ..rundir import RunDir, check_ids, expected_folds, read_csv, read_run_config
from ..train import snapshot
from . import distill, lock

log = logging.getLogger(__name__)


def check_run_config(cfg: DictConfig, run_dir: Path, save: bool = True) -> None:
    """Save the config a run folder was started with; refuse to continue that folder with a different one.

    Finished folds are kept on resume, so a changed config would mix two experiments in one OOF file. Hydra
    rewrites ``.hydra/config.yaml`` on every start (before we can check), hence our own ``run_config.yaml``
    (unresolved: machine-independent), which a refused start also puts back for ``predict``. ``resume`` and
    ``logger`` may differ, and so may which folds a start trains (``cv.folds``: parallel fold jobs each train one)
    and how (``launcher``, ``output``, ``collect``); but a start that collects may not cover fewer folds than a
    collected run has finished: it would cut its oof.csv and its bag to those folds.
    """
    run = RunDir(run_dir)
    path = run.config
    if not path.exists():
        if save:
            with atomic_path(path) as tmp:
                tmp.write_text(OmegaConf.to_yaml(_as_saved(cfg)))
        return
    saved, now = (fingerprint.flat(OmegaConf.to_container(c)) for c in (read_run_config(run_dir), _as_saved(cfg)))
    if str(saved.get("name", "")).startswith("${") or str(now.get("name", "")).startswith("${"):
        saved["name"] = now["name"]  # saved before names were resolved, or no Hydra to resolve: compare the rest
    changed = sorted(k for k in fingerprint.binding(saved).keys() | fingerprint.binding(now).keys() | {"name"}
                     if saved.get(k, "<unset>") != now.get(k, "<unset>"))
    if changed:
        _refuse_start(run_dir, save, f"{path}: this run folder was started with another config; resume it with the "
                                     f"same overrides (differing: {', '.join(changed)})")
    done = run.finished(range(cfg.cv.n_splits))
    if cfg.get("collect", True) and run.is_collected() and set(done) - set(expected_folds(cfg)):
        _refuse_start(run_dir, save, f"{run.metrics}: the results cover folds {done}; "
                                     f"cv.folds={list(cfg.cv.folds)} would cut them to fewer; resume with cv.folds "
                                     f"covering {done} (or null), or start a new run")


def _as_saved(cfg: DictConfig) -> DictConfig:
    """What ``run_config.yaml`` keeps: the config unresolved (paths of this machine's packages stay resolvers), but
    the run's name resolved and Hydra's group choices beside it, so that a resume from the folder alone is the same
    run (the name follows the choices of the start that made it, not of the one that resumes it)."""
    saved = OmegaConf.create(OmegaConf.to_container(cfg))
    name = OmegaConf.select(cfg, "name", throw_on_resolution_failure=False)  # None outside Hydra (compose API)
    if name is not None:
        saved.name = str(name)
    if "choices" not in saved:
        saved.choices = _hydra_choices()
    return saved


def _hydra_choices() -> dict:
    try:
        return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}
    except ValueError:  # not under Hydra
        return {}


def adopt_run_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``resume=<folder>`` continues the run with the config in its ``run_config.yaml``: nothing needs typing again.

    An override given beside it must agree with that config (the start is refused naming the keys that differ);
    the keys that may differ between starts (``FREE_KEYS``, ``cv.folds``) come from this start. An ``experiment=``
    preset is compared key by key like any start (``check_run_config``).
    """
    path = RunDir(cfg.resume).config
    if not path.is_file():
        return cfg  # refused by the schema with one line
    saved = read_run_config(path.parent)
    keys = [override_key(o) for o in overrides]
    if any(k.split("/")[0] == "experiment" for k in keys):
        return cfg
    given = [k for k in keys if k.split(".")[0].split("/")[0] not in (*FREE_KEYS, "hydra") and k != "cv.folds"]
    differing = [k for k in given if _value(cfg, k) != _value(saved, k)]
    if differing:
        _refuse_start(Path(cfg.resume), True, f"{path}: this run was started with other values of "
                                              f"{', '.join(differing)}; resume it with RESUME={cfg.resume} alone, "
                                              f"or start a new run")
    own = {k: cfg.get(k) for k in FREE_KEYS} | ({"cv": {"folds": cfg.cv.folds}} if "cv.folds" in keys else {})
    adopted = OmegaConf.merge(saved, OmegaConf.create(own))
    adopted.logger = cfg.logger  # replaced, not merged: another tracker's keys would not fit this one
    OmegaConf.set_struct(adopted, True)
    return adopted


def _value(cfg, key: str):
    value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _refuse_start(run_dir: Path, save: bool, message: str) -> None:
    """Hydra has already written the refused start's config: put the run's own back (``predict`` reads it)."""
    run = RunDir(run_dir)
    if save and run.hydra.is_dir() and run.config.is_file():  # a first start has no config of its own yet
        with atomic_path(run.hydra_config) as tmp:
            tmp.write_text(run.config.read_text())
    raise DataError(message)


def describe(cfg: DictConfig, run_dir: Path) -> str:
    """The one-line summary a run starts with (the full config is in ``.hydra/config.yaml``)."""
    choices = cfg.get("choices") or _hydra_choices()  # a resumed run's are those of its first start
    n = cfg.cv.n_splits
    folds = f"folds {list(cfg.cv.folds)} of {n}" if cfg.cv.folds is not None else f"{n} folds"
    start = f"{cfg.name}: {'resuming' if cfg.get('resume') else 'run'} folder {run_dir} | data {cfg.data.path} | "
    if is_classical(cfg.model):
        return start + f"model {choices.get('model', cfg.model.estimator._target_)} (scikit-learn) | {folds}"
    return (start +
            f"model {choices.get('model', cfg.model.backbone)} (max_length {cfg.model.max_length}, "
            f"{cfg.model.pooling} pooling) | regularizer {choices.get('regularizer', '?')} | "
            f"task {choices.get('task', '?')}{distill.describe(cfg)} | "
            f"optimizer {choices.get('optimizer', '?')} lr {cfg.optimizer.lr:g} | {folds} x {cfg.trainer.epochs} "
            f"epoch(s), batch {cfg.trainer.batch_size}, {cfg.trainer.precision}")


@dataclass
class Prepared:
    """What every fold of a run shares: the tables, the fold of each row, the tokenized texts."""

    train: pd.DataFrame
    test: pd.DataFrame | None
    folds: np.ndarray
    tokenizer: object
    enc: dict
    test_enc: dict | None
    distill: distill.Distiller | None = None  # distill.teacher's fold models: soft targets, pseudo-labels

    @property
    def targets(self) -> np.ndarray:
        return self.train["target"].to_numpy()


def prepare(cfg: DictConfig, run_dir: Path, main: bool = True, texts: bool = True) -> Prepared:
    """Check the data, write ``folds.csv`` and ``run_config.yaml``; on resume, refuse changed data or config.

    ``texts=False`` skips tokenizing (a process that trains no fold: the launcher of parallel fold jobs, ``collect``).
    """
    train, test = load_data(cfg.data, cfg.cv.n_splits)  # bad input fails here, before anything is written
    check_columns(cfg, train)  # the label columns the task reads (standard_error)
    if test is None and main:
        log.info("no test file beside %s (data.test_path): no %s", cfg.data.path, RunDir.SUBMISSION)
    folds = assign(train["id"], train["target"], cfg.cv, cfg.data.id_col)  # HOLDOUT (-1) for the rows of cv.holdout
    if is_classical(cfg.model):  # texts that leave TF-IDF (or one fold's part) no vocabulary: before any write
        check_texts(cfg.model.estimator, train["text"], cfg.data.path, folds)
    table = pd.DataFrame({"id": train["id"], "fold": folds, "target": train["target"]})
    data_print = fingerprint.of_data(cfg.data.path, train)
    if not is_classical(cfg.model):  # a backbone pretrained here (kfold-nlp pretrain): never on a holdout text
        try:
            manifest.check_no_leak(cfg.model.backbone, train["id"][folds == HOLDOUT].tolist(),
                                   train["text"][folds == HOLDOUT].tolist())
        except DataError as err:
            _refuse_start(run_dir, main, str(err))
        data_print |= {"backbone": digest} if (digest := manifest.manifest_digest(cfg.model.backbone)) else {}
    try:
        notes = fingerprint.check_data(run_dir, data_print, table)  # a changed train file is refused here
    except DataError as err:
        _refuse_start(run_dir, main, str(err))
    for note in notes:
        log.warning("warning: %s", note)
    distiller = distill.load(cfg, table, train, data_print)  # a teacher with other data or folds is refused here
    check_run_config(cfg, run_dir, save=main)  # every process, so none waits for a main process that refused
    run = RunDir(run_dir)
    if run.folds_csv.exists():  # the same config on the same data: only another library's split differs
        kept = read_csv(run.folds_csv, ("id", "fold"), "start a new run", dtype={"id": str})
        check_ids(run.folds_csv, kept["id"], table["id"], f"the train file {cfg.data.path}")
        if not np.array_equal(kept["fold"].to_numpy(), folds):
            raise DataError(f"{run.folds_csv}: the folds differ from this config's; start a new run")
    if main:
        # left by a killed run; not those of a fold job writing beside this one (a launcher's other jobs)
        for stale in [*run_dir.glob(".*.tmp"), *run_dir.glob("fold_*/.*.tmp")]:
            if lock.is_free(stale.parent):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        if not cfg.trainer.keep_snapshot:  # a kill between a fold's result.json and its snapshot's removal
            for fdir in RunDir(run_dir).fold_dirs():
                if fdir.finished():
                    snapshot.remove(fdir.path)
        write_csv(table, run.folds_csv)
        if not run.fingerprint.exists():  # the first start's: later starts are compared with it
            write_json(data_print, run.fingerprint)
    if not texts or is_classical(cfg.model):  # a scikit-learn pipeline reads the texts themselves
        return Prepared(train, test, folds, None, None, None, distiller)
    tokenizer = load_tokenizer(cfg.model)
    enc = tokenize(tokenizer, train["text"], cfg.model.max_length)
    test_enc = tokenize(tokenizer, test["text"], cfg.model.max_length) if test is not None else None
    return Prepared(train, test, folds, tokenizer, enc, test_enc, distiller)
