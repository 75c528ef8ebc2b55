"""The machine a run is on: ``precision=auto`` from the hardware, threads from the usable cores, the hardware record
in every run's metrics and beside every benchmark figure, and benchmark contestants on the device they claim."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import Result, cli, read_metrics, tiny_overrides
from kfold_nlp.cv import launch
from kfold_nlp.train import hardware
from kfold_nlp.train.precision import is_emulated, native_precisions, resolve_precision
from kfold_nlp.train.threads import THREADS_ENV, set_threads, split_cores, threads_for_this_process


@pytest.fixture
def machine(monkeypatch):
    """Patch what the hardware answers: ``machine(cuda=..., cuda_bf16=..., cpu_bf16=...)``."""

    def set_(cuda=False, cuda_bf16=False, cpu_bf16=False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: cpu_bf16)
        monkeypatch.setattr(hardware, "cpu_capability", lambda: "AVX512" if cpu_bf16 else "AVX2")
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"} if cpu_bf16 else ()))

    return set_


@pytest.mark.parametrize("answers, expected, why", [
    ({"cpu_bf16": False}, "fp32", "precision auto -> fp32: this CPU has no native bf16 (AVX2)"),
    ({"cpu_bf16": True}, "bf16", "precision auto -> bf16: this CPU has native bf16 (AVX512-BF16)"),
    ({"cuda": True, "cuda_bf16": True}, "bf16", "precision auto -> bf16: Fake GPU supports bf16"),
    ({"cuda": True, "cuda_bf16": False}, "fp16", "precision auto -> fp16: Fake GPU has no bf16"),
])
def test_auto_resolves_from_the_hardware(machine, answers, expected, why):
    machine(**answers)
    assert resolve_precision("auto") == (expected, why)


def test_explicit_precisions_stay_and_only_emulated_bf16_warns(machine):
    machine(cpu_bf16=False)
    assert resolve_precision("fp32") == ("fp32", None)
    precision, note = resolve_precision("bf16")
    assert precision == "bf16" and note.startswith("warning: trainer.precision=bf16 on a CPU without native bf16")
    assert native_precisions() == ["fp32"] and is_emulated("bf16")
    machine(cpu_bf16=True)
    assert resolve_precision("bf16") == ("bf16", None) and native_precisions() == ["fp32", "bf16"]
    machine(cuda=True, cuda_bf16=True)
    assert resolve_precision("bf16") == ("bf16", None) and not is_emulated("bf16", "cuda")


def test_threads_follow_the_usable_cores_and_the_launchers_share(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 64)
    assert hardware.usable_cores() == 1 and threads_for_this_process() == 1  # not the host's 64
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert threads_for_this_process() == 8
    assert split_cores(3) == 2 and split_cores(16) == 1
    monkeypatch.setenv(THREADS_ENV, "4")
    assert threads_for_this_process() == 4
    monkeypatch.setenv(THREADS_ENV, "99")  # never more than the cores
    assert threads_for_this_process() == 8
    # joblib runs min(folds, n_jobs or one per core) jobs at once; submitit_local all of them; SLURM elsewhere
    assert launch.local_jobs("joblib", [], 5) == 5 and launch.local_jobs("joblib", [], 20) == 8
    assert launch.local_jobs("joblib", ["hydra.launcher.n_jobs=2"], 5) == 2
    assert launch.local_jobs("submitit_local", [], 5) == 5 and launch.local_jobs("slurm", [], 5) is None
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_ENV, "1")
        assert set_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _run_patched(cpu_bf16: bool, *overrides: str) -> Result:
    """The real entry point, where the CPU answers ``cpu_bf16`` to the native-bf16 question."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hardware, "cpu_has_native_bf16", lambda: cpu_bf16)
        return cli("cv", *overrides, check=False)


