"""kfold_nlp.stats and the tables that use it (compare, sweep, seeds), on hand-made run folders: no training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from fake_runs import rows, write_run
from kfold_nlp import metrics
from kfold_nlp.analysis import stats
from kfold_nlp.analysis.compare import compare_table, write_compare
from kfold_nlp.analysis.runs import run_rows
from kfold_nlp.analysis.sweep import seed_table, sweep_table, write_sweep


@pytest.fixture(scope="module")
def oof():
    """3,000 OOF rows in 5 folds and a model with residual sd 0.5."""
    f = rows(3000)
    return f, f["target"].to_numpy() + np.random.default_rng(1).normal(0, 0.5, len(f))


def test_identical_runs_give_the_interval_zero_zero(oof):
    f, pred = oof
    iv = stats.paired_bootstrap(f["target"], pred, pred.copy(), f["fold"])
    assert (iv.diff, iv.lo, iv.hi) == (0.0, 0.0, 0.0) and not iv.excludes_zero


def test_a_constant_shift_is_a_real_difference(oof):
    f, pred = oof
    iv = stats.paired_bootstrap(f["target"], pred, pred + 0.1, f["fold"])
    shifted = stats.rmse(f["target"], pred + 0.1) - stats.rmse(f["target"], pred)
    assert iv.diff == pytest.approx(shifted) and iv.lo <= iv.diff <= iv.hi
    assert iv.excludes_zero and iv.lo > 0  # worse, and row noise does not explain it
    # The same shift on an independent model is not distinguishable from it by such a margin: a wider interval.
    other = f["target"].to_numpy() + np.random.default_rng(2).normal(0, 0.5, len(f))
    wide = stats.paired_bootstrap(f["target"], pred, other + 0.1, f["fold"])
    assert wide.hi - wide.lo > 2 * (iv.hi - iv.lo)


def test_resamples_keep_every_fold_size(oof):
    f, _ = oof
    counts = stats.resample_counts(f["fold"], n_boot=500, seed=3)
    sizes = f.groupby("fold").size()
    for k, size in sizes.items():
        assert (counts[:, (f["fold"] == k).to_numpy()].sum(1) == size).all()
    assert counts.mean() == pytest.approx(1.0) and counts.max() > 1  # drawn with replacement
    assert (stats.resample_counts(f["fold"], n_boot=500, seed=3) == counts).all()  # seeded


def test_one_draw_of_resamples_serves_every_column_and_equals_resampling_row_by_row(oof, monkeypatch):
    """What keeps the bootstrap cheap and paired: the resamples are drawn once, as row counts shared by every column,
    and a matrix product of those counts gives each resample's RMSE exactly as drawing its rows one by one would."""
    f, pred = oof
    draws, draw = [], stats.resample_counts
    monkeypatch.setattr(metrics, "resample_counts", lambda *a, **k: draws.append(a) or draw(*a, **k))
    intervals = stats.compare_columns(f["target"], f["fold"], pred, {"b": pred + 0.01, "c": pred - 0.02}, n_boot=200)
    assert len(draws) == 1 and set(intervals) == {"b", "c"}
    counts = draw(f["fold"], n_boot=50)
    target, cols = f["target"].to_numpy(), np.column_stack([pred, pred + 0.01])
    by_rows = [[stats.rmse(np.repeat(target, c.astype(int)), np.repeat(col, c.astype(int))) for col in cols.T]
               for c in counts]
    assert stats.resampled_rmse(target, cols, counts) == pytest.approx(np.array(by_rows), rel=1e-12)


def test_interval_covers_the_population_difference_about_95_percent_of_the_time():
    """Two models with residual sd 0.50 and 0.52 on fresh 300-row samples: the true RMSE gap is 0.02."""
    rng, hits = np.random.default_rng(5), 0
    for rep in range(100):
        f = rows(300, seed=rep)
        noise = rng.normal(0, 1, (2, 300))
        a = f["target"] + 0.5 * noise[0]
        b = f["target"] + 0.52 * (0.6 * noise[0] + 0.8 * noise[1])  # correlated errors, as two models' are
        iv = stats.paired_bootstrap(f["target"], a, b, f["fold"], n_boot=1000, seed=rep)
        hits += iv.lo <= 0.02 <= iv.hi
    assert 85 <= hits <= 100


