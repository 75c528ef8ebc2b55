"""Self-distillation and pseudo-labels from a finished run (the teacher), without leakage.

``distill.teacher=<run folder>``: fold k's student trains on ``(1 - weight) * label + weight * soft``, where
``soft`` is the prediction of the teacher's **fold-k model** for each of fold k's training rows. With the same
folds, that model trained on exactly those rows and never saw fold k's validation rows, so nothing of the
validation labels reaches fold k's training targets. The teacher's ``oof.csv`` would leak: the OOF prediction of
a fold-j row (j != k) comes from the fold-j model, which trained on fold k's validation rows. So the teacher
must share the student's ``folds.csv`` (refused otherwise), and its fold models are run as saved, through
``predict.predict_texts`` (``make predict``'s code path).

For MSE, training on the mixed target has the gradient of ``(1 - w) * MSE(label) + w * MSE(soft)``, the usual
distillation loss, but mixing the targets needs no change to any task or regularizer.

``distill.unlabeled=<csv>``: its texts, labelled by the fold-k teacher model (pseudo-labels), join fold k's
training rows only, never its validation rows nor another fold. Each fold writes ``fold_k/soft_targets.csv``: every
soft target or pseudo-label it trained on and the model file that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import fingerprint
from ..data.folds import same_folds
from ..data.loading import EncodedRows
from ..data.tables import DataError, load_table
from ..files import read_json, write_csv
from ..model.regressor import load_tokenizer, tokenize
from ..predict import predict_texts, run_config
from ..rundir import RunDir, check_model, read_csv


def teacher_model(teacher: Path, fold: int) -> Path:
    """The only teacher model fold ``fold`` may learn from: the one that never saw its validation rows."""
    return RunDir(teacher).fold(fold).model


def check_same_folds(teacher: Path, folds: pd.DataFrame) -> None:
    """Refuse a teacher whose ``folds.csv`` is not this run's (``data.folds.same_folds``)."""
    path = RunDir(teacher).folds_csv
    if not path.is_file():
        raise DataError(f"{path}: not found; distill.teacher must be a run folder")
    kept = read_csv(path, ("id", "fold"), "distill.teacher must be a finished run folder", dtype={"id": str})
    if not same_folds(kept, folds):
        raise DataError(f"{path}: differs from this run's folds (ids or folds); distill.teacher must be a run on "
                        f"the same data with the same cv.n_splits, cv.seed and cv.bins, or its models saw fold k's "
                        f"validation rows")


@dataclass
class Distiller:
    """The teacher's fold models and the texts they label; ``fold_rows`` is the hook ``cv.fit_fold`` calls."""

    teacher: Path
    teacher_cfg: object
    weight: float
    train: pd.DataFrame  # id, text: the student's train table, by position
    unlabeled: pd.DataFrame | None = None  # id, text
    unlabeled_enc: dict | None = None  # tokenized with the student's tokenizer

    def fold_rows(self, fold: int, rows: EncodedRows, record: Path | None = None) -> EncodedRows:
        """Fold ``fold``'s training rows with soft targets, plus the pseudo-labelled rows; ``record``: write
        ``soft_targets.csv`` there (id, source, label, soft, target trained on, teacher_model)."""
        model = teacher_model(self.teacher, fold)
        pos = rows.rows
        texts = [*self.train["text"].iloc[pos], *([] if self.unlabeled is None else self.unlabeled["text"])]
        with torch.random.fork_rng():  # building the teacher draws random weights: leave the student's stream alone
            pred = predict_texts(self.teacher_cfg, [model], texts)[0]
        soft, pseudo = pred[:len(pos)], pred[len(pos):]
        targets = np.array(rows.targets, dtype=float)
        labels = targets[pos].copy()
        targets[pos] = (1 - self.weight) * labels + self.weight * soft
        out = EncodedRows(rows.encodings, pos, targets, rows.columns)
        ids = list(self.train["id"].iloc[pos])
        if self.unlabeled is not None:
            if rows.columns:
                raise ValueError("pseudo-labelled rows have no " + ", ".join(rows.columns))
            n = len(rows.encodings["input_ids"])
            enc = {key: [*values, *self.unlabeled_enc[key]] for key, values in rows.encodings.items()}
            out = EncodedRows(enc, np.concatenate([pos, n + np.arange(len(pseudo))]), np.concatenate([targets, pseudo]))
            ids += list(self.unlabeled["id"])
        if record is not None:
            write_csv(pd.DataFrame({
                "id": ids, "source": ["train"] * len(pos) + ["unlabeled"] * len(pseudo),
                "label": np.concatenate([labels, np.full(len(pseudo), np.nan)]), "soft": pred,
                "target": out.targets[out.rows], "teacher_model": str(model)}), record)
        return out


