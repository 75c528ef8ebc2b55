"""What a search is: its preset (``conf/hpo/<name>.yaml``) and ``hpo.<key>=`` overrides read into a typed schema,
and its parameters in Hydra's sweep syntax turned into Optuna suggestions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from ..config.paths import resource
from ..config.rules import Int, invalid, one_line, plain
from ..errors import ConfigError

PREFIX = "hpo."  # a command-line override of the search itself; every other one goes to each trial
PRUNERS = ("none", "median", "halving")
# A preset's unknown key is refused; a number where a name is expected is that name (``hpo.study=2024``).
SPEC = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


def _pruner(name: str) -> str:
    if name not in PRUNERS:
        raise invalid(f"not a pruner; one of {', '.join(PRUNERS)}")
    return name


@pydantic_dataclass(config=SPEC)
class Sampler:
    seed: Int() | None = 42  # same seed, same trials (one worker; parallel trials interleave)
    n_startup_trials: Int(ge=0) = 5  # random trials before TPE models the results


@pydantic_dataclass(config=SPEC)
class Pruner:
    name: Annotated[str, AfterValidator(_pruner)] = "median"  # none | median | halving: Optuna's NopPruner,
    # MedianPruner, SuccessiveHalvingPruner
    n_startup_trials: Int(ge=0) = 3  # median: trials that run every fold before any trial is pruned
    n_warmup_folds: Int(ge=0) = 0  # median: folds every trial runs before it can be pruned
    reduction_factor: Int(ge=2) = 3  # halving: a trial goes on past a rung when in the best 1/reduction_factor there


@pydantic_dataclass(config=SPEC)
class Search:
    params: dict[str, str] = field(default_factory=dict)  # key -> interval(lo, hi), tag(log, interval(..)), choice(..)
    overrides: list[str] = field(default_factory=list)  # every trial's own fixed overrides (its regularizer, ...)
    study: str | None = None  # null: <preset>-<data.name>
    storage: str | None = None  # any Optuna RDB URL; null: sqlite:///<dir>/study.db
    dir: str | None = None  # the trials' run folders; null: outputs/hpo/<study>
    n_trials: Int(ge=1) = 20  # finished trials (complete or pruned) the study ends with, whatever the number of starts
    n_jobs: Int(ge=1) = 1  # trials at once on this machine, each a process with cores / n_jobs threads
    heartbeat_s: Int(ge=1) = 15  # a running trial says it is alive this often; one silent for 4x that is retried
    sampler: Sampler = field(default_factory=Sampler)
    pruner: Pruner = field(default_factory=Pruner)


def preset_path(preset: str) -> Path:
    """``rdrop`` -> ``conf/hpo/rdrop.yaml``; a path to a YAML file is taken as it is."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        return path
    return resource("conf") / "hpo" / f"{preset}.yaml"


def _checked(tree, where: str, prefix: str) -> Search:
    """``tree`` as a ``Search``, or one line: each key after ``prefix``, an unknown one after ``where`` it came
    from (the file or the overrides)."""
    def unknown(key: str, owner: type) -> str:
        key = key.removeprefix(prefix)
        return f"{where}: {key}: Key '{key.rpartition('.')[2]}' not in '{owner.__name__}'"

    try:
        return TypeAdapter(Search).validate_python(tree)
    except ValidationError as err:
        raise ConfigError(one_line(err, Search, tree, prefix=prefix, unknown=unknown)) from None


def load(preset: str, overrides: list[str]) -> Search:
    """The preset checked against the schema, then with the ``hpo.<key>=value`` overrides: a wrong key or value
    is one line naming the file or the override."""
    path = preset_path(preset)
    if not path.is_file():
        choices = sorted(p.stem for p in (resource("conf") / "hpo").glob("*.yaml"))
        raise ConfigError(f"{path}: no such search preset; one of {', '.join(choices)} (or a .yaml file)")
    try:
        preset_tree = OmegaConf.load(path)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_reason(err)}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:  # not YAML at all: the problem and its line
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML ({getattr(err, 'problem', None) or err}{at})") from None
    _checked(plain(preset_tree), str(path), f"{path}: ")
    try:
        tree = OmegaConf.merge(preset_tree, OmegaConf.from_dotlist([o[len(PREFIX):] for o in overrides]))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{' '.join(overrides)}: {_reason(err)}") from None
    search = _checked(plain(tree), " ".join(overrides), PREFIX)
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
