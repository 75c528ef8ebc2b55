"""The Optuna study a search keeps its trials in: its storage (SQLite in the search folder by default, any RDB URL to
share it between machines), the check that a resumed study is the same search, and the retry of a killed trial."""

from __future__ import annotations

import logging
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.pruners import MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError
from .spec import Pruner, Search

log = logging.getLogger(__name__)

DB = "study.db"  # the default storage, in the search folder

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what n_trials counts

ATTEMPTS = 3  # to open the storage


def storage_url(search: Search, folder: Path) -> str:
    return search.storage or f"sqlite:///{(folder / DB).resolve()}"


def make_pruner(p: Pruner) -> optuna.pruners.BasePruner:
    if p.name == "median":
        return MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_folds)
    if p.name == "halving":  # rungs at 1, r, r^2 ... folds
        return SuccessiveHalvingPruner(min_resource=1, reduction_factor=p.reduction_factor)
    return NopPruner()


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial that stopped without an answer (its search was killed): the same parameters again, first in line,
    continuing in its run folder when that is on this machine (``retry_of``)."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    log.info("trial %d: stopped unfinished; queued again with the same parameters", trial.number)


def open_study(search: Search, folder: Path, identity: dict) -> optuna.Study:
    """Create the study, or load it when it exists; ``identity`` (the trials' overrides and the search space) must
    match the one it was created with, else its trials would not be comparable."""
    url = storage_url(search, folder)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's
    for attempt in range(ATTEMPTS):
        try:
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=search.heartbeat_s,
                grace_period=4 * search.heartbeat_s, heartbeat_stale_trial_callback=retry)
            break
        except Exception as err:  # noqa: BLE001 - a bad URL, a missing driver, an unreachable server: one line
            if attempt == ATTEMPTS - 1:
                raise ConfigError(f"hpo.storage={url}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
            time.sleep(1 + attempt)  # two searches creating one new storage at once: the other's tables are there
    study = optuna.create_study(storage=storage, study_name=search.study, direction="minimize",
                                pruner=make_pruner(search.pruner), load_if_exists=True)
    # A restarted search must not replay its first start's random draws: its seed moves on by the trials so far.
    study.sampler = optuna.samplers.TPESampler(seed=search.sampler.seed + len(study.get_trials(deepcopy=False)),
                                               n_startup_trials=search.sampler.n_startup_trials)
    saved = study.user_attrs.get("identity")
    if saved is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("folder", f"{socket.gethostname()}:{folder.resolve()}")
    elif saved != identity:
        differing = [k for k in identity if saved.get(k) != identity[k]]
        raise ConfigError(f"{url}: study {search.study} was started with other {' and '.join(differing)} "
                          f"({_show(saved, differing)}, not {_show(identity, differing)}); start it with the same, "
                          f"or name another study with hpo.study=")
    return study


def _show(identity: dict, keys: list[str]) -> str:
    return "; ".join(" ".join(v) if isinstance(v := identity[k], list) else str(v) for k in keys)


def count(study: optuna.Study, states=FINISHED) -> int:
    return len(study.get_trials(deepcopy=False, states=states))
