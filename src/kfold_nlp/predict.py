"""Bagged predictions of a finished run's fold models for any CSV with an id and a text column.

``python -m kfold_nlp.predict <run folder> <input.csv> [--out FILE] [--bagging mean|median]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from safetensors.torch import load_model

from .cv import bag, tokenize
from .data import DataError, load_table
from .files import write_csv
from .model import build_model, load_tokenizer
from .trainer import EncodedRows, make_accelerator, make_loader, predict


def fold_models(run_dir: Path) -> list[Path]:
    models = sorted(run_dir.glob("fold_*/model.safetensors"))
    if not models:
        raise DataError(f"{run_dir}: no fold_*/model.safetensors (was it run with trainer.save_models=false?)")
    return models


def predict_run(run_dir, input_csv, bagging: str | None = None) -> pd.DataFrame:
    """One row per input row: id and the bagged target; fold models are loaded one at a time."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.exists():
        raise DataError(f"{run_dir}: not a run folder (no .hydra/config.yaml)")
    cfg = OmegaConf.load(cfg_path)
    models = fold_models(run_dir)
    table = load_table(input_csv, id_col=cfg.data.id_col, text_col=cfg.data.text_col, require_target=False)
    tokenizer = load_tokenizer(cfg.model)
    accelerator = make_accelerator(cfg.trainer)
    rows = EncodedRows(tokenize(tokenizer, table["text"], cfg.model.max_length), np.arange(len(table)))
    loader = accelerator.prepare(make_loader(rows, tokenizer, cfg.trainer.eval_batch_size, train=False))
    preds = []
    for path in models:
        model = build_model(cfg.model, pretrained=False)
        load_model(model, str(path))
        preds.append(predict(accelerator.prepare(model), loader, accelerator))
    return pd.DataFrame({"id": table["id"], "target": bag(np.stack(preds), bagging or cfg.cv.bagging)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("input", type=Path)
    parser.add_argument("--out", type=Path, help="default: <run folder>/predictions/<input name>.csv")
    parser.add_argument("--bagging", choices=["mean", "median"])
    args = parser.parse_args(argv)
    try:
        result = predict_run(args.run_dir, args.input, args.bagging)
    except DataError as err:
        sys.exit(f"error: {err}")
    out = args.out or args.run_dir / "predictions" / args.input.name
    write_csv(result, out)
    print(f"Wrote {len(result)} bagged predictions from {len(fold_models(args.run_dir))} fold models to {out}")


if __name__ == "__main__":
    main()
