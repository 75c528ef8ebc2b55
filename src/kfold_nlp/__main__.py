"""``python -m kfold_nlp [overrides]``: one CV experiment, or a sweep with ``-m``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .data import DataError

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
log = logging.getLogger("kfold_nlp")


def _point_latest(run_dir: Path) -> None:
    """``outputs/<experiment>/latest`` -> the newest run folder."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / ".latest.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    os.environ.setdefault("HF_HUB_OFFLINE", "1" if "minilm" in str(cfg.model.backbone) else "0")
    from . import cv  # heavy imports after Hydra has parsed the command line (fast --help, --cfg)

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    job = {"num": hc.job.num, "sweep_id": Path(hc.sweep.dir).name} if multirun else {}
    try:
        metrics = cv.run(cfg, run_dir, job)
    except DataError as err:
        if multirun:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not metrics:  # not the main process
        return float("nan")
    if not multirun and cfg.resume is None:
        _point_latest(run_dir)
    c = metrics["cv"]
    print(f"Run folder: {run_dir} | CV RMSE {c['rmse']:.4f} | CV MSE {c['mse']:.4f} "
          f"(predicting the training mean: RMSE {c['mean_predictor_rmse']:.4f})")
    return c["rmse"]


if __name__ == "__main__":
    main()
