"""Predict a CSV with an exported run, internet off: ``python infer.py test.csv [--out submission.csv]``.

This file is copied into every bundle (``make export``) and needs torch, transformers, safetensors, numpy and
pandas only (a classical member's bundle: numpy, pandas, scikit-learn and joblib): no Hydra, OmegaConf, W&B or
kfold_nlp, so it runs on a competition's own image. Before predicting it checks every file against
``manifest.json`` (a missing, changed or unreadable file is refused with one line, exit 2), that every library the
bundle needs imports (those that do not are named in one line, exit 75), and names the libraries whose versions
differ from those the bundle was built with. The input CSV is checked as ``make predict`` checks it (``inputs``,
carried as ``kfold_inputs.py``); the output is written whole or not at all, and a fault of the machine (no space,
a file in the way of ``--out``'s folder) is one line naming the path, exit 75.

It is also the project's one predictor of fold models: how a fold model is loaded, how the models are run one at a
time and how their predictions are bagged (``load_weights``, ``each_model``, ``pipeline_predictions``, ``bag``) are
defined here and imported by ``make predict`` (``kfold_nlp.predict``) and the run's own collecting, so that the
bundle predicts as the project does. Importing it changes nothing (no environment variable, no import beyond the
standard library and ``inputs``).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__:  # imported by the project
    from . import inputs
else:  # the bundle's script: the input check is its copy beside this file
    sys.path.insert(0, str(HERE))
    import kfold_inputs as inputs

LIBRARIES = ("torch", "transformers", "safetensors", "numpy", "pandas")
CLASSICAL = ("numpy", "pandas", "scikit-learn", "joblib")  # what a classical member's bundle needs instead
IMPORT_NAMES = {"scikit-learn": "sklearn"}  # a library's module, where it is not named as its package
BAGGING = ("mean", "median")  # cv.bagging: how the fold models' predictions become one
OUT = "submission.csv"  # what the script writes unless told otherwise: a competition's submission file
ENVIRONMENT = 75  # the project's exit status for a fault of the machine (kfold_nlp.errors.Exit.ENVIRONMENT)
INTERRUPTED = 130  # Ctrl-C (kfold_nlp.errors.Exit.INTERRUPTED)
FAULTS = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
          errno.EACCES: "permission denied", errno.EEXIST: "a file is in the way (a folder is needed there)",
          errno.ENOTDIR: "a file is in the way (a folder is needed there)", errno.EDQUOT: "disk quota exceeded"}

Refused = inputs.BadInput  # a bad input or bundle file: one line on stderr, exit 2


class Missing(Exception):
    """Libraries the bundle needs that this Python cannot import: one line naming them, exit 75."""


class Settings(dict):
    """The ``model`` settings as ``build_model`` reads them (attributes and ``.get``), without OmegaConf."""

    __getattr__ = dict.__getitem__


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path, what: str) -> dict:
    """A JSON object the export wrote, refused in one line when it does not parse or is not an object."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
        raise Refused(f"{path}: unreadable ({' '.join(str(err).split())}); {what}") from None
    if not isinstance(data, dict):
        raise Refused(f"{path}: not a JSON object; {what}")
    return data


def check_files(bundle: Path) -> dict:
    """The manifest, once every file it lists is there with its checksum."""
    path = bundle / "manifest.json"
    if not path.is_file():
        raise Refused(f"{path}: missing; this is not a whole bundle (export the run again)")
    manifest = read_json(path, "export the run again")
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("versions"), dict):
        raise Refused(f"{path}: no 'files' or 'versions' mapping; export the run again")
    for name, digest in manifest["files"].items():
        file = bundle / name
        if not file.is_file():
            raise Refused(f"{file}: missing; copy the whole bundle (or export the run again)")
        if sha256(file) != digest:
            raise Refused(f"{file}: changed since the export (sha256 differs); export the run again")
    return manifest


