"""Domain pretraining (``kfold-nlp pretrain``) cannot leak: it never feeds a holdout row's text to the collator, a CV
run refuses a backbone pretrained on one of its holdout rows, a pretrained backbone trains through the CV and its
fingerprint names the pretraining, and a killed pretraining continues to the uninterrupted one's weights."""

from __future__ import annotations

import json
from argparse import Namespace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import cli, tiny_overrides
from kfold_nlp import pretrain
from kfold_nlp.data.folds import HOLDOUT, assign
from kfold_nlp.model.manifest import MANIFEST, text_digest
from kfold_nlp.model.regressor import load_tokenizer, tokenize
from kfold_nlp.train import snapshot

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")

HOLD = "cv.holdout=0.25"


def overrides(data, *extra: str) -> list[str]:
    """The tiny run's data and model, fp32, as the CV run it is for would compose them."""
    keep = [o for o in tiny_overrides(data, data / "unused") if o.split("=")[0] in (
        "model", "data.path", "data.test_path", "data.generate.n_train", "data.generate.n_test", "cv.n_splits")]
    return [*keep, "trainer.precision=fp32", *extra]


def args(out, **kw) -> Namespace:
    return Namespace(**({"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup": 0.0, "mlm_probability": 0.15,
                         "whole_word": False, "extra": [], "snapshot_every": 2, "out": str(out)} | kw))


@pytest.mark.parametrize("whole_word", [False, True])
def test_the_pretraining_never_sees_a_holdout_text(whole_word, tiny_data, tmp_path):
    """Every row given to the collator, over every step, is the tokens of a text that is not a holdout row's; the
    manifest lists the texts seen (train rows but the holdout's, and the test file's) and how many were held out.
    Whole-word masking too (its rows carry each token's offsets)."""
    cfg = pretrain.compose_config(overrides(tiny_data, HOLD))
    train = pd.read_csv(tiny_data / "train.csv", dtype={"id": str})
    folds = assign(train["id"], train["target"], cfg.cv)
    held = train["excerpt"][folds == HOLDOUT].tolist()
    tokenizer = load_tokenizer(cfg.model)
    held_ids = {tuple(ids) for ids in tokenize(tokenizer, held, cfg.model.max_length)["input_ids"]}
    fed = []
    out = pretrain.pretrain(cfg, args(tmp_path / "pre", steps=12, whole_word=whole_word),
                            collate_hook=lambda rows: fed.extend(tuple(r["input_ids"]) for r in rows))
    assert len(fed) == 12 * 8 and len(held_ids) == len(held) > 0
    assert not held_ids & set(fed)
    manifest = json.loads((out / MANIFEST).read_text())
    assert not {text_digest(t) for t in held} & set(manifest["texts"])
    train_source = next(s for s in manifest["data"] if s["role"] == "train")
    assert train_source["held_out"] == len(held) and train_source["used"] == len(train) - len(held)
    assert [s["role"] for s in manifest["data"]] == ["train", "test"] and manifest["holdout"] == 0.25
    assert len(manifest["loss_curve"]) >= 2 and not (out / snapshot.NAME).exists()


@pytest.mark.slow  # the CLI in this process
def test_a_run_refuses_a_backbone_pretrained_on_its_holdout_and_trains_on_one_that_was_not(tiny_data, tmp_path):
    """Pretrained without the holdout (every train text seen): the run with a holdout ends in one line naming the
    backbone and writes no run folder. Pretrained with the run's own holdout: the run trains on it, and its
    fingerprint records the pretraining."""
    seen_all = pretrain.pretrain(pretrain.compose_config(overrides(tiny_data)), args(tmp_path / "all"))
    backbone = ["model.pretrained=true", "model.config_overrides={}"]
    run_dir = tmp_path / "runs" / "leaky"
    proc = cli("cv", *tiny_overrides(tiny_data, run_dir), HOLD, f"model.backbone={seen_all}", *backbone,
               check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: model.backbone={seen_all}: pretrained on the texts of 12 of this run's 12 "
                               f"holdout rows")
    assert not run_dir.exists()

    clean = pretrain.pretrain(pretrain.compose_config(overrides(tiny_data, HOLD)), args(tmp_path / "clean"))
    run_dir = tmp_path / "runs" / "clean"
    cli("cv", *tiny_overrides(tiny_data, run_dir), HOLD, f"model.backbone={clean}", *backbone)
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text())
    assert fingerprint["backbone"] == pretrain.file_digest(clean / MANIFEST)[:16]
    assert json.loads((run_dir / "metrics.json").read_text())["cv"]["rmse"] > 0


class Killed(Exception):
    """Stands in for a SIGKILL right after a snapshot was written."""


def test_a_killed_pretraining_continues_to_the_uninterrupted_weights(tiny_data, tmp_path, monkeypatch):
    """Killed after the snapshot of step 2 of 6 and started again with the same --out: the same final weights and
    loss curve as a pretraining never interrupted (the batches and the masks' random stream are restored)."""
    cfg = pretrain.compose_config(overrides(tiny_data, HOLD))
    reference = pretrain.pretrain(cfg, args(tmp_path / "reference"))
    save = snapshot.save

    def save_then_kill(*a, **kw):
        save(*a, **kw)
        if kw["state"]["step"] == 2:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(snapshot, "save", save_then_kill)
        with pytest.raises(Killed):
            pretrain.pretrain(cfg, args(tmp_path / "killed"))
    torch.manual_seed(123)  # the continued start must not depend on the stream it starts with
    killed = pretrain.pretrain(cfg, args(tmp_path / "killed"))
    expected, got = (json.loads((p / MANIFEST).read_text()) for p in (reference, killed))
    assert got["loss_curve"] == expected["loss_curve"]
    weights = load_file(reference / "model.safetensors")
    for name, value in load_file(killed / "model.safetensors").items():
        torch.testing.assert_close(value, weights[name], atol=0, rtol=0)


def test_a_continued_start_with_other_settings_or_a_finished_folder_is_one_line(tiny_data, tmp_path):
    cfg = pretrain.compose_config(overrides(tiny_data, HOLD))
    out = pretrain.pretrain(cfg, args(tmp_path / "pre"))
    with pytest.raises(pretrain.DataError, match=f"^{out}: holds a finished pretraining"):
        pretrain.pretrain(cfg, args(out))
    (tmp_path / "half").mkdir()
    snapshot.save(tmp_path / "half", model_state={}, optimizer=torch.optim.SGD([torch.zeros(1)], lr=1),
                  scheduler=torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1)], lr=1), lambda s: 1),
                  selections={}, state={"step": 2, "curve": [], "settings": {"lr": 0.5}})
    with pytest.raises(pretrain.DataError, match=r"a pretraining with other settings was started there \(.*lr"):
        pretrain.pretrain(cfg, args(tmp_path / "half"))
