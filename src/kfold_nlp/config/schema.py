"""The config schema: every key's type and valid range, checked on the composed config before anything is written.

Hydra already refuses unknown keys and unknown group choices with its own message. What it cannot know is that
``trainer.epochs=-1`` trains nothing or that ``model.pooling=max`` does not exist, so ``validate`` walks the composed
config against the rules below and raises ``ConfigError`` with one line naming the key, the value and what is
allowed: ``trainer.epochs=-1: must be an integer >= 1``. Type checks live here rather than in Hydra structured
configs because a structured-config type error is a multi-line Hydra report, not one line.

Groups whose keys depend on the choice declare their own rules next to their code: a regularizer or task class
has a ``params`` dict of ``Rule`` (so a new one stays a class and a YAML), and so has a tracker (``logger``). An
optimizer's keys are its class's keyword arguments and a scheduler's ``kwargs`` its schedule function's
(``inspect.signature``), so a new one is a YAML only; ``OPTIMIZER`` gives the ranges of the usual ones.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..bagging import BAGGING
from ..errors import ConfigError
from ..model.classical import KIND, is_classical
from ..model.optim import PENALTIES
from ..model.regressor import Pooler, load_tokenizer
from ..model.tasks import task_class
from ..track.base import tracker_class
from ..train.runtime import (
    PRECISIONS,
)
from ..train.selection import POLICIES
from .rules import PROBABILITY, Rule, check_params
from .rules import show as _show

# Keys of the fixed groups. Free-form mappings (model.config_overrides, scheduler.kwargs) are passed on as given.
RULES: dict[str, Rule] = {
    "name": Rule(str),
    "seed": Rule(int, ge=0),
    "resume": Rule(str, optional=True),
    "launcher": Rule(str, optional=True),
    "output": Rule(str, optional=True),
    "collect": Rule(bool),
    "data.name": Rule(str),
    "data.path": Rule(str),
    "data.source": Rule(str, optional=True),
    "data.test_path": Rule(str, optional=True),
    "data.id_col": Rule(str),
    "data.text_col": Rule(str),
    "data.target_col": Rule(str),
    "data.generate": Rule(dict, optional=True),
    "data.generate.n_train": Rule(int, ge=2),
    "data.generate.n_test": Rule(int, ge=0),
    "data.generate.seed": Rule(int, ge=0),
    "model.backbone": Rule(str),
    "model.tokenizer": Rule(str, optional=True),
    "model.pretrained": Rule(bool),
    "model.pooling": Rule(str, choices=Pooler.KINDS),
    "model.head_dropout": PROBABILITY,
    "model.backbone_dropout": Rule(float, ge=0, lt=1, optional=True),
    "model.config_overrides": Rule(dict),
    "model.max_length": Rule(int, ge=1),
    "model.kind": Rule(str, choices=("transformer", KIND), optional=True),  # absent: a transformer
    "model.estimator": Rule(dict, optional=True),  # kind=sklearn: the pipeline builder and its keyword arguments
    "trainer.epochs": Rule(int, ge=1),
    "trainer.batch_size": Rule(int, ge=1),
    "trainer.eval_batch_size": Rule(int, ge=1),
    "trainer.grad_accum": Rule(int, ge=1),
    "trainer.max_grad_norm": Rule(float, gt=0, optional=True),
    "trainer.penalty": Rule(str, choices=PENALTIES, optional=True),
    "trainer.penalty_weight": Rule(float, ge=0),
    "trainer.precision": Rule(str, choices=PRECISIONS),
    "trainer.eval_every": Rule(int, ge=1, optional=True),
    "trainer.evals_per_epoch": Rule(int, ge=1),
    "trainer.patience": Rule(int, ge=1, optional=True),
    "trainer.select": Rule(str, choices=POLICIES),
    "trainer.also_select": Rule(list),  # and each a policy (below)
    "trainer.ema_decay": Rule(float, gt=0, lt=1),
    "trainer.swa_evals": Rule(int, ge=1),
    "trainer.save_models": Rule(bool),
    "trainer.num_workers": Rule(int, ge=0),
    "trainer.snapshot_every": Rule(int, ge=1, optional=True),
    "trainer.keep_snapshot": Rule(bool),
    "cv.n_splits": Rule(int, ge=2),
    "cv.seed": Rule(int, ge=0),
    "cv.folds": Rule(list, optional=True),  # and each a fold number (below)
    "cv.bins": Rule(int, ge=1, also=("sturges",)),
    "cv.bagging": Rule(str, choices=BAGGING),
    "cv.holdout": Rule(float, gt=0, lt=1, optional=True, or_kind=str),  # a string: a file of ids (below)
    "scheduler.name": Rule(str),  # checked against transformers' SchedulerType below
    "scheduler.warmup": Rule(float, ge=0),
    "scheduler.kwargs": Rule(dict, optional=True),
    "distill.teacher": Rule(str, optional=True),
    "distill.weight": Rule(float, ge=0, le=1),
    "distill.unlabeled": Rule(str, optional=True),
}


TRANSFORMER_KEYS = tuple(k for k in RULES if k.startswith("model.") and k not in ("model.kind", "model.estimator"))

# The ranges of the optimizer keys that have one (torch.optim's own checks back these up); which keys an optimizer
# takes is its class's signature (``optimizer_rules``). head_lr and llrd are build_optimizer's, for every optimizer.
OPTIMIZER: dict[str, Rule] = {
    "lr": Rule(float, gt=0),
    "head_lr": Rule(float, gt=0, optional=True),
    "llrd": Rule(float, gt=0, le=1),
    "weight_decay": Rule(float, ge=0),
    "eps": Rule(float, gt=0),
    "betas": Rule(list),
    "momentum": PROBABILITY,
    "dampening": PROBABILITY,
    "nesterov": Rule(bool),
    "alpha": PROBABILITY,
    "rho": Rule(float, ge=0, le=1),
    "centered": Rule(bool),
    "lr_decay": Rule(float, ge=0),
    "initial_accumulator_value": Rule(float, ge=0),
    "amsgrad": Rule(bool),
    "foreach": Rule(bool, optional=True),
    "fused": Rule(bool, optional=True),
}


OWN_OPTIMIZER_KEYS = ("head_lr", "llrd")


SET_BY_BUILD = ("params", "optimizer", "num_warmup_steps", "num_training_steps")  # optim.py passes these itself


def keyword_rules(fn, known: dict[str, Rule]) -> dict[str, Rule | None] | None:
    """The keyword arguments of ``fn`` (a class: its constructor's) a config may give, each with its rule: from
    ``known``, else true/false or a number after its default, else None (the callee checks the value); None for
    all of them when ``fn`` takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    inferred = {bool: Rule(bool), float: Rule(float)}
    return {p.name: known.get(p.name, inferred.get(type(p.default))) for p in params
            if p.name not in SET_BY_BUILD and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def optimizer_rules(opt_cfg) -> dict[str, Rule | None]:
    """The keys of the optimizer YAML's ``_target_`` class, with build_optimizer's own."""
    from hydra.utils import get_class

    try:
        cls = get_class(opt_cfg._target_)
    except Exception as err:  # noqa: BLE001  (an import error, a missing attribute, not a class)
        raise ConfigError(f"optimizer._target_={opt_cfg._target_}: not an optimizer class "
                          f"({' '.join(str(err).split())[:160]})") from None
    return (keyword_rules(cls, OPTIMIZER) or {}) | {k: OPTIMIZER[k] for k in OWN_OPTIMIZER_KEYS}


def scheduler_rules(name: str) -> dict[str, Rule | None] | None:
    """The ``scheduler.kwargs`` keys of transformers' schedule ``name`` (None: it takes any)."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    return keyword_rules(TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)], {})


def _select(cfg, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False)


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


def validate(cfg: DictConfig, *, check_files: bool = True) -> None:
    """Raise ``ConfigError`` for the first key of ``cfg`` that breaks its rule (fixed groups, then the choices)."""
    classical = is_classical(cfg.model)
    for key, rule in RULES.items():
        if key.startswith("data.generate.") and not _select(cfg, "data.generate"):
            continue
        if classical and key in TRANSFORMER_KEYS:  # a scikit-learn pipeline has no backbone, pooling or tokenizer
            continue
        if is_missing(cfg, key):
            raise ConfigError(f"{key}: required, give it on the command line ({key}=...)")
        rule.check(key, _select(cfg, key))

    n_splits = cfg.cv.n_splits
    if cfg.cv.folds is not None:
        folds = list(cfg.cv.folds)
        if not folds or len(set(folds)) != len(folds) or not all(
                isinstance(f, int) and not isinstance(f, bool) and 0 <= f < n_splits for f in folds):
            raise ConfigError(f"cv.folds={_show(cfg.cv.folds)}: must be null or a non-empty list of distinct fold "
                              f"numbers from 0 to {n_splits - 1} (cv.n_splits={n_splits})")

    t = cfg.trainer
    bad = [p for p in t.also_select if p not in POLICIES]
    if bad:
        raise ConfigError(f"trainer.also_select={_show(t.also_select)}: {bad[0]} is not a policy; each must be one "
                          f"of {', '.join(POLICIES)}")
    holdout = cfg.cv.get("holdout")
    if isinstance(holdout, str) and check_files and not Path(holdout).is_file():
        raise ConfigError(f"cv.holdout={holdout}: no such file; give a fraction such as 0.2 or a file of ids")
    if t.precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.precision=fp16: needs CUDA; use bf16 or fp32 on CPU")
    if t.penalty is not None and t.penalty_weight == 0:
        raise ConfigError(f"trainer.penalty_weight=0: must be > 0 when trainer.penalty={t.penalty}")

    from transformers import SchedulerType

    names = [s.value for s in SchedulerType]
    if cfg.scheduler.name not in names:
        raise ConfigError(f"scheduler.name={cfg.scheduler.name}: must be one of {', '.join(names)}")

    check_params("optimizer", optimizer_rules(cfg.optimizer), cfg.optimizer)
    kwargs_rules = scheduler_rules(cfg.scheduler.name)
    if kwargs_rules is not None and cfg.scheduler.get("kwargs"):
        check_params("scheduler.kwargs", kwargs_rules, cfg.scheduler.kwargs, what="scheduler")
    betas = cfg.optimizer.get("betas")
    if betas is not None and (len(betas) != 2 or not all(PROBABILITY.ok(b) for b in betas)):
        raise ConfigError(f"optimizer.betas={_show(betas)}: must be two numbers >= 0 and < 1")
    check_params("regularizer", getattr(regularizer_class(cfg), "params", {}), cfg.regularizer)
    check_params("logger", tracker_class(cfg.logger).params, cfg.logger)
    if cfg.get("task") is not None:
        check_params("task", task_class(cfg).params, cfg.task)
    _check_distill(cfg)
    _check_launcher(cfg.get("launcher"))

    if classical:
        _check_estimator(cfg)
    else:
        _check_max_length(cfg.model)
    if check_files:
        _check_paths(cfg)


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
    check_params("model.estimator", keyword_rules(builder, {}) or {}, est, what="estimator")
    if _select(cfg, "distill.teacher") is not None:
        raise ConfigError(f"distill.teacher={cfg.distill.teacher}: model.kind=sklearn trains on the labels only; "
                          f"distil into a transformer")


def _check_max_length(model_cfg) -> None:
    """``max_length`` cannot exceed the backbone's position embeddings (read from its config, no weights loaded),
    and must leave room for one token beside the special ones: below that the tokenizer does not truncate at all
    (it warns and returns whole texts), and at it every text would be only ``[CLS] [SEP]``."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_cfg.backbone, **dict(model_cfg.config_overrides or {}))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.backbone={model_cfg.backbone}: cannot load its config "
                          f"({' '.join(str(err).split())[:200]})") from None
    limit = getattr(config, "max_position_embeddings", None)
    if limit and model_cfg.max_length > limit:
        raise ConfigError(f"model.max_length={model_cfg.max_length}: must be <= {limit}, the backbone's positions")
    try:
        special = load_tokenizer(model_cfg).num_special_tokens_to_add()
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.tokenizer={model_cfg.get('tokenizer') or model_cfg.backbone}: cannot load it "
                          f"({' '.join(str(err).split())[:200]})") from None
    if model_cfg.max_length < special + 1:
        raise ConfigError(f"model.max_length={model_cfg.max_length}: must be >= {special + 1}, the tokenizer's "
                          f"{special} special tokens and one of the text")


def _check_paths(cfg) -> None:
    for key in ("data.path", "data.test_path"):
        value = _select(cfg, key)
        if value is not None and Path(value).is_dir():
            raise ConfigError(f"{key}={value}: is a folder; give the CSV file")
    if cfg.get("resume") is not None:
        check_run_folder(Path(cfg.resume), "resume")
    if _select(cfg, "distill.teacher") is not None:
        check_run_folder(Path(cfg.distill.teacher), "distill.teacher")


def check_run_folder(path: Path, key: str) -> None:
    """A run folder is one that ``prepare`` started: it holds ``run_config.yaml``."""
    if not path.exists():
        raise ConfigError(f"{key}={path}: does not exist")
    if not path.is_dir():
        raise ConfigError(f"{key}={path}: is a file; give the run folder (the one holding run_config.yaml)")
    if not (path / "run_config.yaml").is_file():
        raise ConfigError(f"{key}={path}: not a run folder (no run_config.yaml)")
