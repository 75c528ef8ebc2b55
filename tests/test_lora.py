"""LoRA (``model.peft=lora``): only the adapters, pooling and head train; a fold writes merged weights that every
reader (``make predict``, the export bundle, refit) loads as a plain model; a killed LoRA fold resumes bit for bit;
the combinations that cannot work are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import BertConfig, MPNetConfig

from conftest import tiny_overrides
from kfold_nlp import predict
from kfold_nlp.bundle import export
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv.app import composed_config
from kfold_nlp.cv.fold import build_fold_model
from kfold_nlp.cv.run import run as run_cv
from kfold_nlp.errors import ConfigError
from kfold_nlp.model import lora
from kfold_nlp.model.optim import param_groups
from kfold_nlp.model.regressor import build_model
from test_bundle import run_here
from test_trainer import config, fit_with_snapshots

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def test_only_the_adapters_the_pooling_and_the_head_train():
    cfg = config("model.peft=lora", "model.pooling=attention", "model.lora.r=4")
    _, model, _ = build_fold_model(cfg, fold=0)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n or not n.startswith("backbone.") for n in trained)
    assert {n for n in trained if not n.startswith("backbone.")} == {
        n for n, _ in model.named_parameters() if not n.startswith("backbone.")}  # pooling and head: all of them
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained if ".lora_" in n}
    assert adapted == {"query", "value"}  # peft's default for BERT
    a = next(p for n, p in model.named_parameters() if n.endswith("query.lora_A.default.weight"))
    assert a.shape[0] == 4
    groups = param_groups(model, 1e-3, 0.01, llrd=0.5)  # LLRD still finds the layer stack under the adapters
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for n, p in model.named_parameters() if p.requires_grad)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["encoder.layer.1"] == 1e-3 and lrs["encoder.layer.0"] == 5e-4


def test_merged_weights_predict_as_the_adapted_model_and_load_as_a_plain_one():
    cfg = config("model.peft=lora")
    torch.manual_seed(0)
    model = lora.adapt(build_model(cfg.model), cfg.model).eval()
    for name, param in model.named_parameters():
        if ".lora_B." in name:  # B starts at zero (the adapted model starts as the pretrained one): move it
            param.data.normal_(0, 0.5)
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    plain = lora.merged(model)
    assert not lora.is_adapted(plain) and lora.is_adapted(model)  # the training model keeps its adapters
    fresh = build_model(cfg.model, pretrained=False)  # what make predict builds
    fresh.load_state_dict(plain.state_dict())  # strict: exactly the plain model's names
    with torch.no_grad():
        expected = model(ids, mask)
        torch.testing.assert_close(fresh.eval()(ids, mask), expected, rtol=0, atol=1e-5)
        assert not torch.allclose(build_model(cfg.model).eval()(ids, mask), expected, atol=1e-3)  # LoRA changed it


def test_a_killed_lora_fold_resumes_identical_to_an_uninterrupted_one(tmp_path):
    """Dropout on (the adapters' too), killed after the snapshot of step 2, continued by a fresh adapted model."""
    extra = ("model.peft=lora", "model.lora.dropout=0.2")
    reference, ref_params = fit_with_snapshots(tmp_path / "reference", extra=extra)
    result, params = fit_with_snapshots(tmp_path / "killed", 2, extra=extra)
    assert result.resumed_from == 2 and result.history == reference.history
    assert any(".lora_A." in n for n in params)
    for name, value in ref_params.items():
        torch.testing.assert_close(params[name], value, atol=0, rtol=0)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A tiny fp32 CV run with LoRA adapters, scoring every policy (EMA and SWA average the adapters)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    base = tmp_path_factory.mktemp("lora")
    overrides = [o for o in tiny_overrides(base / "data", base) if not o.startswith("hydra.")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [*overrides, "name=test", "trainer.precision=fp32", "model.peft=lora",
                                 "model.lora.r=4", "optimizer.lr=5e-3", "trainer.select=ema",
                                 "trainer.also_select=[swa,last,best]"])
    run_cv(cfg, base / "run")
    return base / "run"


def test_a_lora_runs_fold_models_are_merged_and_export_reproduces_make_predict(lora_run, tmp_path):
    run_cfg = OmegaConf.load(lora_run / "run_config.yaml")
    for fold in range(3):
        weights = load_file(str(lora_run / f"fold_{fold}" / "model.safetensors"))
        start = lora.merged(build_fold_model(run_cfg, fold)[1]).state_dict()  # B = 0: the fold's first weights
        assert set(weights) == set(start)  # plain names: no adapter, no base_layer
        changed = {k for k in weights if not torch.equal(weights[k], start[k])}
        assert changed and all(k.startswith(("head.", "pool.")) or k.endswith(("query.weight", "value.weight"))
                               for k in changed)  # the merged adapters, and nothing else of the backbone
    test_csv = lora_run.parent / "data" / "test.csv"
    expected = predict.predict_run(lora_run, test_csv)
    submission = pd.read_csv(lora_run / "submission.csv")  # the run's own test predictions, from the same weights
    np.testing.assert_allclose(submission["target"], expected["target"], atol=1e-5, rtol=0)
    bundle = export.export_run(lora_run, tmp_path / "bundle")["out"]
    proc = run_here(bundle, test_csv, "--out", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(pd.read_csv(tmp_path / "s.csv")["target"], expected["target"], atol=1e-5, rtol=0)


def test_every_policy_of_a_lora_fold_is_scored(lora_run):
    selection = json.loads((lora_run / "fold_0" / "result.json").read_text())["selection"]
    assert set(selection) == {"ema", "swa", "last", "best"}
    last = selection["last"]["val_mse"]
    assert selection["ema"]["val_mse"] != last and selection["swa"]["val_mse"] != last  # averages of the adapters


def overrides(*extra: str) -> list[str]:
    return ["model=tiny", "model.peft=lora", *extra]


def checked(*extra: str):
    composed_config(overrides(*extra), check=True)


def test_mixout_with_lora_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^regularizer=mixout: acts on the backbone's own weights, which "
                                          r"model.peft=lora freezes"):
        checked("regularizer=mixout")


def test_target_modules_that_name_no_module_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^model.lora.target_modules: 'q_proj' names no module of bert$"):
        checked("model.lora.target_modules=[query,q_proj]")
    checked("model.lora.target_modules=[query,key,value,dense]")


def test_an_architecture_without_a_default_target_needs_one_named():
    mpnet = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37)
    cfg = config("model.peft=lora").model
    assert lora.check_targets(cfg, mpnet).startswith("model.lora.target_modules=null: peft has no default for mpnet")
    cfg.lora.target_modules = ["q", "v"]
    assert lora.check_targets(cfg, mpnet) is None
    assert lora.check_targets(config("model.peft=lora").model, BertConfig(hidden_size=32, num_hidden_layers=1,
                                                                          num_attention_heads=2)) is None
