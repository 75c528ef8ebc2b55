"""The CSV gate: reading and validating the train and test tables, one line naming the file, row and column.

`load_table` is the single gate between raw files and the pipeline: it normalises column names and dtypes and fails
early, with a one-line message naming the file and the offending row/column, instead of letting a bad row crash a
GPU run hours later. `load_data` reads a ``data`` group's tables (generating the synthetic set first when asked).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .synthetic import make_synthetic

# Tokens treated as "missing" in numeric columns. Ids and text are read verbatim
# (only an empty field is missing) so that an id "NA" or a text "None" survive.
_NA_TOKENS = ("nan", "na", "n/a", "null", "none")


def first_bad_row(path: Path, ids: pd.Series, bad: pd.Series, what: str) -> DataError:
    """Build the error for the first row flagged in `bad` (1-based data row) plus the count."""
    pos = int(np.flatnonzero(bad.to_numpy())[0])
    return DataError(
        f"{path}: {what} in {int(bad.sum())} row(s); first at data row {pos + 1} (id {ids.iloc[pos]!r})"
    )


def _read_csv(path: Path) -> pd.DataFrame:
    """Read every column as str, turning each pandas/OS failure into a DataError."""
    try:
        with warnings.catch_warnings():
            # Rows with extra fields otherwise become a silent index column or are
            # silently truncated (ParserWarning); treat them as unparsable.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot parse as CSV: {err}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read file: {err.strerror or err}") from None


def _numeric(col: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Return (float64 values, mask of non-missing entries that are not numbers)."""
    values = pd.to_numeric(col, errors="coerce").astype("float64")
    missing = col.isna() | col.str.strip().str.lower().isin(_NA_TOKENS)
    return values, values.isna() & ~missing


def _check_float32(path: Path, ids: pd.Series, values: pd.Series, col: str) -> None:
    """Training runs in float32: a label beyond its range becomes inf there, and the fold would stop as "diverged,
    lower optimizer.lr" after training, for a value that no learning rate fixes."""
    limit = float(np.finfo(np.float32).max)
    beyond = np.isfinite(values) & (values.abs() > limit)  # inf and NaN: the checks that know the column's rule
    if beyond.any():
        raise first_bad_row(path, ids, beyond, f"{col!r} beyond float32's range (|value| > {limit:.3g})")


def load_table(
    path: str | os.PathLike,
    *,
    id_col: str = "id",
    text_col: str = "excerpt",
    target_col: str = "target",
    require_target: bool = True,
    min_rows: int = 1,
) -> pd.DataFrame:
    """Read and validate a CommonLit-style CSV.

    Returns columns `id` (str), `text` (str), `target` (float64, only when
    `require_target`) and `standard_error` (float64, NaN allowed, only when the file
    has it); other columns are dropped, row order is kept and the index is reset.
    Every problem raises DataError naming `path`; callers pass `min_rows=n_splits`
    so that too-small files fail before any fold is built.
    """
    path = Path(path)
    raw = _read_csv(path)
    raw.columns = [str(c).strip() for c in raw.columns]

    needed = [id_col, text_col] + ([target_col] if require_target else [])
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
            f"columns found: {', '.join(map(repr, raw.columns))}"
        )

    ids = raw[id_col]
    if ids.isna().any():
        raise first_bad_row(path, ids, ids.isna(), f"empty {id_col!r}")

    text = raw[text_col]
    bad_text = text.isna() | (text.str.strip() == "")
    if bad_text.any():
        raise first_bad_row(path, ids, bad_text, f"empty, whitespace-only or missing {text_col!r}")

    out = pd.DataFrame({"id": ids.astype(str), "text": text.astype(str)})

    if require_target:
        target, _ = _numeric(raw[target_col])
        bad_target = ~np.isfinite(target)
        if bad_target.any():
            raise first_bad_row(path, ids, bad_target, f"missing or non-numeric {target_col!r}")
        _check_float32(path, ids, target, target_col)
        out["target"] = target

    if "standard_error" in raw.columns:
        se, bad_se = _numeric(raw["standard_error"])
        if bad_se.any():
            raise first_bad_row(path, ids, bad_se, "non-numeric 'standard_error'")
        _check_float32(path, ids, se, "standard_error")
        out["standard_error"] = se

    dup = ids.duplicated(keep=False)
    if dup.any():
        first = ids[dup].iloc[0]
        rows = (np.flatnonzero((ids == first).to_numpy()) + 1).tolist()
        raise DataError(
            f"{path}: {ids[dup].nunique()} duplicated {id_col!r} value(s); "
            f"first {first!r} at data rows {rows}"
        )

    if len(out) < min_rows:
        raise DataError(
            f"{path}: {len(out)} rows but at least {min_rows} are needed "
            f"(min_rows={min_rows}, e.g. one row per CV fold)"
        )

    return out.reset_index(drop=True)


def test_file(data_cfg) -> Path:
    """Where a ``data`` group's test file is: ``data.test_path``, or ``test.csv`` beside the train file."""
    return Path(data_cfg.test_path) if data_cfg.get("test_path") else Path(data_cfg.path).with_name("test.csv")


def load_data(data_cfg, n_splits: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The ``data`` group's validated train table and its test table (None when there is none).

    The test file is ``data.test_path``, or ``test.csv`` beside the train file. The synthetic set is (re)generated
    first when ``data.generate`` asks for it.
    """
    path = Path(data_cfg.path)
    if data_cfg.get("generate") and (not path.exists() or (path.parent / "params.json").exists()):
        make_synthetic(path.parent, **data_cfg.generate)  # never over a file it did not generate: the user's own
    if not path.exists() and data_cfg.get("source"):  # a preset of a public set says how to get it
        raise DataError(f"{path}: file not found; get it with: {data_cfg.source}")
    cols = dict(id_col=data_cfg.id_col, text_col=data_cfg.text_col)
    train = load_table(path, target_col=data_cfg.target_col, **cols)
    if len(train) < n_splits:
        raise ConfigError(f"cv.n_splits={n_splits}: must be <= the {len(train)} rows of {path}")
    test_path = test_file(data_cfg)
    if not test_path.exists():
        if data_cfg.get("test_path"):
            raise DataError(f"{test_path}: test file not found (data.test_path)")
        return train, None
    return train, load_table(test_path, require_target=False, **cols)
