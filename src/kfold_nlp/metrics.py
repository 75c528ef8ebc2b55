"""How good predictions are, and how sure that is: MSE and RMSE, paired bootstrap intervals over rows, and what a
run's holdout says of its selection policies. A leaf: training and collecting (which write the scores) and the
analysis (which compares them) all import it, so every score is computed one way.

Conventions, the same everywhere:

- A *difference* is ``other - base`` in RMSE: negative means ``other`` is better (lower error).
- A *paired bootstrap over rows* draws the same rows for both predictions, so what the two share (hard texts, label
  noise) cancels and only their disagreement is left. Rows are drawn with replacement within each fold (stratified
  by fold), so every resample keeps each fold's size, like the CV score it imitates.
- The interval is the 2.5% and 97.5% percentiles of the resampled differences (95%): it says how much the
  difference would move on another sample of texts like these, for these trained models. A difference is marked
  (``marked``) when its interval excludes 0 *and* it is at least ``MIN_DIFF``: with thousands of rows and
  near-constant predictors a gap far too small to matter can still exclude 0.
- Over seeds, the training noise of each run adds to the row noise; ``seed_diff`` adds the two variances.
- The *optimism* of a selection policy is the mean over folds of (holdout RMSE - validation RMSE) of the weights it
  chose. The validation rows picked the checkpoint under ``best``; the holdout rows picked nothing, so a positive
  optimism is what the CV claims beyond what unseen rows give. Its interval draws the holdout rows once per resample
  for every fold (they are the same rows), each fold's validation rows within the fold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtrit

from .bagging import bag

N_BOOT = 2000  # resamples: each bound of a 95% interval then varies by about 0.06 se from one seed to another


LEVEL = 0.95


SEED = 0  # fixed, so a table rebuilt from the same files shows the same intervals


MIN_DIFF = 0.005  # RMSE: the smallest difference worth a mark, whatever its interval (a practical threshold)


def mse(target, pred) -> float:
    """Mean squared error over all rows (``pred - target``, squared, averaged)."""
    return float(np.mean((np.asarray(pred, float) - np.asarray(target, float)) ** 2))


def rmse(target, pred) -> float:
    """Root mean squared error over all rows: the CV score when the rows are the OOF rows of every fold. The root
    of ``mse``, to the last bit (both square roots round correctly)."""
    return math.sqrt(mse(target, pred))


@dataclass(frozen=True)
class Interval:
    """A difference ``other - base`` in RMSE with its interval ``[lo, hi]``."""

    diff: float
    lo: float
    hi: float

    @property
    def excludes_zero(self) -> bool:
        """The interval lies on one side of 0: a real difference at this level, not row noise."""
        return bool(self.lo > 0 or self.hi < 0)

    def marked(self, min_diff: float = MIN_DIFF) -> bool:
        """Worth a mark: the interval excludes 0 and the difference is large enough to matter in practice."""
        return self.excludes_zero and bool(abs(self.diff) >= min_diff)


@dataclass(frozen=True)
class SeedDiff(Interval):
    """A difference of mean CV RMSE over seeds, with its standard error and how it was computed.

    ``pairing``: ``paired`` when both configurations ran the same seeds (the per-seed differences give the spread),
    ``unpaired`` otherwise (Welch: the two spreads add). ``se_seeds``: the training noise part, ``se_rows``: the row
    part (the paired bootstrap of the mean difference; 0 when the OOF files were not available), ``se``: both.
    """

    se: float = float("nan")
    se_seeds: float = float("nan")
    se_rows: float = 0.0
    pairing: str = ""
    df: float = float("nan")


def resample_counts(folds, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """How often each row is drawn in each resample, ``(n_boot, n_rows)``: each fold's rows drawn with replacement,
    as many as the fold has. One matrix serves every run on these folds, which is what makes the bootstrap paired."""
    folds = np.asarray(folds)
    n, rng = len(folds), np.random.default_rng(seed)
    picks = []
    for k in np.unique(folds):
        rows = np.flatnonzero(folds == k)
        picks.append(rows[rng.integers(0, len(rows), size=(n_boot, len(rows)))])
    flat = np.concatenate(picks, axis=1) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def resampled_rmse(target, preds, counts: np.ndarray) -> np.ndarray:
    """The RMSE of each prediction column under each resample, ``(n_boot, n_columns)``.

    One matrix-vector product per column, so two identical columns give identical numbers to the last bit.
    """
    target = np.asarray(target, float)
    preds = np.asarray(preds, float).reshape(len(target), -1)
    sq = (preds - target[:, None]) ** 2
    return np.sqrt(np.stack([counts @ sq[:, j] for j in range(sq.shape[1])], axis=1) / len(target))


def percentile_interval(diff: float, samples: np.ndarray, level: float = LEVEL) -> Interval:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(diff), float(lo), float(hi))


def rmse_interval(target, pred, folds, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> Interval:
    """The RMSE of ``pred`` with its bootstrap interval over rows drawn within each fold: how much the CV score
    would move on another sample of texts like these (``diff`` holds the RMSE itself)."""
    samples = resampled_rmse(target, pred, resample_counts(folds, n_boot, seed))[:, 0]
    return percentile_interval(rmse(target, pred), samples, level)


def paired_bootstrap(target, base, other, folds, *, n_boot: int = N_BOOT, level: float = LEVEL,
                     seed: int = SEED) -> Interval:
    """``rmse(other) - rmse(base)`` on the same OOF rows, with its paired bootstrap interval (stratified by fold).

    Identical predictions give exactly ``[0, 0]``.
    """
    return compare_columns(target, folds, base, {"other": other}, n_boot=n_boot, level=level, seed=seed)["other"]


def compare_columns(target, folds, base, others: Mapping[str, np.ndarray], *, n_boot: int = N_BOOT,
                    level: float = LEVEL, seed: int = SEED, counts: np.ndarray | None = None) -> dict[str, Interval]:
    """``paired_bootstrap`` of several columns against one base, all on the same resamples."""
    counts = resample_counts(folds, n_boot, seed) if counts is None else counts
    names = list(others)
    cols = np.column_stack([np.asarray(base, float), *[np.asarray(others[k], float) for k in names]])
    samples = resampled_rmse(target, cols, counts)
    return {k: percentile_interval(rmse(target, cols[:, j + 1]) - rmse(target, cols[:, 0]),
                                   samples[:, j + 1] - samples[:, 0], level) for j, k in enumerate(names)}


def seed_diff(base: Sequence[float] | Mapping, other: Sequence[float] | Mapping, *, row_samples=None,
              level: float = LEVEL) -> SeedDiff:
    """Difference of the mean CV RMSE over seeds, ``mean(other) - mean(base)``, with both sources of noise.

    Pass mappings seed -> CV RMSE. When both ran the same seeds (at least two), the comparison is *paired*: the
    per-seed differences ``d_s`` cancel what a seed does to both (its data order, its initialisation), and
    ``se_seeds = sd(d_s) / sqrt(n)``, ``n - 1`` degrees of freedom. Otherwise it is *unpaired* (Welch):
    ``se_seeds = sqrt(sd_a^2 / n_a + sd_b^2 / n_b)``, NaN when a side has one seed.

    The seeds were all scored on the same OOF rows, so their spread says nothing about the rows; ``row_samples``
    (the paired bootstrap over rows of the same mean difference, one value per resample) adds that part:
    ``se = sqrt(se_seeds^2 + sd(row_samples)^2)`` (the law of total variance: training noise given the rows, plus
    the row noise of the mean). The interval is ``diff +- t(df) * se`` with the seeds' degrees of freedom, which
    is conservative when the row part dominates.
    """
    a, b = (dict(x) if isinstance(x, Mapping) else dict(enumerate(x)) for x in (base, other))
    paired = isinstance(base, Mapping) and isinstance(other, Mapping) and set(a) == set(b) and len(a) >= 2
    if paired:
        d = np.array([b[s] - a[s] for s in sorted(a)])
        diff, se_seeds, df = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), len(d) - 1.0
    else:
        va, vb = (np.array(list(x.values()), float) for x in (a, b))
        diff, se_seeds, df = float(vb.mean() - va.mean()), float("nan"), float("nan")
        if min(len(va), len(vb)) >= 2:
            pa, pb = va.var(ddof=1) / len(va), vb.var(ddof=1) / len(vb)
            se_seeds = float(np.sqrt(pa + pb))
            df = len(va) + len(vb) - 2.0  # Welch-Satterthwaite below; the pooled value when both spreads are 0
            if pa + pb > 0:
                df = (pa + pb) ** 2 / (pa**2 / (len(va) - 1) + pb**2 / (len(vb) - 1))
    se_rows = float(np.std(row_samples, ddof=1)) if row_samples is not None else 0.0
    se = float(np.hypot(se_seeds, se_rows))
    q = float(stdtrit(df, (1 + level) / 2)) if df >= 1 else np.nan
    return SeedDiff(diff, diff - q * se, diff + q * se, se=se, se_seeds=se_seeds, se_rows=se_rows,
                    pairing="paired" if paired else "unpaired", df=df)


# ---- a run's holdout: what it says of the selection policies


def _fold_rmse(sq: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """RMSE of one column of squared errors under each resample, ``(n_boot,)``."""
    return np.sqrt(counts @ sq / sq.size)


def _optimism(val: dict[int, tuple[np.ndarray, np.ndarray]], holdout_target: np.ndarray,
              holdout: dict[int, np.ndarray], n_boot: int, seed: int) -> tuple[float, np.ndarray]:
    """The optimism and its bootstrap samples; the same ``seed`` draws the same rows for every policy of a run,
    so two policies' samples are paired."""
    held_counts = resample_counts(np.zeros(len(holdout_target)), n_boot, seed + 1)
    gaps, samples = [], np.zeros(n_boot)
    for k in sorted(val):
        target, pred = val[k]
        sq_val, sq_held = (pred - target) ** 2, (holdout[k] - holdout_target) ** 2
        gaps.append(np.sqrt(sq_held.mean()) - np.sqrt(sq_val.mean()))
        val_counts = resample_counts(np.zeros(len(target)), n_boot, seed + 2 + k)
        samples += _fold_rmse(sq_held, held_counts) - _fold_rmse(sq_val, val_counts)
    return float(np.mean(gaps)), samples / len(val)


