"""A classical member's parameters and texts are checked before the first fold: a bad estimator key or texts that
leave TF-IDF no vocabulary are one line (exit 2) and leave no run folder; and the ``precision=auto`` line names
what gives this CPU native bf16."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import cli
from kfold_nlp.errors import ConfigError, DataError, Exit
from kfold_nlp.model.classical import check_estimator, check_texts
from kfold_nlp.train import hardware, precision

N = 40
WORDS = "the cat sat on a mat while dogs ran quickly over green hills under bright skies and rain".split()


def write_csv(path, texts) -> str:
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "excerpt": texts,
                  "target": rng.normal(size=len(texts))}).to_csv(path, index=False)
    return str(path)


@pytest.fixture
def good_csv(tmp_path) -> str:
    rng = np.random.default_rng(1)
    return write_csv(tmp_path / "good.csv", [" ".join(rng.choice(WORDS, 12)) + "." for _ in range(N)])


def start(tmp_path, csv: str, *overrides: str):
    """``cv`` of a classical member; its exit status, its stderr lines and the run folder it names."""
    run = tmp_path / "run"
    proc = cli("cv", "data=csv", f"data.path={csv}", "cv.n_splits=2", "logger.mode=disabled", *overrides,
               f"hydra.run.dir={run}", check=False)
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()], run


@pytest.mark.slow  # the CLI in this process
@pytest.mark.parametrize("overrides, line", [
    (["model=tfidf_ridge", "model.estimator.min_df=-1"],
     "error: model.estimator.min_df=-1: TfidfVectorizer's min_df must be a float in the range [0.0, 1.0] or an int "
     "in the range [1, inf)"),
    (["model=readability", "model.estimator.regressor=svm"],
     "error: model.estimator.regressor=svm: must be one of ridge, gbm"),
    (["model=tfidf_ridge", "model.estimator.word_ngrams=[2,1]"],
     "error: model.estimator.word_ngrams=[2,1]: must be [low,high], two whole numbers with 1 <= low <= high"),
    (["model=tfidf_ridge", "model.estimator.alphas=[1,-2]"],
     "error: model.estimator.alphas=[1,-2]: must be one or more positive numbers, such as [0.1,1.0,10.0]"),
])
def test_a_bad_estimator_value_is_one_line_naming_its_key_and_leaves_no_folder(tmp_path, good_csv, overrides, line):
    code, err, run = start(tmp_path, good_csv, *overrides)
    assert (code, err) == (Exit.BAD_INPUT, [line])
    assert not run.exists()


@pytest.mark.slow  # the CLI in this process
@pytest.mark.parametrize("texts, says", [
    (["\N{GRINNING FACE}\N{PARTY POPPER}", "\N{ROCKET}", "\N{FIRE}!!"] * 14, "leave the 'words' TF-IDF step no "
                                                                              "vocabulary"),
    ([f"w{i}" for i in range(N)], "no word n-gram is in enough of the 40 training texts for the 'words' TF-IDF "
                                  "step (model.estimator.min_df=2); lower model.estimator.min_df"),
])
def test_texts_that_leave_tfidf_no_vocabulary_are_one_line_naming_the_file(tmp_path, texts, says):
    csv = write_csv(tmp_path / "train.csv", texts[:N])
    code, err, run = start(tmp_path, csv, "model=tfidf_ridge")
    assert code == Exit.BAD_INPUT and len(err) == 1 and err[0].startswith(f"error: {csv}: ") and says in err[0]
    assert not run.exists()


@pytest.mark.slow  # the CLI in this process
def test_the_same_texts_run_where_nothing_needs_a_vocabulary(tmp_path):
    csv = write_csv(tmp_path / "train.csv", [f"w{i}" for i in range(N)])
    code, err, run = start(tmp_path, csv, "model=tfidf_ridge", "model.estimator.min_df=1")
    assert code == 0, err
    assert (run / "oof.csv").is_file()


TFIDF = {"_target_": "kfold_nlp.model.classical.tfidf_ridge", "word_ngrams": [1, 2], "char_ngrams": [2, 5],
         "min_df": 2, "alphas": [1.0]}


def test_a_fold_whose_training_rows_share_no_word_is_refused_by_name():
    """Every word in two rows, one in each fold: all the texts have a vocabulary, neither fold's training part."""
    texts = [f"word{i % 20}x" for i in range(N)]
    folds = np.arange(N) // 20
    cfg = OmegaConf.create(TFIDF)
    check_texts(cfg, texts, "train.csv")  # all rows together: each word is in two
    with pytest.raises(DataError, match=r"^train.csv: no word n-gram is in enough of the 20 training texts once "
                                        r"fold 0's rows are held out for the 'words' TF-IDF step"):
        check_texts(cfg, texts, "train.csv", folds)
    check_texts(cfg, texts, "train.csv", (np.arange(N) % 20 >= 10).astype(int))  # each pair in one fold


