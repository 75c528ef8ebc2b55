"""Step-level snapshots of a fold's training, so a killed or preempted job continues mid-epoch where it stopped.

``fold_<k>/snapshot/`` holds everything the next step depends on: the model, optimizer and scheduler state, the
sampler's epoch, its generator and the position in the epoch, the RNG states (python, numpy, torch CPU and CUDA),
the early-stopping counters, each selection policy's weights (the best state, an average) and validation
predictions, the global step. Tensors go to
safetensors, optimizer and scheduler state dicts through ``torch.save`` and back with ``weights_only=True``, the rest
to JSON: loading never unpickles an arbitrary object.

A snapshot is written into a temporary sibling folder and then renamed over the previous one (the previous one is
first renamed to ``snapshot.old``), so a kill at any moment leaves one complete snapshot on disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..rundir import FoldDir

NAME = "snapshot"


log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """What ``load`` returns: the state dicts and the loop's counters (``state``)."""

    model: dict
    optimizer: dict
    scheduler: dict
    selections: dict  # policy name -> (its tensors or None, its validation prediction or None)
    state: dict
    rng: dict


def rng_state(sampler_state: torch.Tensor | None = None) -> tuple[dict, dict]:
    """(tensors, JSON) of every random state a training step draws from; ``sampler_state``: the sampler
    generator's state at the start of the epoch (it fixes the epoch's order)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    if sampler_state is not None:
        tensors["sampler"] = sampler_state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return tensors, {"python": [version, list(state), gauss],
                     "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


def set_rng_state(tensors: dict, plain: dict) -> None:
    """Back to the saved streams (the sampler's is set by the trainer, at the start of the epoch it resumes)."""
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _torch_save(obj, named: Path, tmp: Path) -> None:
    """``torch.save``, whose zip writer reports a full disk without an errno (``unexpected pos``): as the
    ``OSError`` it is, naming the file, so that the run ends with the one line of a full disk."""
    try:
        torch.save(obj, tmp)
    except RuntimeError as err:
        if shutil.disk_usage(tmp.parent).free > 64 * 2**20 and "unexpected pos" not in str(err):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(named)) from err


def save(fold_dir: Path, *, model_state: dict, optimizer, scheduler, selections: dict, state: dict,
         sampler_state: torch.Tensor | None = None) -> Path:
    """Write ``fold_dir/snapshot`` atomically; ``state`` is the loop's JSON-able counters, ``selections`` each
    policy's (tensors or None, validation prediction or None)."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=fold_dir, prefix=f".{NAME}.", suffix=".tmp"))
    try:
        save_file(_contiguous(model_state), str(tmp / FoldDir.MODEL))
        for name, (tensors, pred) in selections.items():
            if tensors is not None:
                save_file(_contiguous(tensors), str(tmp / f"select_{name}.safetensors"))
            if pred is not None:
                np.save(tmp / f"select_{name}_pred.npy", np.asarray(pred, dtype=np.float64))
        _torch_save(optimizer.state_dict(), fold_dir / NAME / "optimizer.pt", tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), fold_dir / NAME / "scheduler.pt", tmp / "scheduler.pt")
        tensors, plain = rng_state(sampler_state)
        save_file(tensors, str(tmp / "rng.safetensors"))
        (tmp / "rng.json").write_text(json.dumps(plain))
        (tmp / "state.json").write_text(json.dumps(state))  # last: its presence marks the snapshot complete
        dst, old = fold_dir / NAME, fold_dir / f"{NAME}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return fold_dir / NAME


def _read(path: Path) -> Snapshot:
    state = json.loads((path / "state.json").read_text())

    def part(tensors: Path, pred: Path):
        return (load_file(str(tensors)) if tensors.exists() else None), (np.load(pred) if pred.exists() else None)

    names = {f.name.removeprefix("select_").removesuffix(".safetensors").removesuffix("_pred.npy")
             for f in path.glob("select_*")}
    selections = {name: part(path / f"select_{name}.safetensors", path / f"select_{name}_pred.npy") for name in names}
    if (path / "best.safetensors").exists() or (path / "best_pred.npy").exists():  # from before selection policies
        selections["best"] = part(path / "best.safetensors", path / "best_pred.npy")
    return Snapshot(
        model=load_file(str(path / FoldDir.MODEL)),
        optimizer=torch.load(path / "optimizer.pt", weights_only=True),
        scheduler=torch.load(path / "scheduler.pt", weights_only=True),
        selections=selections,
        state=state,
        rng={"tensors": load_file(str(path / "rng.safetensors")),
             "plain": json.loads((path / "rng.json").read_text())},
    )


def load(fold_dir: Path) -> Snapshot | None:
    """The fold's latest readable snapshot, or None: the fold starts from its beginning.

    A snapshot that cannot be read (a truncated file, a disk error, a foreign format) would make the fold
    unresumable forever: it is set aside as ``snapshot.damaged`` (one, replaced by the next; removed with the
    fold's snapshots when the fold finishes), a warning names the file that failed, and the older complete
    snapshot, if any, is tried next.
    """
    damaged = None
    for name in (NAME, f"{NAME}.old"):
        path = fold_dir / name
        if not (path / "state.json").is_file():
            continue
        try:
            snap = _read(path)
        except Exception as err:  # noqa: BLE001  (safetensors, torch.load, numpy and json each raise their own)
            damaged = f"{path} is unreadable ({type(err).__name__}: {' '.join(str(err).split())[:160]})"
            shutil.rmtree(fold_dir / f"{NAME}.damaged", ignore_errors=True)
            os.replace(path, fold_dir / f"{NAME}.damaged")
            damaged += f"; set aside as {fold_dir / f'{NAME}.damaged'}"
            continue
        if damaged:
            log.warning("warning: %s; continuing from the older %s", damaged, path)
        return snap
    if damaged:
        log.warning("warning: %s; the fold restarts from its beginning", damaged)
    return None


def remove(fold_dir: Path) -> None:
    """A finished fold needs no snapshot (unless the user keeps it)."""
    for name in (NAME, f"{NAME}.old", f"{NAME}.damaged"):
        shutil.rmtree(fold_dir / name, ignore_errors=True)
    for tmp in fold_dir.glob(f".{NAME}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
