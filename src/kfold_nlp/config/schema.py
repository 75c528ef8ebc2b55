"""The config schema: one pydantic model per config group, checked on the composed config before anything is
written, and the upgrade of an older run's config to it.

Hydra already refuses unknown keys and unknown group choices with its own message. What it cannot know is that
``trainer.epochs=-1`` trains nothing or that ``model.pooling=max`` does not exist, so ``validate`` checks the
composed config against the models below and raises ``ConfigError`` with one line naming the key, the value and
what is allowed (``rules.one_line``): ``trainer.epochs=-1: must be an integer >= 1``.

Groups whose keys depend on the choice declare their own keys next to their code: a regularizer, task or tracker
class has a ``params`` table of types (so a new one stays a class and a YAML). An optimizer's keys are its class's
keyword arguments and a scheduler's ``kwargs`` its schedule function's (``rules.keyword_params``), so a new one is
a YAML only; ``OPTIMIZER`` gives the ranges of the usual ones.

A key added after runs were made has the default that gives what those runs did (``added``): ``upgrade`` gives it
to an older ``run_config.yaml``, with the classes that moved (``MOVED``) under their new names.
"""

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated

from omegaconf import DictConfig, OmegaConf
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WrapValidator, model_validator
from transformers import SchedulerType
from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

from ..bagging import BAGGING
from ..errors import ConfigError
from ..model.classical import KIND, check_estimator, is_classical
from ..model.lora import LORA
from ..model.optim import PENALTIES
from ..model.regressor import Pooler
from ..model.tasks import task_class
from ..track.base import tracker_class
from ..train.precision import PRECISIONS
from ..train.selection import POLICIES
from . import rules
from .rules import PROBABILITY, Bool, Choice, Float, Int, List, Mapping, Str, check_params, model_of


def added(default):
    """A key added after runs were made: ``default`` gives what those runs did (``upgrade``)."""
    return Field(default, json_schema_extra={"added": True})


