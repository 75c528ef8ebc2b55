"""The rows a benchmark trains on: a data preset of ``conf/data/`` or a CSV, read as ``make cv`` reads them.

The default preset, ``synthetic``, is the embedded set that ``make cv`` generates on first use (no download), so a
benchmark runs on a fresh machine; ``commonlit`` or a CSV path times the real texts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.data.tables import load_data
from kfold_nlp.errors import DataError, refuse

DEFAULT = "synthetic"
HELP = ("a data preset (conf/data/<name>.yaml: synthetic, generated on first use; commonlit) or a CSV path with "
        "the csv preset's columns (id, excerpt, target)")


def data_config(data: str):
    """The ``data`` group of preset ``data``, else the ``csv`` preset with ``path=data``."""
    preset = Path(CONFIG_DIR) / "data" / f"{data}.yaml"
    if preset.is_file():
        cfg = OmegaConf.load(preset)
        return cfg.data if "data" in cfg else cfg  # synthetic.yaml is a `@package _global_` file
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "data" / "csv.yaml")
    cfg.path = data
    return cfg


def load_rows(data: str, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` texts and targets of ``data``, sampled with replacement where it has fewer rows; a missing or bad file
    is one ``error:`` line, as for ``make cv``."""
    try:
        table, _ = load_data(data_config(data), n_splits=1)
    except DataError as err:
        refuse(err)
    rows = table.sample(n, replace=len(table) < n, random_state=seed)
    print(f"texts: {n} rows of {data} ({len(table)} rows)")
    return rows["text"].tolist(), rows["target"].to_numpy(float)
