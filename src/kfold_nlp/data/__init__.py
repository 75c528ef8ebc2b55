"""The data: the CSV gate, the synthetic set, folds and holdout, fingerprints, datasets and loaders."""