def _interval(value: float, samples: np.ndarray) -> dict:
    i = percentile_interval(value, samples)
    return {"mean": i.diff, "lo": i.lo, "hi": i.hi}


def optimism(val: dict[int, tuple[np.ndarray, np.ndarray]], holdout_target: np.ndarray,
             holdout: dict[int, np.ndarray], n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """``val``: fold -> (its rows' targets, predictions); ``holdout``: fold -> its model's holdout predictions.
    Returns ``mean`` (the optimism), ``lo``, ``hi`` (its 95% bootstrap interval)."""
    return _interval(*_optimism(val, holdout_target, holdout, n_boot, seed))


DECIMALS = 6  # the selection block's RMSEs and differences: far below any noise a bootstrap interval shows

# What each key of metrics.json's ``selection`` block means: written into the block, so that it reads on its own.
ABOUT = {
    "select": "the policy the run keeps (trainer.select): its weights are the fold models, its predictions the run's "
              "OOF and test predictions; the other policies were scored on the same training (trainer.also_select)",
    "cv_rmse": "RMSE over every fold's validation rows",
    "holdout_rmse": "RMSE of the fold models' bagged prediction of the holdout rows (cv.holdout)",
    "optimism": "mean over folds of holdout RMSE minus validation RMSE of the weights kept, with [lo, hi] its 95% "
                "bootstrap interval; positive: the CV promises more than unseen rows give",
    "choice_optimism": "a policy's optimism minus that of the policy named by vs (last, which chooses nothing), on "
                       "the same resamples: what choosing by the validation rows adds; present only when last is "
                       "scored (trainer.also_select=[last])",
    "holdout_diff": "a policy's holdout_rmse minus that of the policy named by vs (the kept one), paired over the "
                    "holdout rows: negative means this policy is better on unseen rows",
    "decimals": f"every RMSE and difference here is rounded to {DECIMALS} decimals",
}


def _rounded(value):
    """``value`` with every float rounded to ``DECIMALS`` (mappings and lists walked)."""
    if isinstance(value, float):
        return round(value, DECIMALS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def selection_summary(val_preds: dict[int, dict[str, np.ndarray]], val_targets: dict[int, np.ndarray],
                      holdout_target: np.ndarray | None, holdout_preds: dict[int, dict[str, np.ndarray]] | None,
                      own: str, bagging: str) -> dict:
    """Every scored policy's CV RMSE (pooled over the folds' validation rows) and, with a holdout, its bagged
    holdout RMSE, fold RMSEs and optimism; ``own`` (``trainer.select``) is the one the run keeps. The block says
    what each key means (``about``) and is rounded (``DECIMALS``).

    The optimism also holds what the holdout and the validation rows differ by whatever the weights (another
    sample of texts, models that each saw part of the data); what the *choice* adds is a policy's optimism minus
    ``last``'s on the same run (``choice_optimism``, paired: ``last`` chooses nothing). ``holdout_diff``: a
    policy's bagged holdout RMSE minus ``own``'s, paired over the holdout rows (negative: better on unseen rows).
    Each difference names what it is measured against in ``vs``.
    """
    folds = sorted(val_preds)
    names = [own, *[n for n in val_preds[folds[0]] if n not in (own, "pred")]]
    key = {name: "pred" if name == own else name for name in names}
    out, samples, bagged = {"select": own, "policies": {}}, {}, {}
    for name in names:
        sq = np.concatenate([(val_preds[k][key[name]] - val_targets[k]) ** 2 for k in folds])
        entry = {"cv_rmse": float(np.sqrt(sq.mean())),
                 "folds": {str(k): {"val_rmse": rmse(val_targets[k], val_preds[k][key[name]])} for k in folds}}
        if holdout_preds is not None:
            bagged[name] = bag(np.stack([holdout_preds[k][key[name]] for k in folds]), bagging)
            entry["holdout_rmse"] = rmse(holdout_target, bagged[name])
            for k in folds:
                entry["folds"][str(k)]["holdout_rmse"] = rmse(holdout_target, holdout_preds[k][key[name]])
            value, samples[name] = _optimism({k: (val_targets[k], val_preds[k][key[name]]) for k in folds},
                                             holdout_target, {k: holdout_preds[k][key[name]] for k in folds},
                                             N_BOOT, SEED)
            entry["optimism"] = _interval(value, samples[name])
        out["policies"][name] = entry
    if holdout_preds is None:
        return _rounded({"about": {k: ABOUT[k] for k in ("select", "cv_rmse", "decimals")}} | out)
    diffs = compare_columns(holdout_target, np.zeros(len(holdout_target)), bagged[own],
                            {n: bagged[n] for n in names if n != own})
    for name, entry in out["policies"].items():
        if name in diffs:
            entry["holdout_diff"] = {"vs": own, "mean": diffs[name].diff, "lo": diffs[name].lo, "hi": diffs[name].hi}
        if "last" in samples and name != "last":
            last = out["policies"]["last"]["optimism"]["mean"]
            entry["choice_optimism"] = {"vs": "last"} | _interval(entry["optimism"]["mean"] - last,
                                                                  samples[name] - samples["last"])
    own_entry = out["policies"][own]
    out |= {"rows": len(holdout_target), "rmse": own_entry["holdout_rmse"], "optimism": own_entry["optimism"]}
    if "choice_optimism" in own_entry:
        out["choice_optimism"] = own_entry["choice_optimism"]
    return _rounded({"about": ABOUT} | out)


def selection_line(summary: dict) -> str:
    """The part of a run's last line: ``| holdout RMSE 0.5712 (453 rows) | selection optimism +0.0132 [+0.0041,
    +0.0220]`` with a holdout, then with more than one scored policy each one's CV (and holdout) RMSE: ``| policies,
    CV / holdout RMSE: best 0.5701 / 0.5712 (kept), last 0.5760 / 0.5705``."""
    parts = []
    if "rmse" in summary:
        o, c = summary["optimism"], summary.get("choice_optimism")
        choice = f", of which the checkpoint choice {c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]" if c else ""
        parts.append(f" | holdout RMSE {summary['rmse']:.4f} ({summary['rows']} rows) | selection optimism "
                     f"{o['mean']:+.4f} [{o['lo']:+.4f}, {o['hi']:+.4f}]{choice}")
    policies = summary.get("policies", {})
    if len(policies) > 1:
        held = "rmse" in summary

        def cell(name: str, p: dict) -> str:
            score = f"{p['cv_rmse']:.4f}" + (f" / {p['holdout_rmse']:.4f}" if held else "")
            return f"{name} {score}" + (" (kept)" if name == summary["select"] else "")

        parts.append(f" | policies, CV{' / holdout' if held else ''} RMSE: "
                     + ", ".join(cell(name, p) for name, p in policies.items()))
    return "".join(parts)
