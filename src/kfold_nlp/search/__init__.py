"""Hyper-parameter search: an Optuna study over K-fold CV runs, persistent, resumable and pruned fold by fold."""
