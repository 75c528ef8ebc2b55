"""Blend the OOF predictions of several runs on the same folds, score the blend honestly, write a submission.

``kfold-nlp ensemble RUNS... [--method bagged|mean|nnls|greedy] [--out DIR] [--logger NAME] [--wandb-mode MODE]``
(``make ensemble RUNS="..."``): the command; the weights and their nested CV score are ``blend``'s, the members'
checks ``members``'s.

RUNS are run folders, sweep folders (every run below) or earlier ensemble folders (their members). Members must
share ``folds.csv`` (same rows, same folds: the same data and ``cv.seed``) and their test ids, and have no blank
prediction (``members``); ``--out`` must be new, empty or an earlier ensemble folder (never a run folder, whose
results it would overwrite); otherwise nothing is written and the command exits 2 with one ``error:`` line.

The ensemble folder holds ``weights.json`` (fitted on all rows), ``oof.csv`` (nested and in-sample blends),
``submission.csv`` (the weights applied to the members' bagged test predictions) and ``metrics.json``, last.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path

import pandas as pd

from .. import metrics
from ..errors import OneLineError, refuse
from ..files import write_csv, write_json
from ..rundir import RunDir
from ..track.wandb import MODES
from .blend import (  # noqa: F401  (greedy_weights, nested_predictions, nnls_weights: ensemble.* in the tests)
    DEFAULT,
    GREEDY_STEPS,
    METHODS,
    bagged_weights,
    blend,
    fitter,
    greedy_weights,
    nested_predictions,
    nnls_weights,
)
from .members import EnsembleError, Members, load_members
from .runs import WEIGHTS, find_runs, is_ensemble
from .tables import MARK, format_table

GROUP = "ensemble"  # the tracker group of every ensemble run


def default_out(base: Path = Path("outputs") / GROUP) -> Path:
    """``outputs/ensemble/<YYYY-mm-dd_HH-MM-SS>``, with ``_1``, ``_2``... when that folder exists."""
    out = base / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    stem, i = out, 0
    while out.exists():
        i += 1
        out = stem.with_name(f"{stem.name}_{i}")
    return out


def check_out(out: Path | None) -> None:
    """``--out`` may replace an earlier ensemble folder, never a run folder or anything else: its oof.csv,
    metrics.json and submission.csv would be overwritten by the blend's."""
    if out is None or not out.exists() or (out.is_dir() and not any(out.iterdir())) or is_ensemble(out):
        return
    raise EnsembleError(f"--out {out}: exists and is not an ensemble folder (a run folder's results would be "
                        f"overwritten); give a new folder")


def write(result: dict, out: Path) -> None:
    """The ensemble folder; its results under a run's names (``RunDir``), so they are read as a run's are."""
    folder = RunDir(out)
    write_json(result["weights"], out / WEIGHTS)
    write_csv(result["oof"], folder.oof)
    if result["submission"] is not None:
        write_csv(result["submission"], folder.submission)
    write_json(result["metrics"], folder.metrics)  # last: the folder is complete


def logger_config(name: str, wandb_mode: str, members: Members):
    """``conf/logger/<name>.yaml``; for W&B the mode given and the first member's project and entity."""
    from omegaconf import OmegaConf

    from ..config.paths import CONFIG_DIR

    path = Path(CONFIG_DIR) / "logger" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise EnsembleError(f"--logger {name}: no conf/logger/{name}.yaml (known: {', '.join(known)})")
    logger = OmegaConf.load(path)
    if "mode" in logger:
        logger.mode = wandb_mode
    first = RunDir(members.paths[0])
    if first.is_run():
        own = first.read_config().get("logger") or {}
        for key in ("project", "entity"):
            if key in logger and key in own:
                logger[key] = own[key]
    return logger


