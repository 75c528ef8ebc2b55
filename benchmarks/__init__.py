"""Benchmarks of the package, run from the repository's root (``make bench``, ``make race``); not in the wheel."""
