"""Bagged predictions of a finished run's fold models for any CSV with an id and a text column.

``kfold-nlp predict <run folder> [input.csv] [--id-col C] [--text-col C] [--out FILE] [--bagging B] [--models M]``;
the input defaults to the run's own test file, the columns to the run's ``data`` config, the output to
``<run>/predictions/<input name>`` (``-refit``/``-all`` added for those ``--models``). Which models are this
module's: every expected fold finished (``RunDir.unfinished``, the one definition every command uses), or refused.
Checking the input (``bundle/inputs.py``), loading the models one at a time and bagging them are the bundle's
(``bundle/infer.py``), so ``make predict`` and an exported bundle accept the same rows and predict alike. Writing
into the run folder holds its lock, so no start, refit or collect writes it meanwhile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .bundle import infer, inputs
from .bundle.infer import BAGGING, bag
from .config.paths import offline_for_local
from .data.tables import test_file as data_test_file
from .errors import DataError, OneLineError, refuse
from .files import write_csv
from .model import classical
from .rundir import FoldDir, RunDir, check_model, expected_folds, read_csv
from .rundir import read_run_config as run_config  # the config a run folder was started with

MODELS = ("folds", "refit", "all")  # --models: which of a run's models are bagged


def fold_models(run_dir: Path, cfg, which: str = "folds") -> list[Path]:
    """The models to bag: every fold model the run trained (``folds``), the ``make refit`` model (``refit``), or
    both (``all``: each counts once); a missing one is refused rather than silently left out of the bag."""
    run = RunDir(run_dir)
    unfinished = run.unfinished(expected_folds(cfg))
    if unfinished:  # what a kill between a fold's model and its result.json leaves: the bag would lack that fold
        raise DataError(f"{run_dir}: fold(s) {', '.join(map(str, unfinished))} not finished (no "
                        f"fold_<k>/{FoldDir.RESULT}); the bag needs every fold: train them with RESUME={run_dir}")
    refit = run.refit.model
    if which != "folds" and not run.refit.result.is_file():
        raise DataError(f"{run_dir}: no finished refit ({run.refit.result}); train it with "
                        f"make refit RUN={run_dir}, or use --models folds")
    if which == "refit":
        check_model(refit)
        return [refit]
    if classical.is_classical(cfg.model):
        if which != "folds":
            raise DataError(f"{run_dir}: a scikit-learn run has no refit; use --models folds")
        models = [run.fold(k).joblib for k in expected_folds(cfg)]
        missing = [m.parent.name for m in models if not m.is_file()]
        if missing:
            raise DataError(f"{run_dir}: no {FoldDir.JOBLIB} in {', '.join(missing)} (unfinished, deleted, or run "
                            f"with trainer.save_models=false)")
        return models
    models = [run.fold(k).model for k in expected_folds(cfg)]
    found = [m for m in models if m.is_file()]
    if not found:
        raise DataError(f"{run_dir}: no fold_*/{FoldDir.MODEL} (was it run with trainer.save_models=false?)")
    missing = [m.parent.name for m in models if not m.is_file()]
    if missing:
        raise DataError(f"{run_dir}: no {FoldDir.MODEL} in {', '.join(missing)} (unfinished or deleted); "
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
    """Each fold model's predictions of ``texts`` (models x rows), one model in memory at a time
    (``infer.each_model``), under the run's precision and on its accelerator."""
    if classical.is_classical(cfg.model):
        return np.stack(infer.pipeline_predictions(models, texts))
    offline_for_local(cfg.model.backbone, cfg.model.get("tokenizer"))  # before transformers is imported
    from .data.loading import EncodedRows, make_loader
    from .model import regressor
    from .model.tasks import n_outputs
    from .train.device import make_accelerator
    from .train.loop import predict

    tokenizer = regressor.load_tokenizer(cfg.model)
    accelerator = make_accelerator(cfg.trainer)
    rows = EncodedRows(regressor.tokenize(tokenizer, texts, cfg.model.max_length), np.arange(len(texts)))
    loader = accelerator.prepare(make_loader(rows, tokenizer, batch_size or cfg.trainer.eval_batch_size, train=False))

    def build():  # the architecture with the task's head width
        return regressor.build_model(cfg.model, pretrained=False, n_outputs=n_outputs(cfg))

    # Not accelerator.prepare: it would keep a reference to every fold model until the accelerator goes.
    return np.stack(infer.each_model(models, build, lambda model: predict(model.to(accelerator.device), loader,
                                                                          accelerator)))


def check_own_test(run_dir: Path, path: Path, ids: pd.Series) -> None:
    """The run's own test file must still hold the rows its submission.csv predicted: a regenerated or replaced
    file would be predicted without a word, with ids the run never saw."""
    sub = RunDir(run_dir).submission
    if not sub.is_file():
        return
    known = set(read_csv(sub, (), f"collect the run again: make collect RUN={run_dir}", dtype=str).iloc[:, 0])
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
    table, note = inputs.read_input(input_csv, id_col or cfg.data.id_col, text_col or cfg.data.text_col)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if own_test:
        check_own_test(run_dir, Path(input_csv), table["id"])
    preds = predict_texts(cfg, models, table["text"])
    return pd.DataFrame({id_col or cfg.data.id_col: table["id"],
                         cfg.data.target_col: bag(preds, bagging or cfg.cv.bagging)})


def main(argv=None) -> None:
    from .cv import lock

    parser = argparse.ArgumentParser(prog="kfold-nlp predict", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run folder, e.g. outputs/baseline/latest")
    parser.add_argument("input", type=Path, nargs="?", help="CSV to predict (default: the run's test file)")
    parser.add_argument("--id-col", help="id column of the input (default: the run's data.id_col)")
    parser.add_argument("--text-col", help="text column of the input (default: the run's data.text_col)")
    parser.add_argument("--out", type=Path, help="default: <run folder>/predictions/<input name> for the fold "
                        "models, <input stem>-refit.csv or -all.csv for the others")
    parser.add_argument("--bagging", choices=BAGGING)
    parser.add_argument("--models", choices=MODELS, default="folds",
                        help="bag the fold models (default), the make refit model, or all of them")
    args = parser.parse_args(argv)
    try:
        cfg = run_config(args.run_dir)
        n_models = len(fold_models(args.run_dir, cfg, args.models))
        source = args.input or test_file(cfg)
        out = args.out or (RunDir(args.run_dir).prediction(source, args.models) if source else None)
        inside = out is not None and Path(out).resolve().is_relative_to(Path(args.run_dir).resolve())
        if out is not None and source is not None:
            inputs.check_out(out, source)
        taken = inside and lock.hold_run(args.run_dir)  # what writes the run folder holds its lock
        try:
            result = predict_run(args.run_dir, args.input, args.bagging, args.id_col, args.text_col, args.models)
            write_csv(result, out)
        finally:
            if taken:
                lock.release(args.run_dir)
    except (OneLineError, inputs.BadInput, OSError) as err:
        refuse(err, "predict again", args.run_dir)
    print(f"Wrote {len(result)} bagged predictions from {n_models} model{'s' * (n_models != 1)} ({args.models}) "
          f"to {out}")


if __name__ == "__main__":
    main()
