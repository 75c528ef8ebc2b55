"""`make bench` finds its regularizers in conf/, judges them by its own cost targets, and runs end to end on a tiny
model on a fresh machine (the embedded set, generated where it runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench, rows
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.model.regularizers import Regularizer
from kfold_nlp.train.compiled import cxx_compiler

REGULARIZERS = Path(CONFIG_DIR) / "regularizer"


def test_every_regularizer_yaml_and_its_variants_are_benched_baseline_first():
    runs = bench.runs_from_conf(Path(CONFIG_DIR))
    assert runs[0] == ("baseline", "baseline", {})
    assert {name for _, name, _ in runs} == {p.stem for p in REGULARIZERS.glob("*.yaml")}
    assert ("rdrop_2fwd", "rdrop", {"single_forward": False}) in runs


def test_a_target_for_a_regularizer_that_is_gone_is_refused(tmp_path, monkeypatch):
    (tmp_path / "regularizer").mkdir()
    (tmp_path / "regularizer" / "baseline.yaml").write_text((REGULARIZERS / "baseline.yaml").read_text())
    monkeypatch.setattr(bench, "MAX_STEP_COST", {"renamed": 1.5})
    monkeypatch.setattr(bench, "VARIANTS", {})
    with pytest.raises(SystemExit, match="bench targets for renamed: no such conf/regularizer"):
        bench.runs_from_conf(tmp_path)


def test_the_benchmark_metadata_is_not_the_regularizers():
    assert not {"max_step_cost", "bench_variants"} & set(vars(Regularizer))


def test_bench_on_a_fresh_machine_reports_each_ratio_against_its_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default data: the embedded set, generated here as `make cv` would
    out = tmp_path / "bench.json"
    bench.main(["--model", "tiny", "--steps", "1", "--warmup", "1", "--batch-size", "2", "--max-length", "16",
                "--base-model", "none", "--out", str(out)])
    assert (tmp_path / "data" / "synthetic" / "400-16-42" / "train.csv").is_file()
    report = json.loads(out.read_text())
    assert report["args"]["data"] == "synthetic"
    results = {r["regularizer"]: r for r in report["results"]}
    assert results["baseline"]["ratio"] == 1.0
    assert results["rdrop"]["target"] == "<= 2.00x" and results["rdrop"]["status"] in ("PASS", "FAIL")
    assert results["rdrop_2fwd"]["target"] is None  # a variant is timed, not judged
    assert results["no_dropout"]["target"] is None and all(r["ms_per_step"] > 0 for r in results.values())
    # every row against the measured peak; the compiled baseline beside the eager one
    assert all(0 < r["mfu"] < 1 and r["tflops"] > 0 for r in results.values())
    if cxx_compiler() is not None:  # inductor's CPU kernels need one; without, the row is skipped with a line
        assert results["baseline+compile"]["target"] is None and results["baseline+compile"]["first_step_ms"] > 0


def test_data_is_a_preset_or_a_csv_and_a_missing_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "mine.csv"
    csv.write_text("id,excerpt,target\na,One text.,0.5\nb,Another text.,-1.5\n")
    texts, targets = rows.load_rows(str(csv), 5)
    assert set(texts) == {"One text.", "Another text."} and len(targets) == 5  # fewer rows: drawn with replacement
    assert set(targets) == {0.5, -1.5}
    with pytest.raises(SystemExit) as exit_:
        rows.load_rows("commonlit", 5)  # the Kaggle file, not downloaded here
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: data/commonlit/train.csv: file not found; get it with: kaggle ")


@pytest.mark.process  # each configuration in a fresh process of its own (its peak memory is its own)
def test_make_memory_measures_each_mode_and_lists_a_refused_one_as_skipped(tmp_path, monkeypatch):
    from benchmarks import memory

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "memory.json"
    memory.main(["--models", "tiny", "--precisions", "fp32", "--modes", "full", "lora", "--rounds", "1",
                 "--steps", "1", "--batch-size", "2", "--max-length", "16", "--out", str(out)])
    rows = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    full, lora = rows["full"], rows["lora"]
    assert full["trainable"] == full["params"] and 0 < lora["trainable"] < full["trainable"] / 10
    assert 0 < lora["optimizer_state_mib"] < full["optimizer_state_mib"] / 10  # AdamW's two moments, adapters only
    assert all(r["peak_rss_mib"] > 0 and r["ms_per_step"] > 0 for r in rows.values())
    monkeypatch.setattr(memory, "MODES", memory.MODES | {"lora": {"peft": "lora", "lora": {"target_modules": ["x"]}}})
    memory.main(["--models", "tiny", "--precisions", "fp32", "--modes", "lora", "--rounds", "1", "--steps", "1",
                 "--batch-size", "2", "--max-length", "16", "--out", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["skipped"] == "model.lora.target_modules: 'x' names no module of bert"
