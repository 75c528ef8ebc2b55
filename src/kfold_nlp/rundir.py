"""A run folder's layout and the readers of what a run wrote: where each fold lives, which folds are finished, the
run's own config (older ones brought up to date), and one reader per kind of file, each checking what it reads (it
parses, has its keys or columns and rows, the values are finite, the ids are the expected ones) and raising
``DataError`` naming the file and what to do. A damaged file is one line, never a traceback or a silently wrong
score."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import DataError

# Keys added after runs were made, with the value that gives what those runs did: an older run_config.yaml gets them.
ADDED_KEYS = {"trainer.select": "best", "trainer.also_select": [], "trainer.ema_decay": 0.98, "trainer.swa_evals": 4,
              "cv.holdout": None}
# Classes that moved: an older run_config.yaml names them where they were.
MOVED = {"kfold_nlp.tasks.": "kfold_nlp.model.tasks.", "kfold_nlp.regularizers.": "kfold_nlp.model.regularizers."}


REFIT = "refit"  # <run>/refit/: the model ``make refit`` trained on every training row


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold_{fold}"


def expected_folds(cfg) -> list[int]:
    return list(cfg.cv.folds) if cfg.cv.folds is not None else list(range(cfg.cv.n_splits))


def unfinished(run_dir: Path, folds: list[int]) -> list[int]:
    return [k for k in folds if not (fold_dir(run_dir, k) / "result.json").exists()]


RESULT_KEYS = ("mse", "rmse", "train_time_s")  # what collecting a fold reads from its result.json


RESTORE = "restore it or start a new run"


def _short(err: Exception) -> str:
    """The gist of a parser's message (YAML's names the file again, over several lines: the problem and line)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        return f"{err.problem} at line {err.problem_mark.line + 1}"
    return " ".join(str(err).split())[:120]


def retrain(path: Path) -> str:
    """The advice for a damaged file of ``fold_<k>/``: retrain that fold."""
    fdir = path.parent
    return f"retrain that fold: delete {fdir / 'result.json'} and resume with RESUME={fdir.parent}"


def _read_whole(path: Path, fix: str) -> bytes:
    """The bytes of a file the run wrote, refused when empty or cut short: every writer ends its last line, and a
    file cut mid-line may still parse (a number cut to fewer digits)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {fix}") from None
    if not data.strip():
        raise DataError(f"{path}: empty; {fix}")
    if not data.endswith(b"\n"):
        raise DataError(f"{path}: cut short (no line end after its last line); {fix}")
    return data


def read_run_config(run_dir: Path) -> DictConfig:
    """The config a run folder was started with (``run_config.yaml``), refused when it is cut short, does not parse
    or lacks a key the schema requires (a file cut at a line end parses up to there). A config from before a key
    existed gets that key's ``ADDED_KEYS`` value, and the classes it names where they live now (``MOVED``)."""
    from .config.schema import (  # here, not above: the schema loads torch and transformers, which predict and
        RULES,
        TRANSFORMER_KEYS,
    )
    # distillation import only after config.paths.offline_for_local

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DataError(f"{run_dir}: does not exist")
    path = run_dir / "run_config.yaml"
    if not path.is_file():
        raise DataError(f"{run_dir}: not a run folder (no run_config.yaml)")
    data = _read_whole(path, RESTORE)
    try:
        cfg = OmegaConf.create(data.decode())  # parsed as OmegaConf.load parses a file
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as err:
        raise DataError(f"{path}: unreadable ({_short(err)}); {RESTORE}") from None
    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else None
    if isinstance(tree, dict):
        cfg = OmegaConf.create(_updated(tree))
        tree = OmegaConf.to_container(cfg, resolve=False)
    classical = isinstance(tree, dict) and (tree.get("model") or {}).get("kind") == "sklearn"
    required = [key for key, rule in RULES.items()  # an optional key may be left out, a classical one the backbone's
                if not rule.optional and not (classical and key in TRANSFORMER_KEYS)]
    absent = [key for key in required if not _has(tree, key)] if isinstance(tree, dict) else ["name"]
    if absent:
        raise DataError(f"{path}: incomplete (no {absent[0]}); {RESTORE}")
    return cfg