def test_the_vocabulary_check_agrees_with_fitting_each_training_part():
    """The chunked count stops early; where it says a part keeps a term, scikit-learn's fit on that part must not
    fail, and where it says none, the fit must fail (random corpora, min_df and max_df as counts and shares)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from kfold_nlp.model.classical import _keeps_a_term

    rng = np.random.default_rng(7)
    for _ in range(60):
        n = int(rng.integers(5, 120))
        words = [f"w{i}" for i in range(int(rng.integers(1, 3 * n)))] + ["\N{FIRE}"]
        texts = np.array([" ".join(rng.choice(words, int(rng.integers(1, 4)))) for _ in range(n)], dtype=object)
        min_df = float(rng.uniform(0, 0.5)) if rng.random() < 0.4 else int(rng.integers(1, 5))
        max_df = float(rng.uniform(0.2, 1.0)) if rng.random() < 0.3 else (int(rng.integers(1, n + 1))
                                                                          if rng.random() < 0.2 else 1.0)
        vectorizer = TfidfVectorizer(min_df=min_df, max_df=max_df)
        folds = rng.integers(-1, 3, size=n)
        sets = np.stack([folds >= 0] + [(folds != k) & (folds >= 0) for k in range(3)], axis=1)
        kept, _ = _keeps_a_term(vectorizer, texts, sets)
        for column, expected in enumerate(kept):
            try:
                TfidfVectorizer(min_df=min_df, max_df=max_df).fit(texts[sets[:, column]])
                fits = True
            except ValueError:
                fits = False
            assert fits == expected, (min_df, max_df, column, list(texts[sets[:, column]]))


@pytest.mark.parametrize("key, value, says", [
    ("min_df", 0, "model.estimator.min_df=0: TfidfVectorizer's min_df must be"),
    ("min_df", "abc", "model.estimator.min_df=abc: TfidfVectorizer's min_df must be"),
    ("char_ngrams", [0, 2], "model.estimator.char_ngrams=[0,2]: must be [low,high]"),
    ("word_ngrams", 3, "model.estimator.word_ngrams=3: must be [low,high]"),
    ("alphas", [], "model.estimator.alphas=[]: must be one or more positive numbers"),
])
def test_check_estimator_names_the_key(key, value, says):
    with pytest.raises(ConfigError) as err:
        check_estimator(OmegaConf.create(TFIDF | {key: value}))
    assert str(err.value).startswith(says)


def test_check_estimator_returns_the_unfitted_pipeline():
    pipeline = check_estimator(OmegaConf.create(TFIDF | {"min_df": 0.5, "alphas": 3.0}))
    assert pipeline.named_steps["ridgecv"].alphas == [3.0]
    assert not hasattr(pipeline.named_steps["ridgecv"], "coef_")


@pytest.mark.parametrize("flags, why", [
    ({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "AMX"),
    ({"avx512f", "avx512_bf16"}, "AVX512-BF16"),
    (set(), "AVX512"),  # no flags to read (not Linux): PyTorch's name for the vector unit
])
def test_the_auto_line_names_what_gives_the_cpu_native_bf16(monkeypatch, flags, why):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(hardware, "cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve_precision("auto") == ("bf16", f"precision auto -> bf16: this CPU has native bf16 "
                                                           f"({why})")
    record = {"cpu": "Fake", "cpu_capability": "AVX512", "cpu_native_bf16": True,
              "cpu_bf16_unit": hardware.cpu_bf16_unit(), "cores_usable": 2, "cores_host": 2, "threads": 2,
              "gpu": None, "gpu_count": 0, "torch": "x", "transformers": "y"}
    assert hardware.header(record).startswith("hardware: Fake (AVX512, native bf16" + (f" via {why})" if flags
                                                                                       else ")"))


def test_amx_without_its_bf16_part_is_not_named(monkeypatch):
    """AMX tiles with int8 only do no bf16: the flag that counts is ``amx_bf16``."""
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_tile", "amx_int8", "avx512_bf16"}))
    assert hardware.cpu_bf16_unit() == "AVX512-BF16"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert hardware.cpu_bf16_unit() is None


def test_cpu_flags_come_from_proc_cpuinfo():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        assert not flags
    else:
        assert ("flags" in text) == bool(flags)
