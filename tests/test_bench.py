"""`make bench` finds its regularizers and their cost targets in conf/, and runs end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from kfold_nlp import bench
from kfold_nlp.paths import CONFIG_DIR


def test_every_regularizer_yaml_and_its_variants_are_benched_baseline_first():
    runs = bench.runs_from_conf(Path(CONFIG_DIR))
    yamls = {p.stem for p in (Path(CONFIG_DIR) / "regularizer").glob("*.yaml")}
    assert runs[0] == ("baseline", "baseline", {})
    assert {name for _, name, _ in runs} == yamls
    assert ("rdrop_2fwd", "rdrop", {"single_forward": False}) in runs


def test_bench_reports_each_ratio_against_its_class_target(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--model", "tiny", "--steps", "1", "--warmup", "1", "--batch-size", "2", "--max-length", "16",
                "--data", str(tmp_path / "none.csv"), "--out", str(out)])
    results = {r["regularizer"]: r for r in json.loads(out.read_text())["results"]}
    assert results["baseline"]["ratio"] == 1.0
    assert results["rdrop"]["target"] == "<= 2.00x" and results["rdrop"]["status"] in ("PASS", "FAIL")
    assert results["rdrop_2fwd"]["target"] is None  # a variant is timed, not judged
    assert results["no_dropout"]["target"] is None and all(r["ms_per_step"] > 0 for r in results.values())
