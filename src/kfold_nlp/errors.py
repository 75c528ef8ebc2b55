"""The error types every command reports as one ``error: ...`` line, and the exit status of each: a leaf module,
so that data loading, the config schema and the tasks can all raise them without importing each other."""

from __future__ import annotations

import errno
import re
import sys
from enum import IntEnum
from typing import NoReturn


class Exit(IntEnum):
    """Every command's exit status (README, "Bad input, bad configuration, divergence")."""

    DIVERGED = 1  # a fold's loss or validation MSE went non-finite
    BAD_INPUT = 2  # DataError, ConfigError: fix the data or the command line
    PRUNED = 3  # a search's trial stopped after a fold by its pruner (kfold_nlp.search)
    ENVIRONMENT = 75  # the machine, not the input (sysexits' EX_TEMPFAIL): fix it and run the same command again
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM


class OneLineError(ValueError):
    """``str(err)`` is one line: embedded newlines (pandas' messages, say) are folded, so logs stay greppable."""

    exit = Exit.BAD_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class DataError(OneLineError):
    """Bad input data: the line names the file (and the row, column or key when relevant) and the problem."""


class ConfigError(OneLineError):
    """A bad configuration value: the line names the key, the value and what is allowed."""


class EnvironmentFault(OneLineError):
    """A full disk, a read-only folder, an unreachable service: the line names the path or service and the fix;
    the command that failed continues where it stopped once the fault is gone."""

    exit = Exit.ENVIRONMENT


# errno -> (what happened, what to do about it)
_FAULTS = {
    errno.ENOSPC: ("no space left on device", "free some"),
    errno.EDQUOT: ("disk quota exceeded", "free some"),
    errno.EFBIG: ("file too large (the file-size limit, ulimit -f, or the file system's)", "raise the limit"),
    errno.EROFS: ("read-only file system", "make it writable"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
}


def os_errno(err: BaseException) -> int | None:
    """An OSError's errno, or the one a Rust writer (safetensors) reports only in its message: ``(os error 28)``."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found[1]) if found else None


def environment_fault(err: BaseException, path=None) -> EnvironmentFault | None:
    """``err`` as an ``EnvironmentFault`` naming its file (else ``path``); None when it is not the machine's."""
    if isinstance(err, EnvironmentFault):
        return err
    code = os_errno(err)
    if code not in _FAULTS:
        return None
    what, fix = _FAULTS[code]
    return EnvironmentFault(f"{getattr(err, 'filename', None) or path or 'a file'}: {what}; {fix}")


def refuse(err: Exception, then: str = "", path=None) -> NoReturn:
    """End a command on ``err``: its one line on stderr and its exit status. Another error becomes an
    ``EnvironmentFault`` (or is raised again when it is not one), whose line ends with ``then``: the command that
    continues once the fault is fixed."""
    if not isinstance(err, OneLineError):
        fault = environment_fault(err, path)
        if fault is None:
            raise err
        err = fault
    tail = f" and {then}" if then and isinstance(err, EnvironmentFault) else ""
    print(f"error: {err}{tail}", file=sys.stderr)
    sys.exit(err.exit)