def test_align_oof_reorders_rows_and_refuses_other_folds(oof):
    f, pred = oof
    a = f.assign(pred=pred)
    shuffled = a.sample(frac=1, random_state=0)
    rows_, preds = stats.align_oof([a, shuffled])
    assert (rows_["id"] == a["id"]).all() and np.array_equal(preds[:, 0], preds[:, 1])
    with pytest.raises(stats.FoldMismatch) as err:
        stats.align_oof([a, shuffled, a.assign(fold=(a["fold"] + 1) % 5)])
    assert err.value.index == 2
    with pytest.raises(stats.FoldMismatch):
        stats.align_oof([a, a.iloc[1:]])


# ---- seeds (issue 13): paired when the seeds match ----

BASE = {0: 0.50, 1: 0.55, 2: 0.60}  # a large seed effect shared by both configurations


def test_matched_seeds_are_paired_and_see_a_consistent_small_gain():
    other = {s: v - 0.0006 + 1e-5 * s for s, v in BASE.items()}  # better on every seed
    d = stats.seed_diff(BASE, other)
    per_seed = np.array([other[s] - BASE[s] for s in BASE])
    assert d.pairing == "paired" and d.diff == pytest.approx(per_seed.mean())
    assert d.se == pytest.approx(per_seed.std(ddof=1) / np.sqrt(3))
    q = sps.t.ppf(0.975, 2)
    assert (d.lo, d.hi) == pytest.approx((d.diff - q * d.se, d.diff + q * d.se))
    assert d.excludes_zero and d.hi < 0
    # The same numbers on unrelated seeds: the seed effect is noise now, the gap is not resolved.
    unpaired = stats.seed_diff(BASE, {s + 10: v for s, v in other.items()})
    assert unpaired.pairing == "unpaired" and unpaired.diff == pytest.approx(d.diff)
    assert unpaired.se > 50 * d.se and not unpaired.excludes_zero


def test_row_noise_adds_to_seed_noise():
    other = {s: v - 0.01 + 0.002 * s for s, v in BASE.items()}
    samples = np.random.default_rng(0).normal(0, 0.003, 2000)
    seeds_only, both = stats.seed_diff(BASE, other), stats.seed_diff(BASE, other, row_samples=samples)
    assert both.se == pytest.approx(np.hypot(seeds_only.se, samples.std(ddof=1)))
    assert both.hi - both.lo > seeds_only.hi - seeds_only.lo


# ---- the tables on run folders with OOF files ----

def _seed_sweep(root, seeds_b=(0, 1, 2), gain=0.03):
    """Configurations baseline and rdrop; each seed has its own noise level (0.4, 0.6, 0.8: a large seed effect);
    rdrop's predictions are baseline's of the same seed moved ``gain`` of the way to the target, on every row."""
    f, rng, job = rows(600), np.random.default_rng(0), 0
    noise = {s: rng.normal(0, 0.4 + 0.2 * (s % 3), len(f)) for s in set((0, 1, 2)) | set(seeds_b)}
    for name, seeds in [("baseline", (0, 1, 2)), ("rdrop", seeds_b)]:
        for s in seeds:
            pred = f["target"] + noise[s] * (1 - gain if name == "rdrop" else 1)
            write_run(root / str(job), f, pred, name=name, seed=s,
                      overrides=["model=tiny", f"regularizer={name}", f"seed={s}"])
            job += 1
    return root


