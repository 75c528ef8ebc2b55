"""The intra-op threads a process may use: the launcher's share of the cores for parallel fold jobs, else every
core this process may run on (more threads than cores oversubscribes the OpenMP pools and slows every process)."""

from __future__ import annotations

import os

import torch

from . import hardware

THREADS_ENV = "KFOLD_NLP_THREADS"  # set by a parallel launcher for its fold jobs: their share of the cores


def threads_for_this_process() -> int:
    """Intra-op threads: the launcher's share when it set one (parallel fold jobs split the cores), else
    ``OMP_NUM_THREADS`` when set, else every usable core."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):  # ours, then the user's (or joblib's workers': cores / n_jobs)
        share = os.environ.get(name, "")
        if share.isdigit() and int(share) > 0:
            return min(int(share), hardware.usable_cores())
    return hardware.usable_cores()


def set_threads() -> int:
    """Apply ``threads_for_this_process`` to torch (on CPU; a GPU run only feeds the device) and return it."""
    n = threads_for_this_process()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def split_cores(jobs: int) -> int:
    """Threads for each of ``jobs`` processes running side by side on this process's cores (at least 1)."""
    return max(1, hardware.usable_cores() // max(1, jobs))
