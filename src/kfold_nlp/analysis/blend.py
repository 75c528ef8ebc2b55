"""A blend of runs scored honestly: its weights (mean, non-negative least squares, least squares of the bags' errors,
or greedy selection, always non-negative and summing to 1) and the nested CV that scores them.

Weights that sum to 1 keep the blend on the members' scale, so a run blended with copies of itself is that run. The
reported CV RMSE is *nested*: for each fold, weights fitted on the OOF rows of the other folds predict its rows, so
no row is scored by weights fitted on it. The weights fitted on all rows are the ones applied to the members' bagged
test predictions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from .. import metrics
from .members import EnsembleError, Members, display

METHODS = ("bagged", "mean", "nnls", "greedy")
DEFAULT = "bagged"


GREEDY_STEPS = 100  # selections with replacement: weights are multiples of 1/steps at most


def mean_weights(preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Equal weights: the plain average, nothing fitted."""
    return np.full(preds.shape[1], 1 / preds.shape[1])


def nnls_weights(preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares weights on the OOF columns, non-negative and summing to 1 (the best convex blend).

    ``scipy.optimize.nnls`` has no equality constraint, so the sum is one more row of the system, scaled far above
    the data rows (it then holds to about 1e-8), and the weights are divided by their sum to make it exact.
    """
    scale = 1e3 * np.sqrt(len(target)) * max(1.0, float(np.abs(preds).max()))
    a = np.vstack([preds, np.full((1, preds.shape[1]), scale)])
    w, _ = nnls(a, np.append(target, scale))
    return w / w.sum()


def bagged_weights(preds: np.ndarray, target: np.ndarray, spread: np.ndarray | None) -> np.ndarray:
    """The convex weights of least squared error of the members' *bags*, which predict the test rows, estimated from
    OOF rows, each of which one fold model predicted.

    With sum(w) = 1 the blend's squared error is ``w' S w`` for ``S`` the covariance of the members' OOF errors. A
    single fold model's error on a row is its bag's plus its deviation from the bag, so the bags' ``S`` is the OOF
    one minus ``spread`` (``members.fold_spread``: the fold models' covariance on rows every one of them predicted).
    Plain NNLS fits ``S`` itself and so under-weights the members that gain most from bagging. Without a spread it is
    NNLS. ``S`` is clipped to positive semi-definite, then solved as NNLS with the sum-to-1 row.
    """
    if spread is None:
        return nnls_weights(preds, target)
    errors = preds - target[:, None]
    values, vectors = np.linalg.eigh(errors.T @ errors / len(target) - spread)
    values = np.clip(values, 1e-12 * np.abs(values).sum(), None)
    root = np.sqrt(values)[:, None] * vectors.T  # root' root = S
    scale = 1e3 * max(1.0, float(np.abs(root).max()))
    w, _ = nnls(np.vstack([root, np.full((1, preds.shape[1]), scale)]), np.append(np.zeros(len(root)), scale))
    return w / w.sum()


def greedy_weights(preds: np.ndarray, target: np.ndarray, steps: int = GREEDY_STEPS) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004): start from the best member, then at each step add
    the member (again, if it helps most) that lowers the RMSE of the running average most; keep the step with the
    lowest RMSE. A member's weight is the share of the selections it got."""
    chosen, total = np.zeros(preds.shape[1]), np.zeros(len(target))
    best, best_chosen = np.inf, None
    for step in range(1, steps + 1):
        scores = np.sqrt(np.mean(((total[:, None] + preds) / step - target[:, None]) ** 2, axis=0))
        j = int(np.argmin(scores))
        chosen[j] += 1
        total += preds[:, j]
        if scores[j] < best:
            best, best_chosen = scores[j], chosen.copy()
    return best_chosen / best_chosen.sum()


def fitter(method: str, steps: int = GREEDY_STEPS, spread: np.ndarray | None = None):
    if method not in METHODS:
        raise EnsembleError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if steps < 1:
        raise EnsembleError(f"--steps must be at least 1, got {steps}")
    return {"bagged": lambda p, t: bagged_weights(p, t, spread), "mean": mean_weights, "nnls": nnls_weights,
            "greedy": lambda p, t: greedy_weights(p, t, steps)}[method]


def nested_predictions(preds: np.ndarray, target: np.ndarray, folds: np.ndarray, fit) -> tuple[np.ndarray, dict]:
    """Each fold's rows blended with weights fitted on the other folds' rows: ``(predictions, {fold: weights})``.

    The RMSE of these predictions is the blend's honest CV score; fitted and scored on the same rows (in-sample) it
    would reward weights that fit noise.
    """
    out, weights = np.empty(len(target)), {}
    for k in np.unique(folds):
        held = folds == k
        weights[int(k)] = fit(preds[~held], target[~held])
        out[held] = preds[held] @ weights[int(k)]
    return out, weights


def blend(members: Members, method: str = DEFAULT, steps: int = GREEDY_STEPS) -> dict:
    """Weights, OOF predictions (nested and in-sample), metrics and the blended submission of ``members``."""
    fit = fitter(method, steps, members.spread)
    target, folds = members.rows["target"].to_numpy(float), members.rows["fold"].to_numpy()
    weights = fit(members.oof, target)
    nested, fold_weights = nested_predictions(members.oof, target, folds, fit)
    in_sample = members.oof @ weights
    counts = metrics.resample_counts(folds)
    member_rmse = {n: metrics.rmse(target, members.oof[:, j]) for j, n in enumerate(members.names)}
    # The blend's improvement over each member: the member's RMSE minus the nested blend's (positive: the blend is
    # better), paired over the same rows.
    better = {n: metrics.compare_columns(target, folds, nested, {"member": members.oof[:, j]}, counts=counts)["member"]
              for j, n in enumerate(members.names)}
    best = min(member_rmse, key=member_rmse.get)
    fold_rmse = np.array([metrics.rmse(target[folds == k], nested[folds == k]) for k in fold_weights])
    scores = {
        "method": method, **({"steps": steps} if method == "greedy" else {}),
        **({"bag_correction": members.spread is not None} if method == "bagged" else {}),
        "weights_sum_to_1": True,
        "cv": {
            "rmse": metrics.rmse(target, nested), "mse": metrics.rmse(target, nested) ** 2,
            "rmse_in_sample": metrics.rmse(target, in_sample), "mse_in_sample": metrics.rmse(target, in_sample) ** 2,
            "fold_rmse_mean": float(fold_rmse.mean()), "fold_rmse_sd": float(fold_rmse.std(ddof=1)),
            "n_rows": len(target), "best_member": best, "best_member_rmse": member_rmse[best],
            "improvement_vs_best_member": better[best].diff, "improvement_lo": better[best].lo,
            "improvement_hi": better[best].hi, "improvement_excludes_zero": better[best].excludes_zero,
            "n_boot": metrics.N_BOOT, "level": metrics.LEVEL,
        },
        "members": {n: {"path": str(p), "folder": display(p), "weight": float(w), "cv_rmse": member_rmse[n],
                        "improvement": better[n].diff, "improvement_lo": better[n].lo,
                        "improvement_hi": better[n].hi, "improvement_excludes_zero": better[n].excludes_zero}
                    for n, p, w in zip(members.names, members.paths, weights)},
        "folds": {str(k): {"rmse": float(r), "weights": dict(zip(members.names, map(float, fold_weights[k])))}
                  for k, r in zip(fold_weights, fold_rmse)},
    }
    if members.holdout is not None:  # rows no weight was fitted on and no fold model trained or selected on
        held = {n: metrics.rmse(members.holdout_target, members.holdout[:, j]) for j, n in enumerate(members.names)}
        scores["cv"] |= {"holdout_rmse": metrics.rmse(members.holdout_target, members.holdout @ weights),
                         "best_member_holdout_rmse": held[best], "holdout_rows": len(members.holdout_target)}
        for n in members.names:
            scores["members"][n]["holdout_rmse"] = held[n]
    oof = members.rows.assign(pred=nested, pred_in_sample=in_sample)
    submission = None
    if members.test is not None:
        submission = pd.DataFrame({members.test_header[0]: members.test_ids.to_numpy(),
                                   members.test_header[1]: members.test @ weights})
    return {"weights": dict(zip(members.names, map(float, weights))), "metrics": scores, "oof": oof,
            "submission": submission}
