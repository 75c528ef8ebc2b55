"""The offline inference bundle of a run: ``export`` builds it, ``infer`` is the standalone script inside it."""