def log_run(result: dict, members: Members, out: Path, logger) -> None:
    """One tracker run in group ``ensemble``: the blend's scores and its members table."""
    from ..track.base import make, tracked  # hydra only once there is a blend to log

    m = result["metrics"]
    config = {"name": GROUP, "method": m["method"], "weights": result["weights"],
              "members": {n: str(p) for n, p in zip(members.names, members.paths)}}
    with tracked(make(logger), run_dir=out, group=GROUP, name=f"{GROUP}-{m['method']}-{out.name}",
                 job_type=m["method"], config=config, tags=(GROUP,)) as run:
        run.update_summary({"cv/rmse": m["cv"]["rmse"], "cv/rmse_in_sample": m["cv"]["rmse_in_sample"],
                            "cv/best_member_rmse": m["cv"]["best_member_rmse"],
                            "cv/improvement_vs_best_member": m["cv"]["improvement_vs_best_member"],
                            "cv/improvement_lo": m["cv"]["improvement_lo"],
                            "cv/improvement_hi": m["cv"]["improvement_hi"]}
                           | ({"cv/holdout_rmse": m["cv"]["holdout_rmse"]} if "holdout_rmse" in m["cv"] else {}))
        run.table("members", pd.DataFrame([{"run": n, **{k: v for k, v in d.items() if k not in ("path", "folder")}}
                                           for n, d in m["members"].items()]))


def improvement_marked(d: dict, key: str = "improvement_vs_best_member") -> bool:
    """``metrics.Interval.marked`` of a recorded improvement (``metrics["cv"]``, or a member's with ``key``
    ``improvement``): the interval excludes 0 and the improvement is at least ``metrics.MIN_DIFF``."""
    return bool(d["improvement_excludes_zero"]) and abs(d[key]) >= metrics.MIN_DIFF


def members_table(scores: dict) -> pd.DataFrame:
    """One row per member (its run name): weight, CV RMSE, the blend's improvement over it (positive: the blend is
    better) and its interval, ``sig`` (``*``: ``improvement_marked``)."""
    members = scores["members"]
    table = pd.DataFrame.from_dict(members, orient="index").drop(columns=["path", "folder"], errors="ignore")
    table["sig"] = [MARK if improvement_marked(d, "improvement") else "" for d in members.values()]
    return table.drop(columns="improvement_excludes_zero").rename_axis("run")


def report_line(scores: dict, out: Path) -> str:
    c = scores["cv"]
    mark = f" {MARK}" if improvement_marked(c) else ""
    return (f"Ensemble folder: {out} | {scores['method']} | CV RMSE {c['rmse']:.4f} nested "
            f"({c['rmse_in_sample']:.4f} in-sample) | best member {c['best_member']} {c['best_member_rmse']:.4f}: "
            f"improvement {c['improvement_vs_best_member']:+.4f} [{c['improvement_lo']:+.4f}, "
            f"{c['improvement_hi']:+.4f}]{mark} (best member - blend: positive, the blend is better)"
            + (f" | holdout RMSE {c['holdout_rmse']:.4f} (best member {c['best_member_holdout_rmse']:.4f}, "
               f"{c['holdout_rows']} rows)" if "holdout_rmse" in c else ""))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="kfold-nlp ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders, sweep folders or ensemble folders")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT)
    parser.add_argument("--steps", type=int, default=GREEDY_STEPS, help="greedy: number of selections")
    parser.add_argument("--out", type=Path, help="default: outputs/ensemble/<YYYY-mm-dd_HH-MM-SS>")
    parser.add_argument("--logger", default="wandb", help="a conf/logger choice: wandb (default), csv, none")
    parser.add_argument("--wandb-mode", choices=MODES,
                        default=os.environ.get("WANDB_MODE", "offline"))
    args = parser.parse_args(argv)
    try:
        check_out(args.out)
        try:
            runs = find_runs(args.runs, root=Path.cwd())
        except FileNotFoundError as err:
            raise EnsembleError(str(err)) from None
        members = load_members(runs)
        result = blend(members, args.method, args.steps)
        logger = logger_config(args.logger, args.wandb_mode, members)
        out = args.out or default_out()
        write(result, out)
        log_run(result, members, out, logger)
    except (OneLineError, OSError) as err:
        refuse(err, "blend again")
    table = members_table(result["metrics"])
    signed = {c: "+.4f" for c in table.columns if c.startswith("improvement")}
    print(format_table(table.reset_index(), signed).to_markdown(index=False, stralign="right", disable_numparse=True))
    print(report_line(result["metrics"], out))


if __name__ == "__main__":
    main()
