"""One writer per run folder and per fold folder: exclusive locks, so two starts of one run never interleave writes.

``<run folder>/.lock`` is held by whoever owns the run: a single-process run and the launcher of parallel fold jobs
(taken in Hydra's ``on_run_start``, before Hydra rewrites ``.hydra/`` or appends to ``run.log``), a sweep job, and
``collect``. ``fold_<k>/.lock`` is held by whoever trains fold k: a parallel fold job, or the single-process run while
it trains that fold. Taking a run folder also checks that no fold of it is still being written (a fold job whose
launcher died), so a resume never trains beside an orphan. A second writer is refused at once with one line naming
the holder's pid, from ``.lock.pid`` beside the lock file (the process it refuses cannot read the flock itself).
"""

from __future__ import annotations

import atexit
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from ..errors import DataError, report
from ..rundir import RunDir, claim

LOCK, HOLDER = ".lock", ".lock.pid"


FILES = frozenset({LOCK, HOLDER})  # what the locks add to a folder: never a result


_held: dict[Path, FileLock] = {}  # the folders this process holds: taking one again is a no-op


class Busy(DataError):
    """Another live process writes the folder: refused before anything is written, and the folder is left alone."""


def holder(folder: Path) -> str:
    try:
        return f"pid {int((folder / HOLDER).read_text())}"
    except (OSError, ValueError):
        return "pid unknown"


def _refusal(folder: Path, what: str) -> Busy:
    return Busy(f"{folder}: another process ({holder(folder)}) is writing this {what}; wait for it or stop it")


def hold(folder: Path, what: str = "run folder") -> bool:
    """Take ``folder``'s lock until ``release`` (or this process ends); False if this process holds it already."""
    folder = Path(folder).resolve()
    if folder in _held:
        return False
    lock = FileLock(folder / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _refusal(folder, what) from None
    (folder / HOLDER).write_text(f"{os.getpid()}\n")
    _held[folder] = lock
    return True


def hold_run(run_dir: Path) -> bool:
    """``hold`` a run folder none of whose folds another process still writes (a fold job whose launcher died)."""
    taken = hold(run_dir)
    busy = [f.parent for f in sorted(Path(run_dir).glob(f"fold_*/{LOCK}")) if not is_free(f.parent)] if taken else []
    if busy:
        release(run_dir)
        raise _refusal(busy[0].resolve(), "fold")
    return taken


def release(folder: Path) -> None:
    lock = _held.pop(Path(folder).resolve(), None)
    if lock is not None:
        (Path(folder) / HOLDER).unlink(missing_ok=True)
        lock.release()


@atexit.register
def _release_all() -> None:
    for folder in list(_held):
        release(folder)


def is_free(folder: Path) -> bool:
    """No other process holds ``folder``'s lock (this one may)."""
    folder = Path(folder).resolve()
    if folder in _held or not (folder / LOCK).exists():
        return True
    probe = FileLock(folder / LOCK, timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return False
    probe.release()
    return True


@contextmanager
def writing(cfg, run_dir: Path, when: bool = True):
    """Hold, for the block, what a start writes (``when``: on this rank): a parallel fold job (``output``,
    ``collect=false``) its folds, anything else its run folder. What was held before stays held after it."""
    fold_job = cfg.get("output") is not None and not cfg.get("collect", True) and cfg.cv.get("folds") is not None
    folders, taken = [run_dir / f"fold_{k}" for k in cfg.cv.folds] if fold_job else [run_dir], []
    try:
        for folder in folders if when else ():
            folder.mkdir(parents=True, exist_ok=True)
            if hold(folder, "fold") if fold_job else hold_run(folder):
                taken.append(folder)
        yield
    finally:
        for folder in taken:
            release(folder)


@contextmanager
def writing_fold(fold_dir: Path, when: bool = True):
    """Hold ``fold_<k>/`` while this process trains it (``when``: on this rank)."""
    if when:
        fold_dir.mkdir(parents=True, exist_ok=True)
    taken = when and hold(fold_dir, "fold")
    try:
        yield
    finally:
        if taken:
            release(fold_dir)


class RunLock(Callback):
    """Takes the folder of a single run before Hydra writes into it (a sweep's jobs lock theirs in ``cv.run``, a
    fold job its fold); under torchrun only rank 0 writes, so only rank 0 locks. A refused start ends here."""

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        if config.get("output") is not None or int(os.environ.get("RANK", 0)) != 0:
            return
        HydraConfig.instance().set_config(config)  # what run_job does first, so that ${hydra:...} resolves
        named = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        try:
            run_dir = claim(lambda: OmegaConf.select(config, "hydra.run.dir"))  # before Hydra would make it
            hold_run(run_dir)
        except (Busy, OSError) as err:  # another writer; a read-only or full disk
            then = f"resume with RESUME={named}" if RunDir(named).is_run() else "start the run again"
            sys.exit(report(err, then=then))
