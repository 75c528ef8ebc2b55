"""Predict a CSV with an exported run, internet off: ``python infer.py test.csv [--out submission.csv]``.

This file is copied into every bundle (``make export``) and needs torch, transformers, safetensors, numpy and
pandas only (a classical member's bundle: numpy, pandas, scikit-learn and joblib): no Hydra, OmegaConf, W&B or
kfold_nlp, so it runs on a competition's own image. Before predicting it
checks every file against ``manifest.json`` (a missing or changed file is refused with one line) and names the
libraries whose versions differ from those the bundle was built with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the bundle: never ask a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
LIBRARIES = ("torch", "transformers", "safetensors", "numpy", "pandas")


class Refused(Exception):
    """One line on stderr, exit 2."""


class Settings(dict):
    """The ``model`` settings as ``build_model`` reads them (attributes and ``.get``), without OmegaConf."""

    __getattr__ = dict.__getitem__


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(bundle: Path) -> dict:
    """The manifest, once every file it lists is there with its checksum."""
    path = bundle / "manifest.json"
    if not path.is_file():
        raise Refused(f"{path}: missing; this is not a whole bundle (export the run again)")
    manifest = json.loads(path.read_text())
    for name, digest in manifest["files"].items():
        file = bundle / name
        if not file.is_file():
            raise Refused(f"{file}: missing; copy the whole bundle (or export the run again)")
        if sha256(file) != digest:
            raise Refused(f"{file}: changed since the export (sha256 differs); export the run again")
    return manifest


def version_notes(manifest: dict) -> list[str]:
    """Which libraries differ from the versions the bundle was built and checked with."""
    from importlib.metadata import PackageNotFoundError, version

    notes = []
    for name, built in manifest["versions"].items():
        try:
            here = sys.version.split()[0] if name == "python" else version(name)
        except PackageNotFoundError:
            here = "missing"
        if here != built:
            notes.append(f"{name} {here} here, {built} at export")
    return notes


def predict(bundle: Path, texts: list[str], settings: dict, batch_size: int) -> list:
    """Each fold model's predictions of ``texts`` (one model in memory at a time), in the texts' order."""
    import numpy as np

    if settings.get("kind") == "sklearn":  # a classical member's pipelines (scikit-learn and joblib needed)
        import joblib

        return [joblib.load(bundle / name).predict(np.asarray(texts, dtype=object)) for name in settings["models"]]
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    sys.path.insert(0, str(bundle))
    import kfold_regressor  # the project's model definition, copied into the bundle

    tokenizer = AutoTokenizer.from_pretrained(bundle / "tokenizer")
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=settings["max_length"])["input_ids"]]
    order = np.argsort(lengths, kind="stable")  # batches of similar length, as the project's evaluation has them
    model_cfg = Settings(settings["model"], backbone=str(bundle / "backbone"), pretrained=False)
    preds = []
    for name in settings["models"]:
        model = kfold_regressor.build_model(model_cfg, pretrained=False, n_outputs=settings["n_outputs"])
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in load_file(str(bundle / name)).items()})
        model.eval()
        out = np.empty(len(texts))
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                batch = tokenizer([texts[i] for i in rows], truncation=True, max_length=settings["max_length"],
                                  padding=True, return_tensors="pt")
                pred = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             **({"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}))
                out[rows] = (pred[..., 0] if settings["n_outputs"] > 1 else pred).float().numpy()
        preds.append(out)
        del model
    return preds


def bagged_prediction(bundle: Path, texts: list[str], batch_size: int | None, settings: dict | None = None):
    """A run bundle's bag of its models' predictions (and, when ``settings`` is given, the predictions too)."""
    import numpy as np

    own = settings or json.loads((bundle / "settings.json").read_text())
    preds = np.stack(predict(bundle, texts, own, batch_size or own.get("batch_size", 64)))
    bagged = preds.mean(0) if own["bagging"] == "mean" else np.median(preds, 0)
    return (bagged, preds) if settings is not None else bagged


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="a CSV with the run's id and text columns")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"))
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        import pandas as pd

        manifest = check_files(HERE)
        for note in version_notes(manifest):
            print(f"note: {note}", file=sys.stderr)
        settings = json.loads((HERE / "settings.json").read_text())
        if not args.input.is_file():
            raise Refused(f"{args.input}: not found")
        table = pd.read_csv(args.input, dtype={settings["id_col"]: str}, keep_default_na=False)
        missing = [c for c in (settings["id_col"], settings["text_col"]) if c not in table.columns]
        if missing:
            raise Refused(f"{args.input}: no {missing[0]!r} column (the run read ids from {settings['id_col']!r} and "
                          f"texts from {settings['text_col']!r})")
        texts = table[settings["text_col"]].astype(str).tolist()
        if settings.get("kind") == "ensemble":  # each member's own bag, then the blend's weights
            parts = [(m["weight"], bagged_prediction(HERE / m["folder"], texts, args.batch_size))
                     for m in settings["members"]]
            bagged, preds = sum(w * p for w, p in parts), parts
        else:
            bagged, preds = bagged_prediction(HERE, texts, args.batch_size, settings)
        pd.DataFrame({settings["id_col"]: table[settings["id_col"]], settings["target_col"]: bagged}).to_csv(
            args.out, index=False)
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"Wrote {args.out}: {len(table)} rows, the {settings['bagging']} of {len(preds)} "
          f"{'members' if settings.get('kind') == 'ensemble' else 'fold models'}")


if __name__ == "__main__":
    main()
