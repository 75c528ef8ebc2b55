"""A config key's rule (its type and allowed values) and the one-line ``ConfigError`` when a value breaks it.

A leaf module: the config schema, the tasks and the regularizers declare their keys' rules with it without
importing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import ConfigError

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
          dict: "a mapping"}


def show(value) -> str:
    """A value as it is typed in an override: ``null``, ``true``/``false``, containers as plain lists and dicts."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def override_key(override: str) -> str:
    """The key a Hydra override sets: ``+trainer.epochs=3`` and ``~seed`` name ``trainer.epochs`` and ``seed``."""
    return override.split("=", 1)[0].lstrip("+~")


@dataclass(frozen=True)
class Rule:
    """A key's type (int, float, str, bool, list, dict) and its allowed values; ``optional`` admits null."""

    kind: type
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    optional: bool = False
    also: tuple = ()  # literal values allowed besides the kind, e.g. ("sturges",) for the number of bins
    or_kind: type | None = None  # a second type allowed with any value, e.g. str for "a fraction or a file"

    def allowed(self) -> str:
        if self.choices is not None:
            text = f"one of {', '.join(map(show, self.choices))}"
        else:
            bounds = [f"{op} {b:g}" for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                      if b is not None]
            text = f"{_NAMES[self.kind]}{' ' + ' and '.join(bounds) if bounds else ''}"
        text = " or ".join([*map(show, self.also), *([_NAMES[self.or_kind]] if self.or_kind else []), text])
        return f"null or {text}" if self.optional else text

    def ok(self, value) -> bool:
        if value is None:
            return self.optional
        if value in self.also and not isinstance(value, bool):
            return True
        if self.or_kind is not None and isinstance(value, self.or_kind) and not isinstance(value, bool):
            return True
        if self.kind is list:
            return isinstance(value, (list, tuple, ListConfig))
        if self.kind is dict:
            return isinstance(value, (dict, DictConfig))
        if isinstance(value, bool) != (self.kind is bool):
            return False
        if self.kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, self.kind):
            return False
        if self.choices is not None:
            return value in self.choices
        if self.kind in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                return False
            return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                    and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return True

    def check(self, key: str, value) -> None:
        if not self.ok(value):
            raise ConfigError(f"{key}={show(value)}: must be {self.allowed()}")


PROBABILITY = Rule(float, ge=0, lt=1)


HYDRA_KEYS = ("_target_", "_partial_")


def check_params(group: str, rules: dict[str, Rule | None], values, what: str | None = None) -> None:
    """Check each key of a group whose keys depend on its choice (a regularizer's, an optimizer's); a key whose
    rule is None is allowed with any value (what it is given to checks it). ``what``: the group's noun in the
    message, when not ``group``."""
    for key in values:
        if key in HYDRA_KEYS:
            continue
        if key not in rules:
            raise ConfigError(f"{group}.{key}: not a key of this {what or group} (known: {', '.join(sorted(rules))})")
        if rules[key] is not None:
            rules[key].check(f"{group}.{key}", values[key])
