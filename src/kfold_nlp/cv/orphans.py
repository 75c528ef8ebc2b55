"""Fold jobs end with their launcher: a launcher killed outright (``kill -9``) leaves no job training into its folder.

Each process watches the one that started it, named (host, pid, start time: a reused pid is not it) in
``KFOLD_NLP_LAUNCHER``: the launcher's multirun process watches the launcher, each job (a joblib worker, a
submitit_local process) that multirun process. Once it is gone, a process ends itself with SIGTERM, so a fold job
stops as after ``kill``, with its resume line. The chain ends top-down: the multirun process is gone before its
jobs stop, so it cannot take them down with it (loky ends every worker once one exits unexpectedly). A job on
another host (SLURM) is left to its scheduler: ``scancel`` ends it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time

import psutil
from hydra.experimental.callback import Callback

ENV = "KFOLD_NLP_LAUNCHER"


POLL_S = 1.0


GRACE_S = 30.0  # after its SIGTERM, how long a job may take to unwind (finish a step, close W&B) before it is ended


_gone = threading.Event()


_watcher: threading.Thread | None = None


def child_env() -> dict[str, str]:
    """The environment entry that ties the processes this one starts to it."""
    me = psutil.Process()
    return {ENV: f"{socket.gethostname()} {me.pid} {me.create_time()!r}"}


def _alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _watch(pid: int, created: float) -> None:
    while _alive(pid, created):
        time.sleep(POLL_S)
    _gone.set()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)  # a job that ignored or could not act on SIGTERM (busy in native code, a handler of its own)
    os._exit(143)


def watch() -> None:
    """End this process once the process of the launch chain that started it is gone, and name this one to the
    processes it starts in turn; a no-op outside a launcher's multirun."""
    global _watcher
    host, _, rest = os.environ.get(ENV, "").partition(" ")
    if _watcher is not None or host != socket.gethostname():
        return
    pid, created = rest.split()
    _watcher = threading.Thread(target=_watch, args=(int(pid), float(created)), name="launcher-watch", daemon=True)
    _watcher.start()
    os.environ.update(child_env())


def abandoned() -> bool:
    """The process that started this one is gone (this process is ending because of it)."""
    return _gone.is_set()


def exit_now(code: int) -> None:
    """End the process itself, not only its job: a joblib worker would otherwise wait for a next job that never
    comes."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the launcher that read it is gone
            pass
    os._exit(code)


class EndWithLauncher(Callback):
    """Starts the watch in the launcher's multirun process (before it starts any worker) and in each of its jobs
    (``on_job_start`` runs in the worker)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        watch()

    def on_job_start(self, config, **kwargs) -> None:
        watch()
