"""``make collect RUN=<run folder>``: (re)build ``oof.csv``, ``submission.csv``, ``metrics.json`` and the W&B ``-cv``
run of a run folder from its ``fold_*`` folders, ids checked against ``folds.csv``; names the unfinished folds."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import lock
from .errors import DataError, OneLineError, refuse
from .holdout import line


def collect_run(run_dir: Path) -> dict:
    from . import cv
    from .predict import run_config
    from .summary import run_name

    cfg = run_config(run_dir)
    lock.hold_run(run_dir)  # no start, fold job or other collect writes the folder meanwhile
    missing = cv.unfinished(run_dir, cv.expected_folds(cfg))
    if missing:
        raise DataError(f"{run_dir}: fold(s) {', '.join(map(str, missing))} not finished (no fold_<k>/result.json); "
                        f"train them with RESUME={run_dir}")
    data = cv.prepare(cfg, run_dir, texts=False)  # the data and config checks of a resume
    cfg.name = run_name(run_dir / ".hydra", cfg) or run_dir.parent.name  # ${hydra:...} cannot resolve out of Hydra
    return cv.finish(cfg, run_dir, data, str(cfg.name), {})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        metrics = collect_run(args.run_dir)
    except (OneLineError, OSError) as err:
        refuse(err, f"collect again (make collect RUN={args.run_dir})", args.run_dir)
    c = metrics["cv"]
    print(f"Run folder: {args.run_dir} | CV RMSE {c['rmse']:.4f} | CV MSE {c['mse']:.4f} "
          f"(predicting the training mean: RMSE {c['mean_predictor_rmse']:.4f}){line(metrics.get('selection', {}))}")


if __name__ == "__main__":
    main()
