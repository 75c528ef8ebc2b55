"""``kfold-nlp hpo [PRESET] [hpo.<key>=value ...] [overrides ...]``: an Optuna search of the CV RMSE that keeps its
study in a storage, resumes when started again, prunes trials after a fold, and ends naming the best trial's folder.

PRESET is ``conf/hpo/<name>.yaml`` (default ``rdrop``) or a YAML file; ``hpo.<key>=value`` changes the search
(``hpo.n_trials=40``, ``hpo.pruner.name=median``, ``hpo.storage=postgresql://...``, ``hpo.n_jobs=2``); every other
override goes to each trial (``data=commonlit cv.n_splits=3``).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from ..analysis.stats import read_oof
from ..cv.app import check_config, composed_config
from ..data.tables import load_data
from ..errors import ConfigError, DataError, Exit, OneLineError, refuse
from ..files import write_json
from ..metrics import rmse_interval
from ..rundir import RunDir, expected_folds
from . import spec as specs
from .spec import PREFIX, Param, Search
from .study import FINISHED, count, open_study, storage_url
from .trial import BadInput, Interrupted, TrialFailed, Trials

log = logging.getLogger("kfold_nlp.search")

DEFAULT_PRESET = "rdrop"


def split_args(argv: list[str]) -> tuple[str, list[str], list[str]]:
    """(preset, the search's ``hpo.`` overrides, the trials' overrides)."""
    preset = argv[0] if argv and "=" not in argv[0] else DEFAULT_PRESET
    rest = argv[1:] if argv and "=" not in argv[0] else argv
    bad = [a for a in rest if "=" not in a or a.split("=", 1)[0].lstrip("+~").startswith("hydra")]
    if bad:
        raise ConfigError(f"{bad[0]}: not an override; give key=value (the search decides hydra.* itself)")
    return preset, [a for a in rest if a.startswith(PREFIX)], [a for a in rest if not a.startswith(PREFIX)]


def trial_config(overrides: list[str], sample: list[str]):
    """The composed config of a trial with ``sample``'s values, checked as ``make cv`` checks a run: a bad key or
    value is refused before any trial starts."""
    cfg = composed_config([*overrides, *sample], check=False)
    if cfg.get("resume") is not None or cfg.get("launcher") is not None:
        raise ConfigError("resume=, launcher=: not for a search's trials (a trial continues by itself; trials run "
                          "in parallel with hpo.n_jobs=)")
    check_config(cfg)
    return cfg


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = search(argv)
    except (OneLineError, OSError) as err:
        refuse(err, "start the search again (it resumes)")
    except KeyboardInterrupt:  # a second Ctrl-C: the trials had their SIGTERM with the first
        print("interrupted: the running trials were stopped; continue with the same command", file=sys.stderr)
        code = Exit.INTERRUPTED
    sys.exit(code)


@dataclass
class Plan:
    """A search checked and ready: its spec, parameters, the trials' overrides and config, its folder."""

    spec: Search
    params: list[Param]
    overrides: list[str]
    cfg: DictConfig
    folder: Path


def plan(argv: list[str]) -> Plan:
    """Read the command line and refuse, before anything is written, what would fail every trial."""
    preset, search_over, trial_over = split_args(argv)
    spec = specs.load(preset, search_over)
    params = specs.space(spec.params)
    overrides = [*spec.overrides, *trial_over]
    cfg = trial_config(overrides, [specs.override(p.key, p.low if p.kind != "categorical" else p.choices[0])
                                   for p in params])
    for p in params:
        if OmegaConf.select(cfg, p.key, default="<missing>") == "<missing>":
            raise ConfigError(f"params.{p.key}: no such key in the trials' config (with {' '.join(overrides)})")
    load_data(cfg.data, cfg.cv.n_splits)  # a missing or broken data file: one line before anything starts
    name = Path(preset).stem if Path(preset).suffix in (".yaml", ".yml") else preset
    spec.study = spec.study or f"{name}-{cfg.data.get('name') or 'data'}"
    return Plan(spec, params, overrides, cfg, Path(spec.dir or f"outputs/hpo/{spec.study}"))


