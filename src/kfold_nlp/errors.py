"""The error types every command reports as one ``error: ...`` line (exit 2): a leaf module, so that data loading,
the config schema and the tasks can all raise them without importing each other."""

from __future__ import annotations


class OneLineError(ValueError):
    """``str(err)`` is one line: embedded newlines (pandas' messages, say) are folded, so logs stay greppable."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class DataError(OneLineError):
    """Bad input data: the line names the file (and the row, column or key when relevant) and the problem."""


class ConfigError(OneLineError):
    """A bad configuration value: the line names the key, the value and what is allowed."""
