"""Reading finished runs: finding them, statistics, compare and sweep tables, ensembles, reports."""