def search(argv: list[str]) -> int:
    p = plan(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its lines repeat ours; a failed trial's is ours
    study = open_study(p.spec, p.folder, {"overrides": sorted(p.overrides), "params": dict(p.spec.params)})
    url = storage_url(p.spec, p.folder)
    p.folder.mkdir(parents=True, exist_ok=True)  # with a storage elsewhere, the study did not make it
    to_file = logging.FileHandler(p.folder / "search.log")  # every start's lines, for a search left running
    to_file.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    log.addHandler(to_file)
    trials = Trials(p.folder, p.overrides, p.params, expected_folds(p.cfg), p.spec.n_trials, url, p.spec.pruner,
                    p.spec.n_jobs)
    log.info("search %s: %d trials of %d folds each (%s), pruner %s, %d at once; storage %s; folder %s",
             p.spec.study, p.spec.n_trials, len(trials.folds), ", ".join(f"{x.key} {x.describe()}" for x in p.params),
             p.spec.pruner.name, p.spec.n_jobs, url, p.folder)
    if count(study):
        log.info("resuming: %s", trials.progress(study))
    stopped_by = []

    def on_signal(signum, frame):
        if trials.stopping.is_set():  # a second Ctrl-C: now; a second SIGTERM (make forwards one): as the first
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        log.info("stopping: the running trials end now and are queued again (their finished folds are kept)")
        stopped_by.append(signum)
        trials.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    began = time.perf_counter()
    try:
        while not trials.stopping.is_set() and (left := p.spec.n_trials - count(study)) > 0:
            before = count(study, states=None)
            study.optimize(trials, n_trials=left, n_jobs=p.spec.n_jobs, catch=(TrialFailed, Interrupted),
                           callbacks=[optuna.study.MaxTrialsCallback(p.spec.n_trials, states=FINISHED)])
            if count(study, states=None) == before:  # nothing could be asked (a storage shared and full)
                break
    except BadInput as err:
        trials.stop()
        refuse(DataError(str(err)), "fix it and start the search again (it resumes)")
    log.info(closing_lines(study, p.spec.n_trials, url, p.folder, time.perf_counter() - began))
    if stopped_by:
        print(f"stopped: {trials.progress(study)}; continue with the same command", file=sys.stderr)
        return Exit.INTERRUPTED if stopped_by[0] == signal.SIGINT else Exit.TERMINATED
    return 0


def closing_lines(study, n_trials: int, url: str, folder: Path, wall: float) -> str:
    """The search's last lines: what ran, the best trial (parameters, CV with interval, folder), the dashboard."""
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    done = (f"{states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
            f"{states[TrialState.FAIL]} failed or stopped (n_trials {n_trials}); this start {wall:.0f} s")
    lines = [f"search {study.study_name}: {done}"]
    try:
        best = study.best_trial
    except ValueError:
        return "\n".join([*lines, "no trial finished yet"])
    run_dir = Path(best.user_attrs.get("run_dir", ""))
    interval = ""
    if RunDir(run_dir).oof.exists():
        oof = read_oof(run_dir)
        i = rmse_interval(oof["target"].to_numpy(float), oof["pred"].to_numpy(float), oof["fold"].to_numpy())
        interval = f" [{i.lo:.4f}, {i.hi:.4f}]"
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    write_json({"study": study.study_name, "storage": url, "trial": best.number, "cv_rmse": best.value,
                "params": best.params, "run_dir": str(run_dir),
                "trials": {s.name.lower(): n for s, n in states.items()}}, folder / "best_trial.json")
    lines += [f"best trial {best.number}: CV RMSE {best.value:.4f}{interval} (95% bootstrap over rows; the best of "
              f"{states[TrialState.COMPLETE]} is flattered by the choice) | {params}",
              f"best trial: {run_dir}",
              f"dashboard: optuna-dashboard {url}"]
    return "\n".join(lines)
