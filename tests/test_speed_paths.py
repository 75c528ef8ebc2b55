"""What makes training faster must not change what it learns: the compiled path (``trainer.compile``) follows the
eager loss curve and resumes like it, evaluations nothing reads are skipped without changing the kept weights, and
the benchmarks' model-FLOP count (MFU) is torch's own count of the step's matrix multiplies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import mfu
from kfold_nlp.errors import ConfigError
from kfold_nlp.model.regressor import build_model, load_tokenizer
from kfold_nlp.train import compiled, loop
from kfold_nlp.train.compiled import cxx_compiler, is_compiled
from test_trainer import config, fit, fit_with_snapshots

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")
needs_compiler = pytest.mark.skipif(cxx_compiler() is None and not torch.cuda.is_available(),
                                    reason="inductor builds CPU kernels with a C++ compiler: none here")

# Compiled (inductor) and eager fp32 steps order their sums differently: over 12 SGD steps on the tiny model the
# validation predictions stay within this relative distance (measured: about 1e-6).
COMPILED_RTOL = 1e-4


@needs_compiler
@pytest.mark.slow  # inductor compiles the tiny backbone (seconds)
def test_compiled_training_follows_the_eager_loss_curve():
    """12 rows, batch 2, an evaluation every 2 steps over 2 epochs: the same validation curve and predictions."""
    eager_updates, eager, _ = fit(12, 2, 1, "trainer.eval_every=2")
    compiled_updates, compiled, _ = fit(12, 2, 1, "trainer.eval_every=2", "trainer.compile=true")
    assert [h["step"] for h in compiled.history] == [h["step"] for h in eager.history] == list(range(2, 13, 2))
    np.testing.assert_allclose([h["val_mse"] for h in compiled.history], [h["val_mse"] for h in eager.history],
                               rtol=COMPILED_RTOL)
    np.testing.assert_allclose(compiled.val_pred, eager.val_pred, rtol=COMPILED_RTOL)
    for name, value in eager_updates.items():  # the state dict keeps its names: snapshots and fold models load it
        torch.testing.assert_close(compiled_updates[name], value, rtol=COMPILED_RTOL, atol=1e-6)


@needs_compiler
@pytest.mark.slow  # inductor
def test_a_resumed_compiled_fold_ends_as_an_uninterrupted_one(tmp_path):
    """Dropout on, killed after the snapshot of step 2 (mid-epoch) and continued by a fresh model: bit for bit the
    uninterrupted compiled fold (the same compiled kernels, the same restored random streams)."""
    extra = ("trainer.compile=true",)
    reference, ref_params = fit_with_snapshots(tmp_path / "reference", extra=extra)
    result, params = fit_with_snapshots(tmp_path / "killed", 2, extra=extra)
    assert result.resumed_from == 2 and result.history == reference.history
    for name, value in ref_params.items():
        torch.testing.assert_close(params[name], value, atol=0, rtol=0)


def test_compile_without_a_cpu_compiler_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    monkeypatch.setattr(compiled.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match=r"^trainer.compile=true: torch.compile builds CPU kernels with a C\+\+ "
                                          r"compiler and none was found"):
        compiled.check_compilable()


@needs_compiler
def test_compile_is_in_place_and_keeps_the_parameter_names():
    cfg = config()
    model = build_model(cfg.model)
    names = list(model.state_dict())
    from kfold_nlp.train.compiled import compile_backbone

    compile_backbone(model)  # compiling happens at the first call, not here
    assert is_compiled(model) and list(model.state_dict()) == names


@pytest.mark.parametrize("eval_curve", ["true", "false"])
def test_evaluations_no_one_reads_are_skipped_and_the_kept_weights_are_the_same(eval_curve, tmp_path, monkeypatch):
    """SWA (averages weights, reads no score) and last, no early stopping, dropout on: without ``eval_curve`` the
    only validation passes are the two policies' final ones, and the fold keeps bit for bit the weights and scores
    of the run that scored all 4 planned evaluations (an evaluation draws nothing from the training's random
    stream)."""
    calls = []
    real = loop.predict
    monkeypatch.setattr(loop, "predict", lambda *args: calls.append(1) or real(*args))
    extra = ("trainer.select=swa", "trainer.also_select=[last]", "trainer.swa_evals=2")
    reference, _ = fit_with_snapshots(tmp_path / "all", extra=(*extra, "trainer.eval_curve=true"))
    planned = len(calls)
    calls.clear()
    result, _ = fit_with_snapshots(tmp_path / "run", extra=(*extra, f"trainer.eval_curve={eval_curve}"))
    assert [h["step"] for h in reference.history] == [2, 3, 4, 6]  # every 2nd step and each epoch's end (3 steps)
    assert planned == 4 + 1  # then SWA's final weights (last's are the last evaluation's)
    assert len(calls) == (planned if eval_curve == "true" else 2)
    assert result.selection == reference.selection
    for key, value in reference.best_state.items():
        torch.testing.assert_close(result.best_state[key], value, atol=0, rtol=0)


def test_a_policy_that_reads_scores_or_early_stopping_keeps_every_evaluation():
    _, best, _ = fit(12, 2, 1, "trainer.eval_every=2", "trainer.eval_curve=false")
    _, stopping, _ = fit(12, 2, 1, "trainer.eval_every=2", "trainer.eval_curve=false", "trainer.select=last",
                         "trainer.patience=10")
    assert [h["step"] for h in best.history] == [h["step"] for h in stopping.history] == list(range(2, 13, 2))


def counted_flops(model, batch: dict) -> int:
    """torch's count of the matrix multiplies of one forward and backward pass (``FlopCounterMode``)."""
    with FlopCounterMode(display=False) as counter:
        model(**batch).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("lengths", [[16], [9, 23], [5, 12, 30]])
