"""``make export RUN=<run> [OUT=<folder>]``: a run as a folder an internet-off notebook predicts from.

The bundle holds each fold model (safetensors; ``--fp16`` halves them), the tokenizer and the backbone's config (no
model hub), ``settings.json`` (what the script needs of the run's config: pooling, head width, max length, column
names, bagging), ``infer.py`` (``bundle/infer.py``: torch, transformers, safetensors, numpy and pandas only),
``kfold_regressor.py`` (the project's model definition, copied) and ``manifest.json``: the library versions it was
built with and the sha256 of every file, which the script checks before it predicts. It also holds
``kfold_inputs.py`` (the input check ``make predict`` uses, copied); a classical member's bundle holds its fold
pipelines instead of safetensors, re-pointed at ``kfold_features.py`` (the feature code they call, copied) so that
they unpickle without this package. Only a run whose expected folds are all finished is exported (as ``make
predict`` bags them); an ensemble's members of weight 0 are left out. It is written into a temporary sibling
folder and renamed into place, so a bundle is whole or absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from omegaconf import OmegaConf

from ..analysis.runs import WEIGHTS, ensemble_metrics, is_ensemble
from ..config.paths import offline_for_local
from ..errors import DataError, OneLineError, refuse
from ..files import write_json
from ..model.classical import is_classical
from ..predict import MODELS, fold_models
from ..rundir import RunDir, read_run_config
from . import features, infer, inputs

LIBRARIES = infer.LIBRARIES
BUNDLE = "bundle"  # the default bundle folder, inside the run or ensemble folder exported
REGRESSOR = Path(__file__).resolve().parents[1] / "model" / "regressor.py"  # torch and transformers only
FEATURES = "kfold_features"  # the bundle's copy of bundle/features.py: what classical pipelines call
INPUTS = "kfold_inputs"  # the bundle's copy of bundle/inputs.py: the script's input check


def _tmp_beside(out: Path) -> Path:
    """A temporary folder beside ``out``, readable as any folder made here (``mkdtemp`` makes it 0700)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def default_out(run_dir: Path) -> Path:
    return Path(run_dir) / BUNDLE


def check_out(out: Path) -> None:
    """``OUT`` may replace an earlier bundle (it holds ``manifest.json`` and ``infer.py``), never anything else."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if (out / "manifest.json").is_file() and (out / "infer.py").is_file():
        return
    raise DataError(f"{out}: exists and is not a bundle; give a new folder as OUT")


def export_run(run_dir: Path, out: Path | None = None, fp16: bool = False, models: str = "folds") -> dict:
    """Write the bundle of ``run_dir`` to ``out`` (default ``<run>/bundle``) with its ``models`` (``folds``,
    ``refit`` or ``all``, as ``make predict --models``); returns its summary."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    paths = fold_models(run_dir, cfg, models)  # every model asked for, or refused naming the missing one
    out = Path(out) if out is not None else default_out(run_dir)
    check_out(out)
    if is_classical(cfg.model):
        return _export_classical(run_dir, cfg, paths, out)
    model = OmegaConf.to_container(cfg.model, resolve=True)  # the backbone's path on this machine
    offline_for_local(model["backbone"], model.get("tokenizer"))
    from safetensors.torch import load_file, save_file  # after offline_for_local: transformers reads it once
    from transformers import AutoConfig

    from ..model.regressor import load_tokenizer
    from ..model.tasks import n_outputs

    tmp = _tmp_beside(out)
    try:
        load_tokenizer(OmegaConf.create(model)).save_pretrained(tmp / "tokenizer")
        AutoConfig.from_pretrained(model["backbone"], **dict(model.get("config_overrides") or {})).save_pretrained(
            tmp / "backbone")
        names = []
        for path in paths:
            tensors = load_file(str(path))
            if fp16:
                tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
            names.append(f"{path.parent.name}.safetensors")
            save_file(tensors, str(tmp / names[-1]))
        settings = {"run": str(run_dir.resolve()), "models": names, "fp16": fp16, "n_outputs": n_outputs(cfg),
                    "model": {"pooling": model["pooling"], "head_dropout": model["head_dropout"]},
                    "max_length": model["max_length"], "batch_size": cfg.trainer.eval_batch_size,
                    "id_col": cfg.data.id_col, "text_col": cfg.data.text_col, "target_col": cfg.data.target_col,
                    "bagging": cfg.cv.bagging}
        shutil.copyfile(REGRESSOR, tmp / "kfold_regressor.py")
        _write(tmp, out, settings, LIBRARIES)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"out": out, "models": len(names), "size_mb": size / 2**20, "fp16": fp16}


