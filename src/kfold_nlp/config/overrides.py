"""Hydra's own refusals of a command line (a key that does not exist, a choice that does not, an override that does
not parse) as one ``error:`` line and exit status 2, with the nearest valid key or choice."""

from __future__ import annotations

import difflib
import os
import re
from contextlib import contextmanager

from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError, refuse

FLAG, OURS = "HYDRA_FULL_ERROR", "KFOLD_NLP_FULL_ERROR_SET"  # Hydra raises, instead of printing, with FLAG set


def explain(err: HydraException) -> str:
    """The one line for Hydra's composition error ``err``."""
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and isinstance(cause.parent_node, DictConfig) and cause.full_key:
        near = difflib.get_close_matches(str(cause.key), [str(k) for k in cause.parent_node.keys()], n=1)
        prefix = cause.full_key.rpartition(".")[0]
        hint = f"; did you mean {prefix + '.' if prefix else ''}{near[0]}?" if near else ""
        return f"{cause.full_key}: no such key{hint} (python -m kfold_nlp --cfg job lists them)"
    text = str(err)
    if isinstance(err, MissingConfigException):
        missing = re.search(r"Could not find '([^']+)'", text)
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        if missing and options:
            group, _, choice = missing[1].rpartition("/")
            near = difflib.get_close_matches(choice, options, n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            return f"{group}={choice}: no such choice (one of {', '.join(options)}){hint}"
    return " ".join(text.split("See https://")[0].split())


@contextmanager
def one_line_errors():
    """Around Hydra's main: its composition errors are raised to here (``FLAG``) and become one line; once the
    config is composed, ``composed()`` hands errors back to Hydra's usual report (the run reports its own)."""
    ours = FLAG not in os.environ
    if ours:
        os.environ[FLAG] = os.environ[OURS] = "1"
    try:
        yield
    except HydraException as err:
        refuse(ConfigError(explain(err)))
    finally:
        if ours:
            composed()


def composed() -> None:
    """The command line composed: put ``HYDRA_FULL_ERROR`` back as the user had it."""
    if os.environ.pop(OURS, None):
        os.environ.pop(FLAG, None)