@pytest.mark.slow
def test_a_run_says_what_auto_chose_first_and_records_it_with_the_hardware(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = _run_patched(False, *tiny_overrides(tiny_data, run_dir), "cv.n_splits=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("precision auto -> fp32: this CPU has no native bf16 (")
    assert "precision: fp32" in (run_dir / "run_config.yaml").read_text()
    record = read_metrics(run_dir)["hardware"]
    assert record["precision"] == "fp32" and record["cpu_native_bf16"] is False
    assert record["cores_usable"] == hardware.usable_cores() and record["threads"] >= 1
    assert {"cpu", "cpu_capability", "gpu", "gpu_count", "torch", "transformers"} <= record.keys()


@pytest.mark.slow
def test_explicit_bf16_on_a_cpu_without_it_warns_once_and_runs(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = _run_patched(False, *tiny_overrides(tiny_data, run_dir), "trainer.precision=bf16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stdout.splitlines() if "without native bf16" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: trainer.precision=bf16")
    assert read_metrics(run_dir)["hardware"]["precision"] == "bf16"


def test_race_contestants_report_the_device_they_ran_on(monkeypatch, tmp_path, fresh_accelerator_state):
    """Each contestant reports the device its forward pass saw, weights and batch; the minimal loop follows the
    device check (a fake ``meta`` device here: the loop must move the model and every batch there)."""
    from benchmarks import race
    from kfold_nlp.model.regressor import load_tokenizer, tokenize

    cfg = race.config("tiny", "fp32", batch_size=8, max_length=32)
    texts = ["A short text about reading.", "Another one, a little longer than the first one."] * 20
    targets = np.linspace(-1, 1, len(texts))
    tokenizer = load_tokenizer(cfg.model)
    enc = tokenize(tokenizer, texts, 32)
    for run in (race.run_project, race.run_minimal):
        speed, device = run(cfg, enc, targets, tokenizer)
        assert device == "cpu" and speed > 0
    speed, device = race.run_hf_trainer(cfg, enc, targets, tokenizer, out_dir=str(tmp_path))
    assert device == "cpu"

    monkeypatch.setattr(race, "train_device", lambda: torch.device("meta"))
    seen = {}
    real_watch = race.watch_device
    monkeypatch.setattr(race, "watch_device", lambda model: seen.setdefault("d", real_watch(model)))
    try:
        race.run_minimal(cfg, enc, targets, tokenizer)
    except (NotImplementedError, RuntimeError):  # the fake device cannot run every kernel; the first forward ran
        pass
    assert seen["d"]["device"] == "meta"


def test_race_counts_the_work_of_real_tokens_and_the_padding_of_each_sampler(tmp_path, monkeypatch):
    """Per sample, the model work of the rows' real tokens; the project's length-grouped batches carry less padding
    than random ones (Trainer's sampler) on texts of varied lengths."""
    from argparse import Namespace

    from transformers import AutoConfig

    from benchmarks import mfu, race

    monkeypatch.chdir(tmp_path)  # the embedded set, generated here
    args = Namespace(model="tiny", precision=["fp32"], batch_size=8, max_length=256, rows=64, data="synthetic",
                     regularizer="baseline")
    per_sample, padding = race.work(args)
    cfg, enc, _, _ = race.setup(args)
    lengths = [len(ids) for ids in enc["input_ids"][:64]]
    assert per_sample == pytest.approx(mfu.train_flops(AutoConfig.from_pretrained(cfg.model.backbone), lengths) / 64)
    assert 0 <= padding["project"] < padding["random"] < 1
    # every contestant trains with the regularizer asked for: by default the model's dropout as shipped
    assert cfg.regularizer._target_.endswith("base.Regularizer")
    assert race.config("tiny", "fp32", 8, 64).regularizer == cfg.regularizer
    assert race.config("tiny", "fp32", 8, 64, "no_dropout").regularizer._target_.endswith("NoDropout")


def test_benchmark_header_names_the_machine():
    line = hardware.header(hardware.record())
    assert line.startswith(f"hardware: {hardware.cpu_model()} ({hardware.cpu_capability()}, ")
    assert f"{hardware.usable_cores()} usable cores" in line and f"torch {torch.__version__}" in line
    assert json.dumps(hardware.record("fp32"))  # JSON-ready, as metrics.json and W&B need