def _write(tmp: Path, out: Path, settings: dict, libraries: tuple) -> None:
    """settings.json, the script, the manifest (versions, checksums), then the bundle into place."""
    write_json(settings, tmp / "settings.json")
    shutil.copyfile(infer.__file__, tmp / "infer.py")
    shutil.copyfile(inputs.__file__, tmp / f"{INPUTS}.py")
    files = {p.relative_to(tmp).as_posix(): infer.sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    versions = {"python": sys.version.split()[0]} | {name: version(name) for name in libraries}
    write_json({"versions": versions, "files": files}, tmp / "manifest.json")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _export_classical(run_dir: Path, cfg, paths: list[Path], out: Path) -> dict:
    """A scikit-learn run's bundle: its fold pipelines (joblib); the script then needs scikit-learn too."""
    tmp = _tmp_beside(out)
    try:
        names = [f"{path.parent.name}.joblib" for path in paths]
        _carry_pipelines(paths, [tmp / name for name in names])
        settings = {"run": str(run_dir.resolve()), "kind": "sklearn", "models": names, "id_col": cfg.data.id_col,
                    "text_col": cfg.data.text_col, "target_col": cfg.data.target_col, "bagging": cfg.cv.bagging}
        _write(tmp, out, settings, infer.CLASSICAL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"out": out, "models": len(names), "size_mb": size / 2**20, "fp16": False}


def _carry_pipelines(paths: list[Path], dests: list[Path]) -> None:
    """Each fold pipeline into the bundle. One that calls this package's feature code (``model=readability``) would
    need kfold_nlp to unpickle: it is re-pointed at the bundle's copy of that code, ``kfold_features.py`` (loaded
    here under that name, so that pickle records it), and saved again; the others are copied as they are."""
    import joblib

    copy_path = dests[0].parent / f"{FEATURES}.py"
    shutil.copyfile(features.__file__, copy_path)
    spec = importlib.util.spec_from_file_location(FEATURES, copy_path)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    before = sys.modules.get(FEATURES)
    sys.modules[FEATURES] = copy
    carried = False
    try:
        for path, dest in zip(paths, dests):
            pipeline = joblib.load(path)
            if _repoint(pipeline, copy, path):
                joblib.dump(pipeline, dest)
                carried = True
            else:
                shutil.copyfile(path, dest)
    finally:
        if before is None:
            sys.modules.pop(FEATURES, None)
        else:
            sys.modules[FEATURES] = before
    if not carried:  # a pipeline of scikit-learn objects only: nothing of ours to carry
        copy_path.unlink()


def _repoint(pipeline, copy, path: Path) -> bool:
    """Point every function of this package that ``pipeline``'s steps hold (a ``FunctionTransformer``'s ``func``)
    at ``copy``'s function of the same name; True if any was. One the copy lacks is refused."""
    changed = False
    for step in [pipeline, *pipeline.get_params(deep=True).values()]:
        for attr in ("func", "inverse_func"):
            func = getattr(step, attr, None)
            module = getattr(func, "__module__", None) or ""
            if not callable(func) or module.split(".")[0] != "kfold_nlp":
                continue
            if getattr(copy, func.__name__, None) is None:
                raise DataError(f"{path}: its pipeline calls {module}.{func.__name__}, which a bundle cannot carry "
                                f"(only {features.__name__}'s functions); predict it with make predict")
            setattr(step, attr, getattr(copy, func.__name__))
            changed = True
    return changed


def export_ensemble(ensemble_dir: Path, out: Path | None = None, fp16: bool = False) -> dict:
    """One bundle of an ensemble folder (``make ensemble``): each member's bundle under ``members/<i>/`` and the
    blend's weights (fitted on the OOF rows) in ``settings.json``; the script predicts each member and blends."""
    ensemble_dir = Path(ensemble_dir)
    if not is_ensemble(ensemble_dir):
        raise DataError(f"{ensemble_dir}: not an ensemble folder (no {WEIGHTS} beside its {RunDir.METRICS})")
    members = ensemble_metrics(ensemble_dir)["members"]
    out = Path(out) if out is not None else ensemble_dir / BUNDLE
    check_out(out)
    tmp = _tmp_beside(out)
    kept = {name: member for name, member in members.items() if member["weight"] != 0}  # no dead weight
    try:
        entries, n_models, first, libraries = [], 0, None, {}
        for i, (name, member) in enumerate(kept.items()):
            summary = export_run(Path(member["path"]), tmp / "members" / str(i), fp16)
            first = first or json.loads((tmp / "members" / str(i) / "settings.json").read_text())
            own = json.loads((tmp / "members" / str(i) / "manifest.json").read_text())["versions"]
            libraries |= dict.fromkeys(lib for lib in own if lib != "python")
            entries.append({"name": name, "folder": f"members/{i}", "weight": member["weight"]})
            n_models += summary["models"]
        settings = {"kind": "ensemble", "ensemble": str(ensemble_dir.resolve()), "members": entries,
                    "left_out": sorted(set(members) - set(kept)),  # weight 0: they change no prediction
                    "id_col": first["id_col"], "text_col": first["text_col"], "target_col": first["target_col"],
                    "bagging": "weighted blend of the members' bags"}
        _write(tmp, out, settings, tuple(libraries))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"out": out, "models": n_models, "size_mb": size / 2**20, "fp16": fp16,
            "left_out": settings["left_out"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="kfold-nlp export", description=__doc__.splitlines()[0].replace("`", ""))
    parser.add_argument("run_dir", type=Path, help="a finished run folder, or an ensemble folder (make ensemble)")
    parser.add_argument("--out", type=Path, help="default: <run folder>/bundle")
    parser.add_argument("--fp16", action="store_true", help="fold models in half precision (half the size)")
    parser.add_argument("--models", choices=MODELS, default="folds", help="the fold models, the refit, or all")
    args = parser.parse_args(argv)
    try:
        if is_ensemble(args.run_dir):
            summary = export_ensemble(args.run_dir, args.out, args.fp16)
        else:
            summary = export_run(args.run_dir, args.out, args.fp16, args.models)
    except (OneLineError, OSError) as err:
        refuse(err, f"export again (make export RUN={args.run_dir})", args.run_dir)
    left = f" (left out, weight 0: {', '.join(summary['left_out'])})" if summary.get("left_out") else ""
    print(f"Bundle: {summary['out']} | {summary['models']} models{' in fp16' if summary['fp16'] else ''}{left}, "
          f"{summary['size_mb']:.1f} MiB | predict offline with: python {summary['out']}/infer.py <test.csv> "
          f"--out {infer.OUT}")


if __name__ == "__main__":
    main()
