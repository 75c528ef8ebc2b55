"""Which folders are runs, sweeps and ensembles: the folders ``make notebook`` and ``make ensemble`` are given.

A leaf module, so that the ensemble (which refuses to write over a run folder) and the report (which shows
ensembles) both read folders the same way without importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path.cwd()  # relative run and data paths are read from where the command runs (the repository's root)


def is_ensemble(folder) -> bool:
    """A folder written by ``kfold_nlp.analysis.ensemble``: weights.json beside a metrics.json that lists the members.

    A stray weights.json in a run folder, or an unreadable metrics.json, does not make one (the folder is then
    read as a run folder, refused with one line if it is none)."""
    folder = Path(folder)
    if not (folder / "weights.json").is_file():
        return False
    try:
        members = json.loads((folder / "metrics.json").read_text()).get("members")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(members, dict)


def ensemble_metrics(folder) -> dict:
    """An ensemble folder's ``metrics.json``; one written before ``improvement`` (it had ``gain``: blend minus
    member, positive when the blend was worse) is read in today's terms (member minus blend, its interval flipped)."""
    m = json.loads((Path(folder) / "metrics.json").read_text())
    for record, key in [(m.get("cv", {}), "vs_best_member"), *((r, "") for r in m.get("members", {}).values())]:
        old = f"gain_{key}" if key else "gain"
        if old in record and f"improvement{'_' + key if key else ''}" not in record:
            record[f"improvement{'_' + key if key else ''}"] = -record.pop(old)
            record["improvement_lo"], record["improvement_hi"] = -record.pop("gain_hi"), -record.pop("gain_lo")
            record["improvement_excludes_zero"] = record.pop("gain_excludes_zero")
    return m


def _resolve(p, root) -> Path:
    p = Path(p)
    return p if p.is_absolute() else Path(root) / p


def _folders(paths, root) -> list[Path]:
    """Folders given as a list or as one string ("a b", "a,b"), relative ones below ``root``."""
    if isinstance(paths, str):
        paths = paths.replace(",", " ").split()
    return [_resolve(p, root) for p in paths]


def ensemble_member_paths(folder, root=ROOT) -> list[Path]:
    """The run folders an ensemble blended (its recorded absolute paths, else their folders below ``root``)."""
    members = json.loads((Path(folder) / "metrics.json").read_text())["members"]
    return [Path(m["path"]) if Path(m["path"]).exists() else _resolve(m.get("folder", name), root)
            for name, m in members.items()]


def find_runs(paths, root=ROOT) -> list[Path]:
    """Run folders (with metrics.json) given as run folders, folders of runs (a sweep) or ensemble folders (their
    members), in job order, each once."""
    runs = []
    for p in _folders(paths, root):
        if is_ensemble(p):
            runs += ensemble_member_paths(p, root)
            continue
        if (p / "metrics.json").exists():
            runs.append(p)
            continue
        found = [m.parent for m in p.glob("**/metrics.json")]
        if not found:
            raise FileNotFoundError(f"{p}: no run folder (metrics.json) in it")
        found = sorted(found, key=lambda r: (len(r.parts), int(r.name) if r.name.isdigit() else 0, str(r)))
        runs += [m for r in found for m in (ensemble_member_paths(r, root) if is_ensemble(r) else [r])]
    return list(dict.fromkeys(runs))


def find_ensembles(paths, root=ROOT) -> list[Path]:
    """The ensemble folders among ``paths`` and below them."""
    found = []
    for p in _folders(paths, root):
        found += [p] if is_ensemble(p) else sorted(w.parent for w in p.glob("**/weights.json")
                                                   if is_ensemble(w.parent))
    return list(dict.fromkeys(found))
