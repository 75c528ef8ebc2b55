"""What a search is: its preset (``conf/hpo/<name>.yaml``) and ``hpo.<key>=`` overrides read into a typed schema,
and its parameters in Hydra's sweep syntax turned into Optuna suggestions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config.paths import resource
from ..errors import ConfigError

PREFIX = "hpo."  # a command-line override of the search itself; every other one goes to each trial


@dataclass
class Sampler:
    seed: int | None = 42  # same seed, same trials (one worker; parallel trials interleave)
    n_startup_trials: int = 5  # random trials before TPE models the results


@dataclass
class Pruner:
    name: str = "median"  # none | median | halving: Optuna's NopPruner, MedianPruner, SuccessiveHalvingPruner
    n_startup_trials: int = 3  # median: trials that run every fold before any trial is pruned
    n_warmup_folds: int = 0  # median: folds every trial runs before it can be pruned
    reduction_factor: int = 3  # halving: a trial goes on past a rung when in the best 1/reduction_factor there


@dataclass
class Search:
    params: dict[str, str] = field(default_factory=dict)  # key -> interval(lo, hi), tag(log, interval(..)), choice(..)
    overrides: list[str] = field(default_factory=list)  # every trial's own fixed overrides (its regularizer, ...)
    study: str | None = None  # null: <preset>-<data.name>
    storage: str | None = None  # any Optuna RDB URL; null: sqlite:///<dir>/study.db
    dir: str | None = None  # the trials' run folders; null: outputs/hpo/<study>
    n_trials: int = 20  # finished trials (complete or pruned) the study ends with, whatever the number of starts
    n_jobs: int = 1  # trials at once on this machine, each a process with cores / n_jobs threads
    heartbeat_s: int = 15  # a running trial says it is alive this often; one silent for 4x that is retried
    sampler: Sampler = field(default_factory=Sampler)
    pruner: Pruner = field(default_factory=Pruner)


PRUNERS = ("none", "median", "halving")


def preset_path(preset: str) -> Path:
    """``rdrop`` -> ``conf/hpo/rdrop.yaml``; a path to a YAML file is taken as it is."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        return path
    return resource("conf") / "hpo" / f"{preset}.yaml"


def load(preset: str, overrides: list[str]) -> Search:
    """The preset merged onto the schema, then the ``hpo.<key>=value`` overrides: a wrong key or type is one line
    naming the file or the override."""
    path = preset_path(preset)
    if not path.is_file():
        choices = sorted(p.stem for p in (resource("conf") / "hpo").glob("*.yaml"))
        raise ConfigError(f"{path}: no such search preset; one of {', '.join(choices)} (or a .yaml file)")
    spec = OmegaConf.structured(Search)
    try:
        spec = OmegaConf.merge(spec, OmegaConf.load(path))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_reason(err)}") from None
    try:
        spec = OmegaConf.merge(spec, OmegaConf.from_dotlist([o[len(PREFIX):] for o in overrides]))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{' '.join(overrides)}: {_reason(err)}") from None
    search: Search = OmegaConf.to_object(spec)
    if search.pruner.name not in PRUNERS:
        raise ConfigError(f"hpo.pruner.name={search.pruner.name}: not a pruner; one of {', '.join(PRUNERS)}")
    for key, low in (("n_trials", 1), ("n_jobs", 1), ("heartbeat_s", 1), ("pruner.reduction_factor", 2)):
        if OmegaConf.select(spec, key) < low:
            raise ConfigError(f"hpo.{key}={OmegaConf.select(spec, key)}: must be at least {low}")
    if not search.params:
        raise ConfigError(f"{path}: no params to search (params: {{key: interval(lo, hi)}})")
    space(search.params)  # a bad range is refused before anything starts
    return search


def _reason(err: OmegaConfBaseException) -> str:
    """OmegaConf's message without its multi-line context: the key and what is wrong."""
    key = getattr(err, "full_key", None)
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{key}: {first}" if key else first


@dataclass(frozen=True)
class Param:
    """One searched key: how Optuna suggests its value, and the override that puts it into a trial."""

    key: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"one of {', '.join(map(str, self.choices))}"
        return f"{self.kind} {self.low} to {self.high}{' (log)' if self.log else ''}"


def space(params: dict[str, str]) -> list[Param]:
    """Hydra's sweep grammar (what the Hydra Optuna sweeper read): ``interval(lo, hi)`` (a float, or an int when
    both ends are ints), ``tag(log, interval(lo, hi))``, ``choice(a, b, ...)``, ``range(start, stop[, step])``."""
    parser = OverridesParser.create()
    out = []
    for key, text in params.items():
        where = f"params.{key}: {text}"
        try:
            value = parser.parse_override(f"{key}={text}").value()
        except HydraException as err:
            raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
        log = "log" in getattr(value, "tags", set())
        if isinstance(value, IntervalSweep):
            ints = isinstance(value.start, int) and isinstance(value.end, int)
            if not value.start < value.end or (log and value.start <= 0):
                raise ConfigError(f"{where}: needs low < high{' and low > 0 on a log scale' if log else ''}")
            out.append(Param(key, "int" if ints else "float", value.start, value.end, log))
        elif isinstance(value, RangeSweep):
            start, step = int(value.start), int(value.step or 1)
            if not value.start < value.stop or step < 1:
                raise ConfigError(f"{where}: needs start < stop and a step of at least 1")
            out.append(Param(key, "int", start, start + step * ((int(value.stop) - 1 - start) // step), log, step))
        elif isinstance(value, ChoiceSweep):
            out.append(Param(key, "categorical", choices=tuple(value.list)))
        else:
            raise ConfigError(f"{where}: not a search range; interval(lo, hi), tag(log, interval(lo, hi)), "
                              f"choice(a, b, ...) or range(start, stop)")
    return out


def override(key: str, value) -> str:
    """The trial's override for one sampled value (``repr`` keeps a float's every digit)."""
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
