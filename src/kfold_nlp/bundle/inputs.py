"""The one check of a CSV to predict, shared by ``make predict`` and every bundle's script (which carries this file
as ``kfold_inputs.py``): pandas only, so that both accept, refuse and note the same rows with the same lines.

A refusal is ``BadInput`` (one line, exit 2, as the project's ``DataError``). A blank text (empty or whitespace only)
is predicted, not refused: the script's usual input is a competition's hidden test file, where a refusal loses the
whole submission while a blank text's prediction costs one row; both commands name such rows in a ``note:`` line.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

EXIT = 2  # the project's exit status for bad input (kfold_nlp.errors.Exit.BAD_INPUT)


class BadInput(ValueError):
    """A CSV or an output path the command cannot use: ``str(err)`` is one line naming it; exit 2."""

    exit = EXIT

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _rows(mask) -> tuple[int, int]:
    """How many rows ``mask`` flags, and the first one's 1-based data row."""
    flagged = [i for i, bad in enumerate(mask) if bad]
    return len(flagged), flagged[0] + 1


def read_table(path: Path):
    """Every column of ``path`` as text (only an empty field is missing: an id "NA" or a text "None" survive), the
    header's names stripped (a spreadsheet's byte-order mark too); pandas' and the file system's failures refused."""
    import pandas as pd

    if Path(path).is_dir():
        raise BadInput(f"{path}: is a folder; give a CSV file")
    try:
        with warnings.catch_warnings():  # extra fields in a row would become a silent index column: unparsable
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], index_col=False,
                                encoding="utf-8-sig")
    except FileNotFoundError:
        raise BadInput(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise BadInput(f"{path}: file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: cannot parse as CSV: {err}") from None
    except OSError as err:
        raise BadInput(f"{path}: cannot read file: {err.strerror or err}") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def read_input(path, id_col: str, text_col: str):
    """The rows to predict of ``path``: a table of ``id`` and ``text`` (both str, in the file's order), and the
    ``note`` on its blank texts (None when there is none). Refused: no such file, nothing to parse, a missing
    column, an empty or duplicated id, no rows."""
    import pandas as pd

    path = Path(path)
    raw = read_table(path)
    missing = [c for c in (id_col, text_col) if c not in raw.columns]
    if missing:
        raise BadInput(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                       f"columns found: {', '.join(map(repr, raw.columns))}")
    if raw.empty:
        raise BadInput(f"{path}: 0 rows but at least 1 are needed (a header and no rows)")
    ids = raw[id_col]
    if ids.isna().any():
        count, row = _rows(ids.isna())
        raise BadInput(f"{path}: empty {id_col!r} in {count} row(s); first at data row {row}")
    dup = ids.duplicated(keep=False)
    if dup.any():
        first = ids[dup].iloc[0]
        rows = [i + 1 for i, same in enumerate(ids == first) if same]
        raise BadInput(f"{path}: {ids[dup].nunique()} duplicated {id_col!r} value(s); first {first!r} at data rows "
                       f"{rows}")
    text = raw[text_col].fillna("")
    blank = text.str.strip() == ""
    note = None
    if blank.any():
        count, row = _rows(blank)
        note = (f"{path}: {count} blank {text_col!r} text(s) (empty or whitespace only), first at data row {row} "
                f"(id {ids.iloc[row - 1]!r}): predicted as empty texts")
    return pd.DataFrame({"id": ids.astype(str), "text": text.astype(str)}).reset_index(drop=True), note


def check_out(out, source) -> None:
    """The file to write is neither a folder nor the input itself (its texts would be replaced by predictions)."""
    out, source = Path(out), Path(source)
    if out.is_dir():
        raise BadInput(f"{out}: is a folder; give a file name to write")
    if out.exists() and source.exists() and os.path.samefile(out, source):
        raise BadInput(f"{out}: is the input file; give another file to write")