def test_seed_table_pairs_matched_seeds_and_adds_row_noise(tmp_path):
    table = seed_table(run_rows(_seed_sweep(tmp_path))).set_index("configuration")
    rdrop = table.loc["regularizer=rdrop"]
    assert table.loc["regularizer=baseline", "pairing"] == "reference"
    assert rdrop["pairing"] == "paired" and rdrop["noise"] == "seeds+rows"
    assert rdrop["diff"] < 0 and rdrop["ci_hi"] < 0 and rdrop["sig"] == "*"
    assert rdrop["diff_se"] < abs(rdrop["diff"]) < rdrop["rmse_sd"]  # the seed spread alone would hide it


def test_seed_table_falls_back_to_unpaired_when_seeds_differ(tmp_path):
    table = seed_table(run_rows(_seed_sweep(tmp_path, seeds_b=(3, 4, 5)))).set_index("configuration")
    rdrop = table.loc["regularizer=rdrop"]
    assert rdrop["pairing"] == "unpaired" and rdrop["diff_se"] > abs(rdrop["diff"]) and rdrop["sig"] == ""


def test_sweep_table_compares_each_job_with_the_baseline_job_of_its_seed(tmp_path):
    jobs = write_sweep(_seed_sweep(tmp_path)).set_index("job")
    for job in ["3", "4", "5"]:  # rdrop, seeds 0, 1, 2 -> baseline jobs 0, 1, 2
        ref = str(int(job) - 3)
        assert str(jobs.loc[job, "ref"]) == ref
        assert jobs.loc[job, "diff_vs_ref"] == pytest.approx(jobs.loc[job, "cv_rmse"] - jobs.loc[ref, "cv_rmse"])
        assert jobs.loc[job, "ci_lo"] <= jobs.loc[job, "diff_vs_ref"] <= jobs.loc[job, "ci_hi"] < 0
        assert jobs.loc[job, "sig"] == "*"
        assert jobs.loc[ref, "ci_lo"] == jobs.loc[ref, "ci_hi"] == 0 and jobs.loc[ref, "sig"] == ""
    md = (tmp_path / "sweep.md").read_text()
    assert "diff_vs_ref" in md and "paired" in md and "seeds+rows" in md


def test_compare_table_interval_marks_a_shift_and_not_a_copy(tmp_path):
    f = rows(800)
    pred = f["target"] + np.random.default_rng(0).normal(0, 0.5, len(f))
    for name, p in [("rdrop", pred + 0.1), ("baseline", pred), ("msd", pred)]:
        write_run(tmp_path / name, f, p, name=name)
    table = write_compare(tmp_path)
    assert table.columns.tolist()[0] == "baseline" and set(table.columns) == {"baseline", "rdrop", "msd"}
    assert table.loc["interval excludes 0", "rdrop"] and not table.loc["interval excludes 0", "msd"]
    assert table.loc["RMSE diff 95% low", "rdrop"] > 0
    assert table.loc["RMSE diff 95% low", "msd"] == table.loc["RMSE diff 95% high", "msd"] == 0
    md = (tmp_path / "table.md").read_text()
    rdrop_diff = f"{table.loc['RMSE diff', 'rdrop']:.4f} *"
    assert rdrop_diff in md and md.split("\n\n")[0].count("*") == 1  # the table marks rdrop only


def test_column_order_is_derived_from_the_regularizer_configs(tmp_path):
    from kfold_nlp.analysis.compare import regularizer_order

    order = regularizer_order()
    assert order[0] == "baseline" and sorted(order[1:]) == order[1:] and {"rdrop", "msd"} <= set(order)
    f = rows(50)
    for name in ["zzz_custom", *reversed(order)]:
        write_run(tmp_path / name, f, f["target"], name=name)
    assert compare_table(run_rows(tmp_path)).columns.tolist() == [*order, "zzz_custom"]


