"""The same search with and without fold pruning: wall time, trials and the best CV of each, side by side.

``python -m benchmarks.pruning PRESET [--trials 12] [--pruners none median] [--startup 3] [overrides ...]`` from
the repository's root, e.g. ``python -m benchmarks.pruning tfidf_ridge --trials 12 data=commonlit
data.path=../shared/data/commonlit/train.csv cv.n_splits=3``. The searches run one after another on this machine
(one torch job at a time), each in its own study ``bench-<pruner>`` under ``outputs/hpo/``, with the same sampler
seed, so they begin with the same random trials. A report, not a test: it prints a markdown table and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--pruners", nargs="+", default=["none", "median"])
    parser.add_argument("--startup", type=int, default=3, help="median: trials that run every fold first")
    args, overrides = parser.parse_known_args()
    rows = []
    for pruner in args.pruners:
        study = f"bench-{args.preset}-{pruner}"
        folder = Path("outputs/hpo") / study
        if folder.exists():
            sys.exit(f"error: {folder}: exists; remove it to measure again")
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kfold_nlp.cli", "hpo", args.preset, *overrides,
                        f"hpo.n_trials={args.trials}", f"hpo.study={study}", f"hpo.pruner.name={pruner}",
                        f"hpo.pruner.n_startup_trials={args.startup}"], check=True)
        wall = time.perf_counter() - began
        best = json.loads((folder / "best_trial.json").read_text())
        folds = sum(len(list(Path(t).glob("fold_*/result.json"))) for t in folder.glob("[0-9]*"))
        rows.append((pruner, wall, best["trials"]["complete"], best["trials"]["pruned"], folds, best["cv_rmse"],
                     best["trial"]))
    print(f"\n{torch.backends.cpu.get_cpu_capability()} CPU, native bf16 "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}, {torch.get_num_threads()} threads")
    print("| pruner | wall time | complete | pruned | folds trained | best CV RMSE | best trial |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for pruner, wall, complete, pruned, folds, cv, trial in rows:
        print(f"| {pruner} | {wall:.0f} s | {complete} | {pruned} | {folds} | {cv:.4f} | {trial} |")


if __name__ == "__main__":
    main()
