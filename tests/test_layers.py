"""Dependencies point one way: the packages that train and write a run (cv/, train/, model/, data/) never import the
analysis, which reads finished runs; what both need (RMSE, the bootstrap, the holdout's verdict) is the leaf
``kfold_nlp.metrics``. Imports inside functions count: they hide a dependency rather than remove it."""

from __future__ import annotations

from conftest import ROOT
from test_imports import import_graph  # the package's import graph, as the cycle test reads it

PACKAGE = ROOT / "src" / "kfold_nlp"
WRITERS = ("kfold_nlp.cv", "kfold_nlp.train", "kfold_nlp.model", "kfold_nlp.data")
READER = "kfold_nlp.analysis"
# The Hydra callback that rewrites a sweep's summary after each job runs the analysis by design: glue between Hydra's
# sweeps and the tables, not part of training; it leaves this list when it moves out of cv/.
EXEMPT: set[str] = set()


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def reader_imports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each writer module (not exempt) -> the analysis modules it imports."""
    return {name: found for name, targets in graph.items()
            if any(within(name, w) for w in WRITERS) and name not in EXEMPT
            and (found := {t for t in targets if within(t, READER)})}


def test_no_module_that_writes_runs_imports_the_analysis():
    graph = import_graph(PACKAGE)
    assert "kfold_nlp.cv.collect" in graph and "kfold_nlp.metrics" in graph["kfold_nlp.cv.collect"]
    offenders = reader_imports(graph)
    assert not offenders, "; ".join(f"{m} imports {', '.join(sorted(t))}" for m, t in sorted(offenders.items()))


def test_the_metrics_leaf_imports_nothing_of_the_packages_it_serves():
    targets = import_graph(PACKAGE)["kfold_nlp.metrics"]
    assert not {t for t in targets if any(within(t, p) for p in (*WRITERS, READER))}, targets


def test_an_import_inside_a_function_is_found(tmp_path):
    pkg = tmp_path / "kfold_nlp"
    for sub in ("cv", "analysis"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "analysis" / "sweep.py").write_text("")
    (pkg / "cv" / "run.py").write_text("def f():\n    from ..analysis.sweep import write_sweep\n")
    (pkg / "cv" / "fold.py").write_text("def g():\n    import kfold_nlp.analysis\n")
    assert reader_imports(import_graph(pkg)) == {"kfold_nlp.cv.run": {"kfold_nlp.analysis.sweep"},
                                                 "kfold_nlp.cv.fold": {"kfold_nlp.analysis"}}