def _updated(tree: dict) -> dict:
    """``tree`` with the keys added since it was written, and moved classes under their new names."""
    for key, value in ADDED_KEYS.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value

    def moved(node):
        if isinstance(node, dict):
            return {k: moved(v) for k, v in node.items()}
        if isinstance(node, list):
            return [moved(v) for v in node]
        if isinstance(node, str):
            for old, new in MOVED.items():
                if node.startswith(old):
                    return new + node[len(old):]
        return node

    return moved(tree)


def _has(tree: dict, key: str) -> bool:
    """``key`` (dotted) is in ``tree``; the keys below a null mapping (``data.generate: null``) need not be."""
    node = tree
    for part in key.split("."):
        if node is None:
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def read_result(path: Path) -> dict:
    """A fold's ``result.json``: a mapping whose scores and times are finite numbers."""
    data = _read_whole(path, retrain(path))
    try:
        result = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({_short(err)}); {retrain(path)}") from None
    bad = [k for k in RESULT_KEYS if not isinstance(result, dict) or not _finite(result.get(k))]
    if bad:
        raise DataError(f"{path}: no finite {bad[0]!r}; {retrain(path)}")
    return result


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_csv(path: Path, columns: tuple[str, ...], fix: str, **kwargs) -> pd.DataFrame:
    """A CSV a run wrote, refused (``fix``: what to do) when it is cut short, does not parse or lacks one of
    ``columns``."""
    data = _read_whole(path, fix)
    try:
        table = pd.read_csv(io.BytesIO(data), **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({_short(err)}); {fix}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no {missing[0]!r} column (columns: {', '.join(map(str, table.columns))}); {fix}")
    return table


def check_ids(path: Path, ids, expected, what: str) -> None:
    """Refuse a per-fold file whose ids are not exactly ``expected`` (in order): rows would be misaligned."""
    ids, expected = list(map(str, ids)), list(map(str, expected))
    if ids != expected:
        first = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
        raise DataError(f"{path}: ids differ from {what} (first at row {first + 1}: {len(ids)} rows, "
                        f"{len(expected)} expected); the data changed since this run started: start a new run")


def read_preds(path: Path, expected, what: str, columns: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """A fold's ``pred`` column, its ids checked against ``expected``; a file with fewer or more rows (cut short)
    and a blank or non-finite prediction are refused (a mean would skip it silently, or it would turn the CV score
    and the bag into NaN). ``columns``: every prediction column, ``pred`` and each ``pred_<policy>`` (by
    ``pred`` and by the policy's name)."""
    table = read_csv(path, ("id", "pred"), retrain(path), dtype={"id": str})
    ids, expected = table["id"].astype(str).tolist(), list(map(str, expected))
    if len(ids) != len(expected):
        raise DataError(f"{path}: {len(ids)} rows, {len(expected)} expected; {retrain(path)}")
    check_ids(path, ids, expected, what)
    out = {}
    for col in [c for c in table.columns if c == "pred" or (columns and c.startswith("pred_"))]:
        pred = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(pred)
        if bad.any():
            raise DataError(f"{path}: blank or non-finite {col} in {int(bad.sum())} row(s), first at data row "
                            f"{int(np.flatnonzero(bad)[0]) + 1}; {retrain(path)}")
        out[col.removeprefix("pred_")] = pred
    return out if columns else out["pred"]


def check_model(path: Path) -> None:
    """A fold model's ``model.safetensors`` is whole: its header parses and covers the file (a cut file does not)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as err:
        raise DataError(f"{path}: unreadable ({_short(err)}); {retrain(path)}") from None
