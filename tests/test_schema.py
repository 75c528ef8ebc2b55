"""The config schema: every key of every group has a rule, and a bad value is one line naming key, value and range."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import cli, tiny_overrides
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.config.schema import OPTIMIZER, RULES, ConfigError, is_missing, regularizer_class, validate
from kfold_nlp.cv.app import check_config
from kfold_nlp.model.tasks import task_class
from kfold_nlp.track.base import tracker_class

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir()
                if p.is_dir() and p.name not in ("hydra", "hpo", "select") and not p.name.startswith("."))


def config(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", ["model=tiny", "name=test", *overrides])


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def leaves(node, prefix: str) -> list[str]:
    """Dotted keys of a config node; free-form mappings count as one key."""
    out = []
    for key, value in node.items():
        full = f"{prefix}.{key}"
        if OmegaConf.is_dict(value) and full in RULES and RULES[full].kind is dict:
            out += [full] + [f"{full}.{k}" for k in value if f"{full}.{k}" in RULES]
        elif OmegaConf.is_dict(value):
            out += leaves(value, full)
        else:
            out.append(full)
    return out


HUB_ONLY = {"model": {"roberta_base", "deberta_v3_base"}}  # their configs come from the hub: no network here


def keys_without_rule(cfg, group: str) -> list[str]:
    node = cfg[group]
    if group == "optimizer":
        return sorted(set(node) - {"_target_", "_partial_"} - set(OPTIMIZER))
    if group == "regularizer":
        return sorted(set(node) - {"_target_"} ^ set(regularizer_class(cfg).params))
    if group == "task":
        return sorted(set(node) - {"_target_"} ^ set(task_class(cfg).params))
    if group == "logger":
        return sorted(set(node) - {"_target_"} ^ set(tracker_class(cfg.logger).params))
    return [k for k in leaves(node, group) if k not in RULES]


@pytest.mark.parametrize("group", GROUPS)
def test_every_choice_of_every_group_validates_and_every_key_has_a_rule(group):
    for choice in choices(group):
        if choice in HUB_ONLY.get(group, ()):
            continue
        cfg = config(f"{group}={choice}")
        if is_missing(cfg, "data.path"):  # data=csv: the user's file is required
            with pytest.raises(ConfigError, match=r"^data.path: required"):
                validate(cfg, check_files=False)
            cfg.data.path = "train.csv"
        validate(cfg, check_files=False)
        for name in ([group] if group in cfg else []):
            assert not keys_without_rule(cfg, name), f"{group}={choice}: {keys_without_rule(cfg, name)}"


BAD = {  # override -> the text the one line must carry
    "trainer.epochs=-1": "trainer.epochs=-1: must be an integer >= 1",
    "trainer.epochs=1.5": "trainer.epochs=1.5: must be an integer >= 1",
    "trainer.batch_size=0": "trainer.batch_size=0",
    "trainer.eval_batch_size=0": "trainer.eval_batch_size=0",
    "trainer.grad_accum=0": "trainer.grad_accum=0",
    "trainer.eval_every=0": "trainer.eval_every=0: must be null or an integer >= 1",
    "trainer.evals_per_epoch=0": "trainer.evals_per_epoch=0: must be an integer >= 1",
    "trainer.patience=-2": "trainer.patience=-2",
    "trainer.save_models=maybe": "trainer.save_models=maybe: must be true or false",
    "trainer.num_workers=-1": "trainer.num_workers=-1",
    "trainer.precision=fp8": "trainer.precision=fp8: must be one of auto, fp32, bf16, fp16",
    "trainer.max_grad_norm=0": "trainer.max_grad_norm=0",
    "trainer.penalty=l3": "trainer.penalty=l3",
    "cv.n_splits=1": "cv.n_splits=1: must be an integer >= 2",
    "cv.folds=[0,0]": "cv.folds=[0, 0]",
    "cv.folds=[5]": "cv.folds=[5]",
    "cv.bins=0": "cv.bins=0",
    "cv.bagging=max": "cv.bagging=max: must be one of mean, median",
    "model.pooling=max": "model.pooling=max: must be one of cls, mean, attention",
    "model.max_length=0": "model.max_length=0",
    "model.max_length=1": "model.max_length=1: must be >= 3, the tokenizer's 2 special tokens and one of the text",
    "model.max_length=2": "model.max_length=2: must be >= 3",
    "model.max_length=100000": "model.max_length=100000: must be <= 512",
    "model.head_dropout=1.0": "model.head_dropout=1.0",
    "optimizer.lr=0": "optimizer.lr=0: must be a number > 0",
    "optimizer.weight_decay=-0.1": "optimizer.weight_decay=-0.1",
    "optimizer.llrd=0": "optimizer.llrd=0",
    "optimizer.head_lr=-1": "optimizer.head_lr=-1",
    "optimizer.betas=[0.9]": "optimizer.betas=[0.9]",
    "scheduler.name=steep": "scheduler.name=steep: must be one of",
    "scheduler.warmup=-1": "scheduler.warmup=-1",
    "logger.mode=loud": "logger.mode=loud: must be one of offline, online, disabled",
    "regularizer=rdrop regularizer.alpha=-1": "regularizer.alpha=-1: must be a number >= 0",
    "regularizer=msd regularizer.k=0": "regularizer.k=0: must be an integer >= 1",
    "regularizer=msd regularizer.p=1": "regularizer.p=1",
    "regularizer=msd regularizer.reduce=sum": "regularizer.reduce=sum",
    "regularizer=mixout regularizer.p=-0.5": "regularizer.p=-0.5",
    "regularizer=mixup regularizer.alpha=1000": "regularizer.alpha=1000: must be 0 or a number >= 0.01 and <= 100",
    "optimizer=sgd optimizer.momentum=1.5": "optimizer.momentum=1.5",
    # an optimizer's keys are its class's arguments, a schedule's kwargs its function's
    "+optimizer.momentum=0.9": "optimizer.momentum: not a key of this optimizer (known: amsgrad, betas, capturable,",
    "+optimizer.maximize=3": "optimizer.maximize=3: must be true or false",
    "optimizer._target_=torch.optim.Nope": "optimizer._target_=torch.optim.Nope: not an optimizer class (",
    "scheduler=cosine +scheduler.kwargs.cycles=2": "scheduler.kwargs.cycles: not a key of this scheduler (known: "
                                                   "last_epoch, num_cycles)",
}


@pytest.mark.parametrize("overrides", BAD)
def test_a_bad_value_is_one_line_naming_key_value_and_range(overrides):
    with pytest.raises(ConfigError) as info:
        check_config(config(*overrides.split()), check_files=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(BAD[overrides]), message


def test_a_new_optimizer_is_a_yaml_only():
    """torch.optim.Adamax is in no table: its keys come from its signature, and build_optimizer makes it."""
    import torch

    from kfold_nlp.model.optim import build_optimizer
    from kfold_nlp.model.regressor import build_model

    cfg = config("optimizer._target_=torch.optim.Adamax", "~optimizer.fused", "+optimizer.maximize=false")
    validate(cfg, check_files=False)
    optimizer = build_optimizer(cfg.optimizer, build_model(cfg.model))
    assert type(optimizer) is torch.optim.Adamax and optimizer.defaults["maximize"] is False


def test_precision_fp16_needs_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="trainer.precision=fp16: needs CUDA"):
        validate(config("trainer.precision=fp16"), check_files=False)


def test_paths_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"data.path=.*: is a folder"):
        validate(config(f"data.path={tmp_path}"))
    with pytest.raises(ConfigError, match=r"resume=.*nosuch: does not exist"):
        check_config(config(f"resume={tmp_path / 'nosuch'}"))
    with pytest.raises(ConfigError, match=r"resume=.*: not a run folder"):
        check_config(config(f"resume={tmp_path}"))


def test_texts_are_truncated_to_max_length_from_its_smallest_valid_value(model_cfg):
    from kfold_nlp.model.regressor import load_tokenizer, tokenize

    tokenizer = load_tokenizer(model_cfg)
    smallest = tokenizer.num_special_tokens_to_add() + 1
    check_config(config(f"model.max_length={smallest}"), check_files=False)
    texts = ["A long text " * 50, "Short.", "Two words"]
    for max_length in (smallest, smallest + 1, 16):
        lengths = [len(ids) for ids in tokenize(tokenizer, texts, max_length)["input_ids"]]
        assert max(lengths) == max_length and min(lengths) >= smallest, (max_length, lengths)


CLI = {  # through the real entry point: exit 2, one line, no run folder left behind
    "trainer.epochs=-1": "trainer.epochs=-1",
    "cv.n_splits=1": "cv.n_splits=1",
    "model.pooling=max": "model.pooling=max",
    "cv.n_splits=100": "cv.n_splits=100: must be <= the 48 rows",
    "model.max_length=1": "model.max_length=1: must be >= 3",
}


@pytest.mark.slow
@pytest.mark.parametrize("override", CLI)
def test_cli_refuses_with_one_line_and_leaves_no_folder(override, tiny_data, tmp_path):
    run_dir = tmp_path / "outputs" / "run"
    proc = cli("cv", *tiny_overrides(tiny_data, run_dir), override, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"error: {CLI[override]}"), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not run_dir.exists()


@pytest.mark.slow
def test_resume_of_a_folder_that_does_not_exist_is_refused(tiny_data, tmp_path):
    typo = tmp_path / "outputs" / "rdrop" / "nosuch"
    overrides = [o for o in tiny_overrides(tiny_data, typo) if not o.startswith("hydra.run.dir")]
    proc = cli("cv", *overrides, f"resume={typo}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: resume={typo}: does not exist"
    assert not typo.exists()  # Hydra created it for the run; nothing is left
