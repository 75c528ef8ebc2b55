"""Bagged predictions of a finished run's fold models for any CSV with an id and a text column.

``kfold-nlp predict <run folder> [input.csv] [--id-col C] [--text-col C] [--out FILE] [--bagging B]``;
the input defaults to the run's own test file, the columns to the run's ``data`` config.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import numpy as np
import pandas as pd

from .bagging import BAGGING, bag
from .config.paths import offline_for_local
from .data.tables import load_table
from .data.tables import test_file as data_test_file
from .errors import DataError, OneLineError, refuse
from .files import write_csv
from .model import classical
from .rundir import REFIT, check_model, expected_folds, fold_dir
from .rundir import read_run_config as run_config  # the config a run folder was started with

MODELS = ("folds", "refit", "all")  # --models: which of a run's models are bagged


def fold_models(run_dir: Path, cfg, which: str = "folds") -> list[Path]:
    """The models to bag: every fold model the run trained (``folds``), the ``make refit`` model (``refit``), or
    both (``all``: each counts once); a missing one is refused rather than silently left out of the bag."""
    refit = run_dir / REFIT / "model.safetensors"
    if which != "folds" and not (run_dir / REFIT / "result.json").is_file():
        raise DataError(f"{run_dir}: no finished refit ({run_dir / REFIT}/result.json); train it with "
                        f"make refit RUN={run_dir}, or use --models folds")
    if which == "refit":
        check_model(refit)
        return [refit]
    if classical.is_classical(cfg.model):
        if which != "folds":
            raise DataError(f"{run_dir}: a scikit-learn run has no refit; use --models folds")
        models = [fold_dir(run_dir, k) / classical.FILE for k in expected_folds(cfg)]
        missing = [m.parent.name for m in models if not m.is_file()]
        if missing:
            raise DataError(f"{run_dir}: no {classical.FILE} in {', '.join(missing)} (unfinished, deleted, or run "
                            f"with trainer.save_models=false)")
        return models
    models = [fold_dir(run_dir, k) / "model.safetensors" for k in expected_folds(cfg)]
    found = [m for m in models if m.is_file()]
    if not found:
        raise DataError(f"{run_dir}: no fold_*/model.safetensors (was it run with trainer.save_models=false?)")
    missing = [m.parent.name for m in models if not m.is_file()]
    if missing:
        raise DataError(f"{run_dir}: no model.safetensors in {', '.join(missing)} (unfinished or deleted); "
                        f"the bag would silently lose those folds")
    models += [refit] if which == "all" else []
    for model in models:  # every one whole before the first is loaded
        check_model(model)
    return models


def test_file(cfg) -> Path | None:
    """The run's own test file: ``data.test_path``, or ``test.csv`` beside the train file."""
    path = data_test_file(cfg.data)
    return path if path.is_file() else None


def predict_texts(cfg, models: list[Path], texts, batch_size: int | None = None) -> np.ndarray:
    """Each fold model's predictions of ``texts`` (models x rows); one model in memory at a time."""
    if classical.is_classical(cfg.model):
        import joblib

        return np.stack([joblib.load(path).predict(np.asarray(list(texts), dtype=object)) for path in models])
    import torch
    from safetensors.torch import load_model

    offline_for_local(cfg.model.backbone, cfg.model.get("tokenizer"))  # before transformers is imported
    from .data.loading import EncodedRows, make_loader
    from .model.regressor import build_model, load_tokenizer, tokenize
    from .model.tasks import n_outputs
    from .train.loop import predict
    from .train.runtime import make_accelerator

    tokenizer = load_tokenizer(cfg.model)
    accelerator = make_accelerator(cfg.trainer)
    rows = EncodedRows(tokenize(tokenizer, texts, cfg.model.max_length), np.arange(len(texts)))
    loader = accelerator.prepare(make_loader(rows, tokenizer, batch_size or cfg.trainer.eval_batch_size, train=False))
    preds = []
    for path in models:
        model = build_model(cfg.model, pretrained=False, n_outputs=n_outputs(cfg))  # the task's head width
        load_model(model, str(path))
        # Not accelerator.prepare: it would keep a reference to every fold model until the accelerator goes.
        preds.append(predict(model.to(accelerator.device), loader, accelerator))
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return np.stack(preds)


def check_own_test(run_dir: Path, path: Path, ids: pd.Series) -> None:
    """The run's own test file must still hold the rows its submission.csv predicted: a regenerated or replaced
    file would be predicted without a word, with ids the run never saw."""
    sub = run_dir / "submission.csv"
    if not sub.is_file():
        return
    known = set(pd.read_csv(sub, dtype=str, usecols=[0]).iloc[:, 0])
    if set(ids.astype(str)) != known:
        missing = len(known - set(ids.astype(str)))
        raise DataError(f"{path}: not the test file {run_dir} predicted ({missing} of its {len(known)} ids "
                        f"missing, {len(set(ids.astype(str)) - known)} new); it changed since the run; give the "
                        f"file to predict as INPUT=<csv>")


def predict_run(run_dir, input_csv=None, bagging: str | None = None, id_col: str | None = None,
                text_col: str | None = None, models: str = "folds") -> pd.DataFrame:
    """One row per input row: the id and the bagged target, under the run's own id and target column names."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    models = fold_models(run_dir, cfg, models)
    own_test = input_csv is None
    if input_csv is None:
        input_csv = test_file(cfg)
        if input_csv is None:
            expected = cfg.data.get("test_path") or f"test.csv beside {cfg.data.path}"
            raise DataError(f"{run_dir}: the run has no test file ({expected}); give an input CSV")
    table = load_table(input_csv, id_col=id_col or cfg.data.id_col, text_col=text_col or cfg.data.text_col,
                       require_target=False)
    if own_test:
        check_own_test(run_dir, Path(input_csv), table["id"])
    preds = predict_texts(cfg, models, table["text"])
    return pd.DataFrame({id_col or cfg.data.id_col: table["id"],
                         cfg.data.target_col: bag(preds, bagging or cfg.cv.bagging)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run folder, e.g. outputs/baseline/latest")
    parser.add_argument("input", type=Path, nargs="?", help="CSV to predict (default: the run's test file)")
    parser.add_argument("--id-col", help="id column of the input (default: the run's data.id_col)")
    parser.add_argument("--text-col", help="text column of the input (default: the run's data.text_col)")
    parser.add_argument("--out", type=Path, help="default: <run folder>/predictions/<input name>.csv")
    parser.add_argument("--bagging", choices=BAGGING)
    parser.add_argument("--models", choices=MODELS, default="folds",
                        help="bag the fold models (default), the make refit model, or all of them")
    args = parser.parse_args(argv)
    try:
        result = predict_run(args.run_dir, args.input, args.bagging, args.id_col, args.text_col, args.models)
        n_models = len(fold_models(args.run_dir, run_config(args.run_dir), args.models))
        source = args.input or test_file(run_config(args.run_dir))
        out = args.out or args.run_dir / "predictions" / source.name
        write_csv(result, out)
    except (OneLineError, OSError) as err:
        refuse(err, "predict again", args.run_dir)
    print(f"Wrote {len(result)} bagged predictions from {n_models} models ({args.models}) to {out}")


if __name__ == "__main__":
    main()
