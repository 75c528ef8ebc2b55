"""The error types every command reports as one ``error: ...`` line, and the exit status of each: a leaf module,
so that data loading, the config schema and the tasks can all raise them without importing each other."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sys
from enum import IntEnum
from typing import NoReturn


class Exit(IntEnum):
    """Every command's exit status (the README's table; docs/errors.md)."""

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
    errno.EEXIST: ("a file is in the way (a folder is needed there)", "move that file"),
    errno.ENOTDIR: ("a file is in the way (a folder is needed there)", "move that file"),
    errno.EISDIR: ("is a folder (a file is needed there)", "give a file"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EIO: ("input/output error", "check the disk"),
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
    if code is None or (code not in _FAULTS and not isinstance(err, OSError)):
        return None
    what, fix = _FAULTS.get(code, (os.strerror(code).lower(), "fix it"))
    return EnvironmentFault(f"{getattr(err, 'filename', None) or path or 'a file'}: {what}; {fix}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a timeout, a preemption, ``kill``): a command ends as after Ctrl-C, with the line that resumes it."""


def on_sigterm(signum, frame) -> NoReturn:
    """The SIGTERM handler: ``Terminated`` once; a second SIGTERM (``make`` forwards the one ``timeout`` sends) is
    ignored, so it cannot break the shutdown with a traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def is_reported(err: BaseException) -> bool:
    """Whether ``report`` turns ``err`` into a line and a status (else it is a bug: its traceback is the report)."""
    return (isinstance(err, KeyboardInterrupt) or getattr(err, "exit", None) is not None
            or environment_fault(err) is not None)


def report(err: BaseException, then: str = "", path=None, kept: str | None = None) -> int:
    """The one place an error becomes what a command ends with: its line on stderr and its exit status (``Exit``).

    An error class says its status in ``exit`` (a ``OneLineError``, a diverged fold, a pruned trial, whose line is a
    log line: it is no error). An ``OSError`` of the machine becomes an ``EnvironmentFault`` naming its file (else
    ``path``), its line ending with ``then``: the command that continues once the fault is fixed. Ctrl-C and
    SIGTERM say ``kept`` (what is kept and how to continue) or that nothing was written. Anything else is raised
    again."""
    if isinstance(err, KeyboardInterrupt):
        how = "terminated" if isinstance(err, Terminated) else "interrupted"
        print(f"{how}: {kept}" if kept else f"{how} before anything was written", file=sys.stderr)
        return Exit.TERMINATED if isinstance(err, Terminated) else Exit.INTERRUPTED
    code = getattr(err, "exit", None)
    if code == Exit.PRUNED:
        logging.getLogger("kfold_nlp").info("%s", err)
        return code
    if code is None:
        fault = environment_fault(err, path)
        if fault is None:
            raise err
        err, code = fault, fault.exit
    tail = f" and {then}" if then and isinstance(err, EnvironmentFault) else ""
    print(f"error: {err}{tail}", file=sys.stderr)
    return code


def refuse(err: Exception, then: str = "", path=None) -> NoReturn:
    """End a command on ``err`` (``report``)."""
    sys.exit(report(err, then, path))