def test_the_model_flop_count_is_torchs_count_of_the_real_tokens(lengths):
    """Sequences run one at a time, unpadded: their summed count is the formula's for their lengths (the head it
    leaves out is under 1% here). The padded batch costs torch more: padding is not counted as work. The eager
    attention, whose matrix multiplies the counter sees (it has no formula for SDPA's CPU kernel)."""
    cfg = config()
    model = build_model(cfg.model).train()
    model.backbone.set_attn_implementation("eager")
    tokenizer = load_tokenizer(cfg.model)
    ids = [torch.randint(1000, 2000, (1, n)) for n in lengths]
    unpadded = sum(counted_flops(model, {"input_ids": x, "attention_mask": torch.ones_like(x)}) for x in ids)
    config_ = model.backbone.config
    assert mfu.train_flops(config_, lengths) == pytest.approx(unpadded, rel=0.01)
    padded = torch.full((len(lengths), max(lengths)), tokenizer.pad_token_id)
    mask = torch.zeros_like(padded)
    for i, x in enumerate(ids):
        padded[i, :x.shape[1]], mask[i, :x.shape[1]] = x[0], 1
    assert mfu.real_lengths(mask) == lengths
    assert mfu.padding_share([{"attention_mask": mask}]) == pytest.approx(1 - sum(lengths) / mask.numel())
    if len(set(lengths)) > 1:
        assert counted_flops(model, {"input_ids": padded, "attention_mask": mask}) > unpadded


@pytest.mark.slow  # a whole CV run
def test_folds_leave_nothing_behind(tiny_data, tmp_path, monkeypatch):
    """A 3-fold run with every policy scored: once a fold is written, nothing holds its model, its optimizer or its
    policies' weights, and the second and third folds' peak resident memory is within 10% of the first's."""
    import gc
    import json
    import weakref

    from conftest import cli, tiny_overrides
    from kfold_nlp.cv import fold as cv_fold
    from kfold_nlp.train import selection

    made, alive_at_fold_end = [], []
    build, make_policy, fit_fold = cv_fold.build_fold_model, selection.make, cv_fold.fit_fold

    def track(*args, **kwargs):
        out = build(*args, **kwargs)
        made.append(weakref.ref(out[1]))
        return out

    def track_policy(*args, **kwargs):
        policy = make_policy(*args, **kwargs)
        made.append(weakref.ref(policy))
        return policy

    def fit_then_count(*args, **kwargs):
        result = fit_fold(*args, **kwargs)
        gc.collect()
        alive_at_fold_end.append(sum(ref() is not None for ref in made))
        return result

    monkeypatch.setattr(cv_fold, "build_fold_model", track)
    monkeypatch.setattr(loop.selection, "make", track_policy)
    monkeypatch.setattr("kfold_nlp.cv.run.fit_fold", fit_then_count)
    run_dir = tmp_path / "run"
    cli("cv", *tiny_overrides(tiny_data, run_dir), "trainer.select=swa", "trainer.also_select=[best,last,ema]")
    assert len(made) == 3 * 5 and alive_at_fold_end == [0, 0, 0]
    peaks = [json.loads((run_dir / f"fold_{k}" / "result.json").read_text())["peak_rss_mb"] for k in range(3)]
    assert max(peaks[1:]) <= 1.1 * peaks[0], peaks