def needed(bundle: Path, manifest: dict, settings: dict) -> list[str]:
    """The libraries the bundle's models need: its own manifest's, or for an ensemble each member's."""
    if settings.get("kind") != "ensemble":
        return [name for name in manifest["versions"] if name != "python"]
    names = {}
    for member in settings["members"]:
        own = read_json(bundle / member["folder"] / "manifest.json", "export the ensemble again")
        names |= dict.fromkeys(name for name in own.get("versions", {}) if name != "python")
    return list(names)


def missing_libraries(names: list[str]) -> list[str]:
    """Which of ``names`` (package names) this Python cannot import; a library whose own dependency is missing is
    named with it (``scipy (for scikit-learn)``). Those that are not installed are found without importing the
    others (transformers warns on stderr when torch is absent)."""
    import importlib
    import importlib.util

    absent = [name for name in names if importlib.util.find_spec(IMPORT_NAMES.get(name, name)) is None]
    if absent:
        return absent
    missing = []
    for name in names:
        module = IMPORT_NAMES.get(name, name)
        try:
            importlib.import_module(module)
        except ImportError as err:
            missing.append(name if err.name in (None, module) else f"{err.name} (for {name})")
    return missing


def missing_line(names: list[str]) -> str:
    return (f"this bundle needs {', '.join(names)}, which {sys.executable} cannot import; install "
            f"{'it' if len(names) == 1 else 'them'} (the versions in manifest.json), or run the script in the "
            f"environment that has them")


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


def bag(preds, how: str):
    """Combine the fold models' predictions (folds x rows) into one row of predictions (``cv.bagging``)."""
    import numpy as np

    if how not in BAGGING:
        raise ValueError(f"cv.bagging must be one of {', '.join(BAGGING)}, got {how!r}")
    return np.mean(preds, 0) if how == "mean" else np.median(preds, 0)


def load_weights(model, path: Path):
    """A fold model's ``safetensors`` weights into ``model`` (built without weights), every tensor name checked;
    half-precision weights (an ``--fp16`` bundle) are widened to the model's own precision."""
    from safetensors.torch import load_model

    load_model(model, str(path))
    return model


def each_model(paths: list[Path], build, predict) -> list:
    """Each fold model's predictions, one model in memory at a time: ``build()`` makes the architecture, the model
    file's weights go in (``load_weights``), ``predict(model)`` gives its predictions; then the model is freed,
    before the next is built."""
    import gc

    import torch

    preds = []
    for path in paths:
        model = load_weights(build(), path)
        preds.append(predict(model))
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return preds


def pipeline_predictions(paths: list[Path], texts) -> list:
    """Each classical fold model's predictions (a fitted scikit-learn pipeline saved with joblib)."""
    import joblib
    import numpy as np

    return [joblib.load(path).predict(np.asarray(list(texts), dtype=object)) for path in paths]


def predict(bundle: Path, texts: list[str], settings: dict, batch_size: int) -> list:
    """Each fold model's predictions of ``texts`` (one model in memory at a time), in the texts' order."""
    if settings.get("kind") == "sklearn":  # a classical member's pipelines (scikit-learn and joblib needed)
        if str(bundle) not in sys.path:  # the pipelines' own code, copied into the bundle (kfold_features.py)
            sys.path.insert(0, str(bundle))
        return pipeline_predictions([bundle / name for name in settings["models"]], texts)
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    sys.path.insert(0, str(bundle))
    import kfold_regressor  # the project's model definition, copied into the bundle

    tokenizer = AutoTokenizer.from_pretrained(bundle / "tokenizer")
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=settings["max_length"])["input_ids"]]
    order = np.argsort(lengths, kind="stable")  # batches of similar length, as the project's evaluation has them
    model_cfg = Settings(settings["model"], backbone=str(bundle / "backbone"), pretrained=False)

    def predict_all(model):
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
        return out

    return each_model([bundle / name for name in settings["models"]],
                      lambda: kfold_regressor.build_model(model_cfg, pretrained=False, n_outputs=settings["n_outputs"]),
                      predict_all)