class Group(BaseModel):
    """A fixed config group: its keys' types. A key it does not declare is refused: Hydra refuses a new key only
    when it is given without ``+`` (``+trainer.epoch=2`` would be added and read by nothing)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Generate(Group):
    n_train: Int(ge=2)
    n_test: Int(ge=0)
    seed: Int(ge=0)


class Data(Group):
    name: Str
    path: Str
    source: Str | None = None
    test_path: Str | None = None
    id_col: Str
    text_col: Str
    target_col: Str
    generate: Generate | None = None


class Classical(Group):
    """``model.kind=sklearn``: a scikit-learn pipeline, with no backbone, pooling or tokenizer."""

    kind: Choice("transformer", KIND) | None = None  # absent: a transformer
    estimator: Mapping | None = None  # the pipeline builder (_target_) and its keyword arguments


class Lora(Group):
    r: Int(ge=1)
    alpha: Float(gt=0)
    dropout: PROBABILITY
    target_modules: List | None = None


class Transformer(Group):
    backbone: Str
    tokenizer: Str | None = None
    pretrained: Bool
    pooling: Choice(*Pooler.KINDS)
    head_dropout: PROBABILITY
    backbone_dropout: PROBABILITY | None = None
    config_overrides: Mapping
    max_length: Int(ge=1)
    gradient_checkpointing: Bool = added(False)
    peft: Choice(LORA) | None = added(None)
    lora: Lora | None = added(None)
    kind: Choice("transformer", KIND) | None = None
    estimator: Mapping | None = None

    @model_validator(mode="after")
    def _lora_has_settings(self):
        if self.peft == LORA and self.lora is None:
            raise rules.refused("model.lora: needed with model.peft=lora (r, alpha, dropout, target_modules)")
        return self


def _policies(value: list) -> list:
    bad = [p for p in value if p not in POLICIES]
    if bad:
        raise rules.invalid(f"{rules.show(bad[0])} is not a policy; each must be one of {', '.join(POLICIES)}")
    return value


class Trainer(Group):
    epochs: Int(ge=1)
    batch_size: Int(ge=1)
    eval_batch_size: Int(ge=1)
    grad_accum: Int(ge=1)
    max_grad_norm: Float(gt=0) | None = None
    penalty: Choice(*PENALTIES) | None = None
    penalty_weight: Float(ge=0)
    precision: Choice(*PRECISIONS)
    eval_every: Int(ge=1) | None = None
    evals_per_epoch: Int(ge=1)
    patience: Int(ge=1) | None = None
    select: Choice(*POLICIES) = added("best")
    also_select: Annotated[List, AfterValidator(_policies)] = added([])
    ema_decay: Float(gt=0, lt=1) = added(0.98)
    swa_evals: Int(ge=1) = added(4)
    save_models: Bool
    num_workers: Int(ge=0)
    snapshot_every: Int(ge=1) | None = None
    keep_snapshot: Bool
    eval_curve: Bool = added(True)
    compile: Bool = added(False)
    fast_dropout: Bool = added(False)  # runs made before it drew PyTorch's masks

    @model_validator(mode="after")
    def _penalty_has_weight(self):
        if self.penalty is not None and self.penalty_weight == 0:
            raise rules.refused(f"trainer.penalty_weight=0: must be > 0 when trainer.penalty={self.penalty}")
        return self


class Cv(Group):
    n_splits: Int(ge=2)
    seed: Int(ge=0)
    folds: List | None = None
    bins: Choice("sturges") | Int(ge=1)
    bagging: Choice(*BAGGING)
    holdout: Str | Float(gt=0, lt=1) | None = added(None)  # a string: a file of ids

    @model_validator(mode="after")
    def _folds_exist(self):
        folds, n = self.folds, self.n_splits
        if folds is not None and (not folds or not all(
                isinstance(f, int) and not isinstance(f, bool) and 0 <= f < n for f in folds)
                or len(set(folds)) != len(folds)):
            raise rules.refused(f"cv.folds={rules.show(folds)}: must be null or a non-empty list of distinct fold "
                                f"numbers from 0 to {n - 1} (cv.n_splits={n})")
        return self


class Scheduler(Group):
    name: Choice(*(s.value for s in SchedulerType))
    warmup: Float(ge=0)
    kwargs: Mapping | None = None  # the schedule function's keyword arguments (scheduler_params)


class Distill(Group):
    teacher: Str | None = None
    weight: Float(ge=0, le=1)
    unlabeled: Str | None = None


def _not_a_key(key: str, owner: type) -> str:
    """The line for a key the schema does not know, with the nearest one it does."""
    import difflib

    group, _, name = key.rpartition(".")
    near = difflib.get_close_matches(name, list(owner.__pydantic_fields__), n=1)
    hint = f"; did you mean {group + '.' if group else ''}{near[0]}?" if near else ""
    return f"{key}: not a key of {group or 'the config'}{hint} (python -m kfold_nlp --cfg job lists them)"


class Config(Group):
    """The composed config's fixed keys; the groups chosen by class (optimizer, regularizer, task, logger) are
    checked against their class's keys."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())  # those groups, Hydra's, a saved run's own

    name: Str
    seed: Int(ge=0)
    resume: Str | None = None
    launcher: Str | None = None
    output: Str | None = None
    collect: Bool
    data: Data
    model: Transformer
    trainer: Trainer
    cv: Cv
    scheduler: Scheduler
    distill: Distill


class ClassicalConfig(Config):
    model: Classical


def schema(classical: bool) -> type[Config]:
    return ClassicalConfig if classical else Config


@dataclass(frozen=True)
class Key:
    """One dotted key of the schema: the type of its value and whether it may be null (or left out)."""

    kind: type
    optional: bool


def keys(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, Key]:
    """Every dotted key of ``model``, a group's before its own keys."""
    out = {}
    for name, field in model.__pydantic_fields__.items():
        out[prefix + name] = Key(rules.kind(field.rebuild_annotation()), rules.nullable(field.annotation))
        inner = model_of(field.annotation)
        if inner is not None:
            out |= keys(inner, f"{prefix}{name}.")
    return out


RULES = keys()


def _pair(value, handler):
    try:
        return handler(value)
    except ValidationError:
        raise rules.invalid("must be two numbers >= 0 and < 1") from None


