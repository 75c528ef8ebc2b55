"""The machine's faults (a full disk, a file-size limit, a read-only folder, W&B unreachable): one ``error:`` line
naming the path or service, exit 75, nothing that looks finished, the earlier files as they were; and the same
command continues the run once the fault is gone."""

from __future__ import annotations

import errno
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, cli, copy_run
from kfold_nlp.cv import collect
from kfold_nlp.errors import Exit
from kfold_nlp.files import LogFile, atomic_path

KEPT_OUT = (".hydra", "run.log", "wandb")  # rewritten by every start (Hydra, W&B): not results


def files(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run folder but Hydra's, the log, W&B's and the locks, by relative path."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] not in KEPT_OUT
            and p.name not in (".lock", ".lock.pid")}  # the run folder's locks (src/kfold_nlp/lock.py)


@pytest.fixture
def unfinished_run(tiny_run, tmp_path) -> Path:
    """The shared run as if stopped while fold 2 trained: folds 0 and 1 finished, nothing collected."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("wandb", "fold_2"))
    for name in ("oof.csv", "submission.csv", "metrics.json"):
        (run_dir / name).unlink()
    return run_dir


@contextmanager
def file_size_limit():
    """``ulimit -f`` of 64 KiB (the soft limit, so that it can be lifted again): the first model or snapshot written
    is too large (EFBIG, SIGXFSZ ignored)."""
    handler, limits = signal.signal(signal.SIGXFSZ, signal.SIG_IGN), resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


@contextmanager
def unreachable_wandb():
    """An API key, and a W&B server address nothing listens on. wandb reads its settings from the environment once
    per process (then keeps them, with its service): torn down before and after, as a new process starts."""
    import wandb

    wandb.teardown()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("WANDB_MODE", raising=False)
        for name, value in {"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
                            "WANDB_INIT_TIMEOUT": "2"}.items():
            patch.setenv(name, value)
        try:
            yield
        finally:
            wandb.teardown()


# Root writes into a read-only folder anyway: this drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding
# set (prctl PR_CAPBSET_DROP), then execs the command, which so starts without them and the folder's mode holds for
# it. A process of its own, not a preexec_fn: this one has threads (background work), where forking to run Python
# code before exec is unsafe.
WITHOUT_ROOT_OVERRIDE = """
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            os._exit(99)  # the test skips on this code
os.execv(sys.argv[1], sys.argv[1:])
"""


FAULTS = {  # while the command runs, its logger, what the line names (after "error: ") and says
    "file_size_limit": (file_size_limit, "disabled", "{run}", "file too large"),
    "wandb_unreachable": (unreachable_wandb, "online", "W&B (127.0.0.1)", "check the network and the API key"),
}


def assert_one_line_then_resume(proc, run_dir: Path, where: str, what: str, before: dict, tiny_run: Path) -> None:
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == Exit.ENVIRONMENT and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith(f"error: {where.format(run=run_dir)}") and what in last, last
    assert last.endswith(f" and resume with RESUME={run_dir}"), last
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [last]
    assert files(run_dir) == before  # nothing new looks finished, nothing earlier changed

    cli("cv", f"resume={run_dir}", "logger.mode=disabled")
    for name in ("oof.csv", "submission.csv"):
        assert (run_dir / name).read_bytes() == (tiny_run / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_of_the_machine_ends_in_one_line_and_the_resume_finishes_the_run(fault, unfinished_run, tiny_run):
    run_dir = unfinished_run
    during, logger, where, what = FAULTS[fault]
    before = files(run_dir)
    with during():
        proc = cli("cv", f"resume={run_dir}", f"logger.mode={logger}", check=False)
    assert_one_line_then_resume(proc, run_dir, where, what, before, tiny_run)


@pytest.mark.process  # without root's permission override: dropped for a process of its own
def test_a_read_only_run_folder_ends_in_one_line_and_the_resume_finishes_the_run(unfinished_run, tiny_run):
    run_dir = unfinished_run
    before = files(run_dir)
    run_dir.chmod(0o555)
    try:
        proc = subprocess.run([sys.executable, "-c", WITHOUT_ROOT_OVERRIDE, sys.executable, "-m", "kfold_nlp.cli", "cv",
                               f"resume={run_dir}", "logger.mode=disabled"], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
    finally:
        run_dir.chmod(0o755)
    if proc.returncode == 99:
        pytest.skip("cannot drop root's permission override here")
    assert_one_line_then_resume(proc, run_dir, "{run}/.lock.pid",  # the first file a start writes
                                "permission denied; make it writable", before, tiny_run)


@pytest.mark.slow
def test_collect_on_a_full_disk_ends_in_one_line_and_collects_once_there_is_space(tiny_run, tmp_path, capsys,
                                                                               monkeypatch):
    """ENOSPC as a write reports it (no file name): the line names the file being written."""
    run_dir = copy_run(tiny_run, tmp_path / "run")
    before = files(run_dir)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_csv", full)
        with pytest.raises(SystemExit) as exit_:
            collect.main([str(run_dir)])
    err = capsys.readouterr().err
    assert exit_.value.code == Exit.ENVIRONMENT and "Traceback" not in err
    assert err.strip() == (f"error: {run_dir / 'folds.csv'}: no space left on device; free some and collect again "
                           f"(make collect RUN={run_dir})")
    assert files(run_dir) == before

    collect.main([str(run_dir)])
    for name in ("oof.csv", "submission.csv"):
        assert (run_dir / name).read_bytes() == before[name], name


def test_a_rust_writers_error_names_the_file_being_written(tmp_path):
    """safetensors reports an OSError only in its message: it becomes the OSError, naming the file."""
    from safetensors import SafetensorError

    target = tmp_path / "model.safetensors"
    with pytest.raises(OSError) as caught:
        with atomic_path(target):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # no temporary left


def test_the_log_file_drops_a_line_it_cannot_write_without_a_traceback(tmp_path, capsys):
    handler = LogFile(tmp_path / "run.log")
    logger = logging.getLogger("test_environment.log_file")
    logger.addHandler(handler)
    try:
        def full(*args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        handler.stream.write = full
        logger.warning("a line on a full disk")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert capsys.readouterr().err == ""
