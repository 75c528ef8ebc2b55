"""What a run's holdout says of its selection policies: bagged holdout RMSE, each fold's holdout beside its
validation RMSE, the selection optimism with its interval, and how much of it the checkpoint choice adds.

The optimism of a policy is the mean over folds of (holdout RMSE - validation RMSE) of the weights it chose. The
validation rows picked the checkpoint under ``best``; the holdout rows picked nothing, so a positive optimism is
what the CV claims beyond what unseen rows give. Its interval is a bootstrap over rows: the holdout rows drawn once
per resample for every fold (they are the same rows), each fold's validation rows drawn within the fold.
"""

from __future__ import annotations

import numpy as np

from ..bagging import bag
from . import stats


def _fold_rmse(sq: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """RMSE of one column of squared errors under each resample, ``(n_boot,)``."""
    return np.sqrt(counts @ sq / sq.size)


def _optimism(val: dict[int, tuple[np.ndarray, np.ndarray]], holdout_target: np.ndarray,
              holdout: dict[int, np.ndarray], n_boot: int, seed: int) -> tuple[float, np.ndarray]:
    """The optimism and its bootstrap samples; the same ``seed`` draws the same rows for every policy of a run,
    so two policies' samples are paired."""
    held_counts = stats.resample_counts(np.zeros(len(holdout_target)), n_boot, seed + 1)
    gaps, samples = [], np.zeros(n_boot)
    for k in sorted(val):
        target, pred = val[k]
        sq_val, sq_held = (pred - target) ** 2, (holdout[k] - holdout_target) ** 2
        gaps.append(np.sqrt(sq_held.mean()) - np.sqrt(sq_val.mean()))
        val_counts = stats.resample_counts(np.zeros(len(target)), n_boot, seed + 2 + k)
        samples += _fold_rmse(sq_held, held_counts) - _fold_rmse(sq_val, val_counts)
    return float(np.mean(gaps)), samples / len(val)


def _interval(value: float, samples: np.ndarray) -> dict:
    i = stats.percentile_interval(value, samples)
    return {"mean": i.diff, "lo": i.lo, "hi": i.hi}


def optimism(val: dict[int, tuple[np.ndarray, np.ndarray]], holdout_target: np.ndarray,
             holdout: dict[int, np.ndarray], n_boot: int = stats.N_BOOT, seed: int = stats.SEED) -> dict:
    """``val``: fold -> (its rows' targets, predictions); ``holdout``: fold -> its model's holdout predictions.
    Returns ``mean`` (the optimism), ``lo``, ``hi`` (its 95% bootstrap interval)."""
    return _interval(*_optimism(val, holdout_target, holdout, n_boot, seed))


def summarize(val_preds: dict[int, dict[str, np.ndarray]], val_targets: dict[int, np.ndarray],
              holdout_target: np.ndarray | None, holdout_preds: dict[int, dict[str, np.ndarray]] | None,
              own: str, bagging: str) -> dict:
    """Every scored policy's CV RMSE (pooled over the folds' validation rows) and, with a holdout, its bagged
    holdout RMSE, fold RMSEs and optimism; ``own`` (``trainer.select``) is the one the run keeps.

    The optimism also holds what the holdout and the validation rows differ by whatever the weights (another
    sample of texts, models that each saw part of the data); what the *choice* adds is a policy's optimism minus
    ``last``'s on the same run (``choice_optimism``, paired: ``last`` chooses nothing). ``holdout_diff``: a
    policy's bagged holdout RMSE minus ``own``'s, paired over the holdout rows (negative: better on unseen rows).
    """
    folds = sorted(val_preds)
    names = [own, *[n for n in val_preds[folds[0]] if n not in (own, "pred")]]
    key = {name: "pred" if name == own else name for name in names}
    out, samples, bagged = {"select": own, "policies": {}}, {}, {}
    for name in names:
        sq = np.concatenate([(val_preds[k][key[name]] - val_targets[k]) ** 2 for k in folds])
        entry = {"cv_rmse": float(np.sqrt(sq.mean())),
                 "folds": {str(k): {"val_rmse": stats.rmse(val_targets[k], val_preds[k][key[name]])} for k in folds}}
        if holdout_preds is not None:
            bagged[name] = bag(np.stack([holdout_preds[k][key[name]] for k in folds]), bagging)
            entry["holdout_rmse"] = stats.rmse(holdout_target, bagged[name])
            for k in folds:
                entry["folds"][str(k)]["holdout_rmse"] = stats.rmse(holdout_target, holdout_preds[k][key[name]])
            value, samples[name] = _optimism({k: (val_targets[k], val_preds[k][key[name]]) for k in folds},
                                             holdout_target, {k: holdout_preds[k][key[name]] for k in folds},
                                             stats.N_BOOT, stats.SEED)
            entry["optimism"] = _interval(value, samples[name])
        out["policies"][name] = entry
    if holdout_preds is None:
        return out
    diffs = stats.compare_columns(holdout_target, np.zeros(len(holdout_target)), bagged[own],
                                  {n: bagged[n] for n in names if n != own})
    for name, entry in out["policies"].items():
        if name in diffs:
            entry["holdout_diff"] = {"mean": diffs[name].diff, "lo": diffs[name].lo, "hi": diffs[name].hi}
        if "last" in samples and name != "last":
            last = out["policies"]["last"]["optimism"]["mean"]
            entry["choice_optimism"] = _interval(entry["optimism"]["mean"] - last, samples[name] - samples["last"])
    own_entry = out["policies"][own]
    out |= {"rows": len(holdout_target), "rmse": own_entry["holdout_rmse"], "optimism": own_entry["optimism"]}
    if "choice_optimism" in own_entry:
        out["choice_optimism"] = own_entry["choice_optimism"]
    return out


def line(summary: dict) -> str:
    """The part of a run's last line: ``holdout RMSE 0.5712 | selection optimism +0.0132 [+0.0041, +0.0220]``."""
    if "rmse" not in summary:
        return ""
    o, c = summary["optimism"], summary.get("choice_optimism")
    choice = f", of which the checkpoint choice {c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]" if c else ""
    return (f" | holdout RMSE {summary['rmse']:.4f} ({summary['rows']} rows) | selection optimism "
            f"{o['mean']:+.4f} [{o['lo']:+.4f}, {o['hi']:+.4f}]{choice}")