# The ranges of the optimizer keys that have one (torch.optim's own checks back these up); which keys an optimizer
# takes is its class's signature (``optimizer_params``). head_lr and llrd are build_optimizer's, for every optimizer.
OPTIMIZER = {
    "lr": Float(gt=0),
    "head_lr": Float(gt=0) | None,
    "llrd": Float(gt=0, le=1),
    "weight_decay": Float(ge=0),
    "eps": Float(gt=0),
    "betas": Annotated[list[PROBABILITY], Field(strict=True, min_length=2, max_length=2), WrapValidator(_pair)],
    "momentum": PROBABILITY,
    "dampening": PROBABILITY,
    "nesterov": Bool,
    "alpha": PROBABILITY,
    "rho": Float(ge=0, le=1),
    "centered": Bool,
    "lr_decay": Float(ge=0),
    "initial_accumulator_value": Float(ge=0),
    "amsgrad": Bool,
    "foreach": Bool | None,
    "fused": Bool | None,
}


OWN_OPTIMIZER_KEYS = ("head_lr", "llrd")


@cache
def _optimizer_params(cls) -> dict:
    return (rules.keyword_params(cls, OPTIMIZER) or {}) | {k: OPTIMIZER[k] for k in OWN_OPTIMIZER_KEYS}


def optimizer_params(opt_cfg) -> dict:
    """The keys of the optimizer YAML's ``_target_`` class, with build_optimizer's own."""
    from hydra.utils import get_class

    try:
        cls = get_class(opt_cfg._target_)
    except Exception as err:  # noqa: BLE001  (an import error, a missing attribute, not a class)
        raise ConfigError(f"optimizer._target_={opt_cfg._target_}: not an optimizer class "
                          f"({' '.join(str(err).split())[:160]})") from None
    return _optimizer_params(cls)


@cache
def scheduler_params(name: str) -> dict | None:
    """The ``scheduler.kwargs`` keys of transformers' schedule ``name`` (None: it takes any)."""
    return rules.keyword_params(TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)], {})


@cache
def _builder_params(builder) -> dict:
    return rules.keyword_params(builder, {}) or {}


def is_missing(cfg, key: str) -> bool:
    """A ``???`` value (a key the user must give), for a dotted key."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    try:
        return node is not None and OmegaConf.is_missing(node, leaf)
    except (KeyError, AttributeError, ValueError):  # no such key
        return False


def regularizer_class(cfg):
    from hydra.utils import get_class

    return get_class(cfg.regularizer._target_)


def validate(cfg: DictConfig, *, check_files: bool = True) -> None:
    """Raise ``ConfigError`` for the first key of ``cfg`` that breaks its type (fixed groups, then the choices)."""
    classical = is_classical(cfg.model)
    model = schema(classical)
    tree = rules.plain(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg)
    try:
        model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(rules.one_line(err, model, tree, unknown=_not_a_key)) from None

    holdout = cfg.cv.get("holdout")
    if isinstance(holdout, str) and check_files and not Path(holdout).is_file():
        raise ConfigError(f"cv.holdout={holdout}: no such file; give a fraction such as 0.2 or a file of ids")
    if cfg.trainer.precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.precision=fp16: needs CUDA; use bf16 or fp32 on CPU")
    check_params("optimizer", optimizer_params(cfg.optimizer), cfg.optimizer)
    kwargs = scheduler_params(cfg.scheduler.name)
    if kwargs is not None and cfg.scheduler.get("kwargs"):
        check_params("scheduler.kwargs", kwargs, cfg.scheduler.kwargs, what="scheduler")
    check_params("regularizer", getattr(regularizer_class(cfg), "params", {}), cfg.regularizer)
    check_params("logger", tracker_class(cfg.logger).params, cfg.logger)
    if cfg.get("task") is not None:
        check_params("task", task_class(cfg).params, cfg.task)
    _check_distill(cfg)
    _check_launcher(cfg.get("launcher"))

    if classical:
        _check_estimator(cfg)
    if check_files:
        _check_paths(cfg)


def _check_distill(cfg) -> None:
    """Pseudo-labels are a teacher's predictions, and unlabeled rows have no standard_error to offer a task."""
    d = cfg.get("distill")
    if d is None or d.unlabeled is None:
        return
    if d.teacher is None:
        raise ConfigError(f"distill.unlabeled={d.unlabeled}: needs distill.teacher (the pseudo-labels are its "
                          f"predictions)")
    if task_class(cfg).columns:
        raise ConfigError(f"distill.unlabeled={d.unlabeled}: unlabeled rows have no standard_error, which "
                          f"task={task_class(cfg).name} needs; use task=single")


