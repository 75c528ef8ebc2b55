"""Hand-made run folders (the files a CV run writes), so statistics and ensembles are tested without training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from omegaconf import OmegaConf

_TEMPLATE = []


def saved_config(cfg: dict):
    """The default config composed once, with ``cfg`` merged in: what a run's ``run_config.yaml`` holds."""
    if not _TEMPLATE:
        from hydra import compose, initialize_config_dir

        from kfold_nlp.config.paths import CONFIG_DIR

        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            _TEMPLATE.append(OmegaConf.to_container(compose("config", ["name=x"]), resolve=False))
    return OmegaConf.merge(OmegaConf.create(_TEMPLATE[0]), cfg)


def rows(n: int = 300, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """id, fold, target of ``n`` training rows in ``k`` folds."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"r{i:05d}" for i in range(n)], "fold": rng.permutation(np.arange(n) % k),
                         "target": rng.normal(-1, 1, n)})


def write_run(folder: Path, folds: pd.DataFrame, pred, test_pred=None, *, name: str = "baseline", seed: int = 42,
              overrides: list[str] | None = None, test_ids=None, header=("id", "target")) -> Path:
    """A finished run folder whose OOF predictions are ``pred`` (one per row of ``folds``) and whose bagged test
    predictions are ``test_pred`` (``fold_<k>/test_pred.csv`` spread around it, their mean)."""
    folder = Path(folder)
    (folder / ".hydra").mkdir(parents=True)
    cfg = {"name": name, "seed": seed, "cv": {"n_splits": int(folds["fold"].nunique()), "seed": 42},
           "data": {"path": "missing/train.csv", "test_path": "missing/test.csv", "id_col": "id",
                    "text_col": "excerpt", "target_col": "target"},
           "regularizer": {"_target_": f"kfold_nlp.regularizers.{name}.X"},
           "logger": {"mode": "disabled", "project": "kfold-nlp-test", "entity": None}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    OmegaConf.save(saved_config(cfg), folder / "run_config.yaml")
    overrides = overrides or [f"regularizer={name}", f"seed={seed}"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    folds.to_csv(folder / "folds.csv", index=False)
    oof = folds.assign(pred=np.asarray(pred, float))
    oof.to_csv(folder / "oof.csv", index=False)
    err = oof["pred"] - oof["target"]
    fold_mse = {int(k): float(np.mean(e**2)) for k, e in err.groupby(oof["fold"])}
    mse, fm = float(np.mean(err**2)), np.array(list(fold_mse.values()))
    cv = {"mse": mse, "rmse": mse**0.5, "fold_mse_mean": fm.mean(), "fold_mse_sd": fm.std(ddof=1),
          "fold_rmse_mean": np.sqrt(fm).mean(), "fold_rmse_sd": np.sqrt(fm).std(ddof=1), "train_time_s": 1.0,
          "wall_time_s": 2.0}
    folds_json = {str(k): {"mse": v, "rmse": v**0.5} for k, v in fold_mse.items()}
    (folder / "metrics.json").write_text(json.dumps({"cv": {k: float(v) for k, v in cv.items()}, "folds": folds_json}))
    if test_pred is not None:
        test_pred = np.asarray(test_pred, float)
        ids = test_ids if test_ids is not None else [f"t{i:04d}" for i in range(len(test_pred))]
        pd.DataFrame({header[0]: ids, header[1]: test_pred}).to_csv(folder / "submission.csv", index=False)
        for k in fold_mse:  # fold models around the bag: their mean is the submission
            (folder / f"fold_{k}").mkdir()
            pd.DataFrame({"id": ids, "pred": test_pred + (k - (len(fold_mse) - 1) / 2) * 0.01}).to_csv(
                folder / f"fold_{k}" / "test_pred.csv", index=False)
    return folder