def describe(cfg) -> str:
    """The run's one-line summary's part: empty without a teacher."""
    d = cfg.get("distill")
    if d is None or d.teacher is None:
        return ""
    return f", distilled from {d.teacher} (weight {d.weight:g}{', unlabeled ' + d.unlabeled if d.unlabeled else ''})"


def check_same_data(teacher: Path, data_print: dict) -> None:
    """Refuse a teacher trained on other texts or targets, even with the same ids and folds: its soft targets
    would be another task's. A teacher from before fingerprints has none; its ``folds.csv`` was checked."""
    path = teacher / fingerprint.NAME
    if path.is_file():
        changed = fingerprint.differences(read_json(path), data_print)
        if changed:
            raise DataError(f"{path}: distill.teacher was trained on another train file ({', '.join(changed)}); "
                            f"use a teacher run on {data_print['file']} as it is now")


def check_teacher_fold(teacher: Path, fold: int) -> None:
    """The teacher's fold ``fold`` must be finished, its own (not copied in from another run), and its model
    readable: found before the first student fold trains, not after."""
    fdir, model = RunDir(teacher).fold(fold), teacher_model(teacher, fold)
    if not fdir.finished():
        raise DataError(f"{fdir.result}: not found; the teacher's fold {fold} did not finish (resume the "
                        f"teacher run first)")
    fingerprint.check_fold(teacher, fdir.path, read_json(fdir.result))
    if not model.is_file():
        raise DataError(f"{model}: not found; distill.teacher needs the teacher's fold {fold} model (run with "
                        f"trainer.save_models=true and that fold)")
    check_model(model)


def load(cfg, folds: pd.DataFrame, train: pd.DataFrame, data_print: dict) -> Distiller | None:
    """The run's ``Distiller`` (None without ``distill.teacher``), every refusal before anything is written:
    a teacher with other data or folds, an unfinished, foreign or unreadable fold model, a bad unlabeled file or
    one that repeats training ids."""
    d = cfg.get("distill")
    if d is None or d.teacher is None:
        return None
    teacher = Path(d.teacher)
    teacher_cfg = run_config(teacher)
    check_same_folds(teacher, folds)
    check_same_data(teacher, data_print)
    for fold in cfg.cv.folds if cfg.cv.folds is not None else range(cfg.cv.n_splits):
        check_teacher_fold(teacher, fold)
    # One accelerate state per process: the teacher's models run at the student's precision.
    teacher_cfg.trainer.precision = cfg.trainer.precision
    distiller = Distiller(teacher, teacher_cfg, d.weight, train[["id", "text"]])
    if d.unlabeled is not None:
        table = load_table(d.unlabeled, id_col=cfg.data.id_col, text_col=cfg.data.text_col, require_target=False)
        seen = table["id"].isin(train["id"])
        if seen.any():
            raise DataError(f"{d.unlabeled}: {int(seen.sum())} id(s) also in the train file (first "
                            f"{table['id'][seen].iloc[0]!r}); pseudo-labelled rows must be new texts")
        distiller.unlabeled = table[["id", "text"]]
        distiller.unlabeled_enc = tokenize(load_tokenizer(cfg.model), table["text"], cfg.model.max_length)
    return distiller
