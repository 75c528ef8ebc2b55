"""How the analysis tables read: each cell as text (blank when missing, never ``-0.0000``), markdown, the mark of a
difference worth attention and the note that says what the intervals are."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import metrics

REFERENCE = "baseline"  # the run every other is compared against, when there is one


MARK = "*"  # a difference whose interval excludes 0 and that is at least metrics.MIN_DIFF (Interval.marked)


MARK_NOTE = f"{MARK}: the interval excludes 0 and |diff| >= {metrics.MIN_DIFF} (a smaller gap is not marked)"


INTERVAL_NOTE = (f"95% interval: paired bootstrap over the OOF rows, stratified by fold, {metrics.N_BOOT} resamples; "
                 f"{MARK_NOTE}. Blank: no OOF file, or other folds.\n")


def text(value, fmt: str = ".4f") -> str:
    """A table cell: blank when missing (never ``nan``), ``yes``/``no`` for a flag, never ``-0.0000``."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, float, np.number)):
        out = f"{value:{fmt}}"
        return out[1:] if out.startswith("-") and float(out) == 0 else out
    return str(value)


def format_table(df: pd.DataFrame, fmt: dict | None = None) -> pd.DataFrame:
    """Every cell as ``text`` (4 decimals unless ``fmt`` says otherwise per column), one line per cell."""
    fmt = fmt or {}
    out = pd.DataFrame({c: [text(v, fmt.get(c, ".4f")) for v in df[c]] for c in df.columns}, index=df.index)
    return out.replace(r"\s*\n\s*", " ", regex=True)


def markdown(df: pd.DataFrame) -> str:
    """4 decimals for scores, 1 for seconds, blanks for missing values, one line per row."""
    fmt = {c: ".1f" if c.endswith("_s") else "g" if c == "n_seeds" else ".4f" for c in df.columns}
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) else "left" for c in df.columns]
    return format_table(df, fmt).to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"