def _check_launcher(launcher: str | None) -> None:
    """A launcher Hydra does not know fails in the multirun it starts, after the run folder was prepared."""
    from hydra.core.global_hydra import GlobalHydra

    if launcher is None or not GlobalHydra.instance().is_initialized():
        return
    known = GlobalHydra.instance().config_loader().get_group_options("hydra/launcher")
    if launcher not in known:
        raise ConfigError(f"launcher={launcher}: must be one of {', '.join(known)} (conf/hydra/launcher/ and the "
                          f"installed launcher plugins)")


def _check_estimator(cfg) -> None:
    """A classical preset's builder and its keys (the builder's keyword arguments); no teacher (it trains on
    labels only)."""
    from hydra.utils import get_method

    est = cfg.model.get("estimator")
    if est is None or "_target_" not in est:
        raise ConfigError("model.estimator: required with model.kind=sklearn (its _target_: a pipeline builder)")
    try:
        builder = get_method(est._target_)
    except Exception as err:  # noqa: BLE001  (an import error, a missing attribute)
        raise ConfigError(f"model.estimator._target_={est._target_}: not a function "
                          f"({' '.join(str(err).split())[:160]})") from None
    check_params("model.estimator", _builder_params(builder), est, what="estimator")
    check_estimator(est)  # scikit-learn's own checks of every step's parameters, before any folder
    if OmegaConf.select(cfg, "distill.teacher") is not None:
        raise ConfigError(f"distill.teacher={cfg.distill.teacher}: model.kind=sklearn trains on the labels only; "
                          f"distil into a transformer")


def _check_paths(cfg) -> None:
    for key in ("data.path", "data.test_path"):
        value = OmegaConf.select(cfg, key)
        if value is not None and Path(value).is_dir():
            raise ConfigError(f"{key}={value}: is a folder; give the CSV file")


# --- an older run's config ---

# Classes that moved: an older run_config.yaml names them where they were.
MOVED = {"kfold_nlp.tasks.": "kfold_nlp.model.tasks.", "kfold_nlp.regularizers.": "kfold_nlp.model.regularizers."}


def _classical(tree: dict) -> bool:
    return isinstance(tree.get("model"), dict) and is_classical(tree["model"])


def upgrade(tree: dict) -> dict:
    """A run's config (plain, as read) brought up to date: each key added since it was written (``added``) with
    the value that gives what the run did, and moved classes under their new names."""
    def add(model, node) -> None:
        for name, field in model.__pydantic_fields__.items():
            if name not in node and (field.json_schema_extra or {}).get("added"):
                node[name] = copy.deepcopy(field.default)
            inner = model_of(field.annotation)
            if inner is not None and isinstance(node.get(name), dict):
                add(inner, node[name])

    def moved(node):
        if isinstance(node, dict):
            return {k: moved(v) for k, v in node.items()}
        if isinstance(node, list):
            return [moved(v) for v in node]
        if isinstance(node, str):
            for old, new in MOVED.items():
                if node.startswith(old):
                    return new + node[len(old):]
        return node

    if isinstance(tree, dict):
        add(schema(_classical(tree)), tree)
    return moved(tree)


def first_missing(tree) -> str | None:
    """The first key the schema requires that ``tree`` (a run's config, plain) lacks, else None. A key that may be
    null may be left out; the keys below a null group (``data.generate: null``) need not be there."""
    def first(model, node, prefix: str) -> str | None:
        for name, field in model.__pydantic_fields__.items():
            inner, optional = model_of(field.annotation), rules.nullable(field.annotation)
            if not isinstance(node, dict) or (name not in node and inner is None and not optional):
                return prefix + name
            if inner is not None and (name not in node or node[name] is not None):
                found = first(inner, node.get(name, {}), f"{prefix}{name}.")
                if found:
                    return found
        return None

    return first(schema(_classical(tree)), tree, "") if isinstance(tree, dict) else "name"