def bagged_prediction(bundle: Path, texts: list[str], batch_size: int | None, settings: dict | None = None):
    """A run bundle's bag of its models' predictions (and, when ``settings`` is given, the predictions too)."""
    import numpy as np

    own = settings or json.loads((bundle / "settings.json").read_text())
    preds = np.stack(predict(bundle, texts, own, batch_size or own.get("batch_size", 64)))
    bagged = bag(preds, own["bagging"])
    return (bagged, preds) if settings is not None else bagged


def write_csv(table, out: Path) -> None:
    """``out`` whole or not at all: written to a temporary beside it, then renamed over it; its folder is made."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the mode a plain open() would give
        table.to_csv(tmp, index=False)
        os.replace(tmp, out)
    except OSError as err:  # named by the file being written, never its temporary
        raise OSError(err.errno, err.strerror, str(out)) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def fault_line(err: OSError, path) -> str:
    """A fault of the machine as one line naming the path: what happened and that the same command then runs."""
    what = FAULTS.get(err.errno, (err.strerror or str(err)).lower())
    return f"{err.filename or path}: {what}; fix it and run the script again"


def predict_file(source: Path, out: Path, batch_size: int | None) -> str:
    """Check the bundle, its libraries and the input, predict, write ``out``; returns the summary line."""
    manifest = check_files(HERE)
    settings = read_json(HERE / "settings.json", "export the run again")
    missing = missing_libraries(needed(HERE, manifest, settings))
    if missing:
        raise Missing(missing_line(missing))
    for note in version_notes(manifest):
        print(f"note: {note}", file=sys.stderr)
    inputs.check_out(out, source)
    table, note = inputs.read_input(source, settings["id_col"], settings["text_col"])
    if note:
        print(f"note: {note}", file=sys.stderr)
    import pandas as pd

    texts = table["text"].tolist()
    if settings.get("kind") == "ensemble":  # each member's own bag, then the blend's weights
        parts = [(m["weight"], bagged_prediction(HERE / m["folder"], texts, batch_size)) for m in settings["members"]]
        bagged, preds = sum(w * p for w, p in parts), parts
    else:
        bagged, preds = bagged_prediction(HERE, texts, batch_size, settings)
    write_csv(pd.DataFrame({settings["id_col"]: table["id"], settings["target_col"]: bagged}), out)
    what = "member" if settings.get("kind") == "ensemble" else "fold model"
    return f"Wrote {out}: {len(table)} rows, the {settings['bagging']} of {len(preds)} {what}{'s' * (len(preds) != 1)}"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="infer.py", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="a CSV with the run's id and text columns")
    parser.add_argument("--out", type=Path, default=Path(OUT), help=f"the CSV to write (default: {OUT}); its "
                        "folder is made")
    parser.add_argument("--batch-size", type=positive, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the bundle: never ask a model hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        line = predict_file(args.input, args.out, args.batch_size)
    except Refused as err:
        sys.exit(_error(err, inputs.EXIT))
    except Missing as err:
        sys.exit(_error(err, ENVIRONMENT))
    except ModuleNotFoundError as err:  # imported while predicting: a library's own dependency, or old code
        if (err.name or "").split(".")[0] == "kfold_nlp":
            sys.exit(_error(f"{HERE}: its pipelines need the kfold_nlp package (exported before bundles carried "
                            f"their own code); export the run again", inputs.EXIT))
        sys.exit(_error(missing_line([err.name or str(err)]), ENVIRONMENT))
    except OSError as err:
        sys.exit(_error(fault_line(err, args.out), ENVIRONMENT))
    except KeyboardInterrupt:  # the output is written whole or not at all: nothing to clean up
        print(f"interrupted before {args.out} was written", file=sys.stderr)
        sys.exit(INTERRUPTED)
    print(line)


def _error(err, code: int) -> int:
    print(f"error: {err}", file=sys.stderr)
    return code


if __name__ == "__main__":
    main()
