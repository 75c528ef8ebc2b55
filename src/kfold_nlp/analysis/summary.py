"""The names the compare and sweep tables had here, before they were split by noun (``runs``, ``tables``,
``compare``, ``sweep``): kept importable for the tests written against this module; new code imports them from
their own module."""

from __future__ import annotations

from .compare import compare_table, format_compare, regularizer_order, write_compare  # noqa: F401
from .runs import run_labels  # noqa: F401
from .runs import run_rows as collect  # noqa: F401
from .sweep import seed_table, sweep_table, write_sweep  # noqa: F401
from .tables import MARK, format_table, text  # noqa: F401
from .tables import markdown as _markdown  # noqa: F401
