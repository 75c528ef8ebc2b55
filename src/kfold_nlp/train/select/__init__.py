"""The selection policies' registry: each ``conf/select/<name>.yaml`` is a policy ``trainer.select`` and
``trainer.also_select`` may name, built from its ``_target_`` class and parameters.

To add a policy: a class in this package (a ``base.Policy`` or ``base.Averaged`` subclass with its ``chosen``
phrase) and ``conf/select/<name>.yaml`` naming it; a policy that only changes an existing class's parameters is the
YAML alone. A YAML's values may read the trainer's keys (``${oc.select:trainer.ema_decay,0.98}``): saved runs keep
their ``trainer.ema_decay`` and ``trainer.swa_evals``.
"""

from __future__ import annotations

from functools import cache

from hydra.utils import get_class
from omegaconf import OmegaConf

from ...config.paths import resource
from .base import Policy

FOLDER = resource("conf") / "select"
_FIRST = ("best", "best_epoch", "last", "ema", "swa")  # the order messages have always named them in; others follow


def _found() -> tuple[str, ...]:
    names = {p.stem for p in FOLDER.glob("*.yaml")}
    return tuple([n for n in _FIRST if n in names] + sorted(names - set(_FIRST)))


POLICIES = _found()  # every choice of trainer.select / trainer.also_select


@cache
def _spec(name: str) -> dict:
    """The policy's YAML as written (interpolations unresolved)."""
    if name not in POLICIES:
        raise ValueError(f"trainer.select={name}: must be one of {', '.join(POLICIES)}")
    return OmegaConf.to_container(OmegaConf.load(FOLDER / f"{name}.yaml"))


def policy_class(name: str) -> type[Policy]:
    return get_class(_spec(name)["_target_"])


def make(name: str, model, tcfg, planned: list[int]) -> Policy:
    """Policy ``name`` for a fold whose evaluations are planned at the optimizer steps ``planned``; its YAML's
    ``${trainer.<key>}`` read ``tcfg`` (a config node or a plain mapping)."""
    trainer = OmegaConf.to_container(tcfg, resolve=True) if OmegaConf.is_config(tcfg) else dict(tcfg)
    params = OmegaConf.to_container(OmegaConf.create({"trainer": trainer, "policy": _spec(name)}).policy, resolve=True)
    policy = get_class(params.pop("_target_"))(model, planned, **params)
    policy.name = name
    return policy


def policies(tcfg) -> list[str]:
    """The fold's policy first, then the others ``trainer.also_select`` scores, each once."""
    names = [tcfg.get("select", "best"), *(tcfg.get("also_select") or [])]
    return list(dict.fromkeys(names))


def chosen(name: str) -> str:
    """How a fold's line names the weights policy ``name`` kept ("best at step", "EMA of the steps to", ...)."""
    return policy_class(name).chosen


def without_evaluations(name: str) -> str:
    """The policy a refit (no validation rows, so no evaluations) keeps in place of ``name``: itself when it needs
    no evaluation (``last``, ``ema``), else ``last``."""
    return "last" if policy_class(name).needs_evaluations else name
