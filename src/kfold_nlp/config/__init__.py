"""The configuration: the typed schema of every key and choice, its rules, where the configs live."""
