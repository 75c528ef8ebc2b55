"""The only atomic writer, with the JSON and CSV helpers on it: a killed run never leaves a half-written file that
looks complete, and a renamed file has reached the disk (fsync before the rename), so a crash cannot leave an empty
file under the final name either."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .errors import os_errno


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in the same folder; it replaces ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
        yield Path(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except Exception as err:  # a full disk, say: the error names the file being written, never its temporary
        code, named = os_errno(err), getattr(err, "filename", None)
        if code is None or (named is not None and not str(named).endswith(".tmp")):
            raise
        raise OSError(code, os.strerror(code), str(path)) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


class LogFile(logging.FileHandler):
    """``run.log``: on a full or read-only disk a lost line is dropped quietly (the default prints a traceback per
    line); the next result file written then fails and ends the run with one line naming the fault."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())