def test_runs_on_other_folds_get_no_interval(tmp_path):
    f = rows(200)
    write_run(tmp_path / "a", f, f["target"] + 0.1, name="baseline")
    write_run(tmp_path / "b", f.assign(fold=(f["fold"] + 1) % 5), f["target"], name="rdrop")
    jobs = sweep_table(run_rows(tmp_path)).set_index("job")
    assert np.isnan(jobs.loc["b", "ci_lo"]) and jobs.loc["b", "diff_vs_ref"] == pytest.approx(-jobs.loc["a", "cv_rmse"])
    assert pd.isna(compare_table(run_rows(tmp_path)).loc["RMSE diff 95% low", "rdrop"])


# ---- marks only where the comparison means something (issue 21) ----

def _moved(f, pred, share):
    """``pred`` moved ``share`` of the way to the target on every row: a consistent gain, so a tight interval."""
    return pred + share * (f["target"] - pred)


def test_a_difference_below_the_practical_threshold_gets_no_mark_whatever_its_interval(tmp_path):
    f = rows(3000)
    pred = f["target"] + np.random.default_rng(0).normal(0, 0.5, len(f))
    for name, p in [("baseline", pred), ("msd", _moved(f, pred, 0.001)), ("rdrop", _moved(f, pred, 0.1))]:
        write_run(tmp_path / name, f, p, name=name)
    table = write_compare(tmp_path)
    tiny, large = table.loc["RMSE diff", "msd"], table.loc["RMSE diff", "rdrop"]
    assert abs(tiny) < stats.MIN_DIFF <= abs(large)
    assert table.loc["interval excludes 0", "msd"] and table.loc["interval excludes 0", "rdrop"]  # both "real"
    body = (tmp_path / "table.md").read_text().split("\n\n")[0]
    assert f"{large:.4f} *" in body and body.count("*") == 1  # only the one large enough to matter
    assert stats.Interval(tiny, tiny - 1e-4, tiny + 1e-4).marked() is False
    assert stats.Interval(large, large - 1e-4, large + 1e-4).marked() is True


def test_seeds_of_one_configuration_are_paired_not_compared_as_configurations(tmp_path):
    """What the notebook shows for a seed sweep: the seeds' own noise (a large seed effect) is no difference."""
    from kfold_nlp.analysis import report

    _seed_sweep(tmp_path)  # baseline and rdrop, seeds 0, 1, 2; rdrop better on every seed
    df = report.load_runs(report.find_runs([tmp_path]))
    table = compare_table(df.assign(name=df["label"]))
    labels = dict(zip(df["seed"].astype(int).astype(str) + df["name"], df["label"]))
    base1, rdrop1 = labels["1baseline"], labels["1rdrop"]
    assert table.attrs["reference"] == labels["0baseline"]
    assert pd.isna(table.loc["RMSE diff", base1]) and pd.isna(table.loc["interval excludes 0", base1])
    assert table.loc["compared with", rdrop1] == base1  # the reference configuration's run of the same seed
    cv = df.set_index("label")["cv_rmse"]
    assert table.loc["RMSE diff", rdrop1] == pytest.approx(cv[rdrop1] - cv[base1])
    from kfold_nlp.analysis.compare import format_compare

    shown = format_compare(table)
    assert shown.loc["RMSE diff", base1] == "" and shown.loc["RMSE diff", rdrop1].endswith(" *")


def test_rendered_tables_have_no_nan_and_no_negative_zero(tmp_path):
    from kfold_nlp.analysis.tables import format_table, markdown, text

    assert text(-0.00001) == "0.0000" and text(-0.5) == "-0.5000" and text(np.nan) == "" and text(None) == ""
    md = markdown(pd.DataFrame({"ci_hi": [-0.00004, 0.1], "sig": [np.nan, "*"], "n_seeds": [3, 3]}))
    assert "nan" not in md.lower() and "-0.0000" not in md and "0.0000" in md
    write_sweep(_seed_sweep(tmp_path))
    seeds = seed_table(run_rows(tmp_path))
    for rendered in [(tmp_path / "sweep.md").read_text(), format_table(seeds).to_string()]:
        assert "nan" not in rendered.lower() and "-0.0000" not in rendered
