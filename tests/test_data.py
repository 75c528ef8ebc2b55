"""Tests for kfold_nlp.data: validation errors of load_table and properties of make_synthetic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kfold_nlp.config.paths import resource
from kfold_nlp.data.synthetic import make_synthetic, readability_features
from kfold_nlp.data.tables import DataError, load_data, load_table

FEATS = ["words_per_sentence", "chars_per_word", "rare_word_frac"]


def write(tmp_path, content: str, name: str = "bad.csv"):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def raises_one_line(path, *needles, **kwargs) -> str:
    """load_table must raise DataError whose single-line message names the file and each needle."""
    with pytest.raises(DataError) as info:
        load_table(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    assert path.name in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# --------------------------------------------------------------------------- load_table: happy path


def test_load_normalises_columns_and_keeps_ids_as_strings(tmp_path):
    path = write(
        tmp_path,
        "id,excerpt,target,standard_error,url_legal\n"
        '007,"The cat sat, then ran.",-0.5,0.48,\n'
        "0a1,A dog.,1.25,,x\n"
        "NA,Third text.,0,0.5,\n",
        "train.csv",
    )
    df = load_table(path)
    assert list(df.columns) == ["id", "text", "target", "standard_error"]
    assert df["id"].tolist() == ["007", "0a1", "NA"]
    assert df["text"].tolist() == ["The cat sat, then ran.", "A dog.", "Third text."]
    assert df["target"].dtype == np.float64 and df["target"].tolist() == [-0.5, 1.25, 0.0]
    assert df["standard_error"].dtype == np.float64
    assert df["standard_error"].iloc[0] == 0.48 and np.isnan(df["standard_error"].iloc[1])
    assert df.index.equals(pd.RangeIndex(3))


def test_load_without_standard_error_column_omits_it(tmp_path):
    df = load_table(write(tmp_path, "id,excerpt,target\na,Hi there.,1\n"))
    assert "standard_error" not in df.columns


def test_require_target_false_reads_test_file_without_target(tmp_path):
    df = load_table(write(tmp_path, "id,excerpt\nx1,Some text.\nx2,More text.\n", "test.csv"), require_target=False)
    assert list(df.columns) == ["id", "text"]
    assert len(df) == 2


def test_require_target_false_ignores_bad_target(tmp_path):
    df = load_table(write(tmp_path, "id,excerpt,target\nx1,Text.,oops\n"), require_target=False)
    assert "target" not in df.columns


def test_custom_column_names(tmp_path):
    df = load_table(write(tmp_path, "key,body,score\nk,Body text.,2.5\n"), id_col="key", text_col="body",
                    target_col="score")
    assert df.iloc[0].to_dict() == {"id": "k", "text": "Body text.", "target": 2.5}


# --------------------------------------------------------------------------- load_table: errors


def test_missing_file(tmp_path):
    raises_one_line(tmp_path / "nope.csv", "not found")


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_file(tmp_path, content):
    raises_one_line(write(tmp_path, content, "empty.csv"), "empty")


@pytest.mark.parametrize(
    "content",
    [
        'id,excerpt,target\na,"unterminated,1\n',  # EOF inside a quoted field
        "id,excerpt,target\na,t,1\nb,t,1,extra,fields\n",  # ragged row
        "id,excerpt,target\na,t,1,x\nb,t,2,y\n",  # every row too long: would become a silent index
    ],
)
def test_unparsable_csv(tmp_path, content):
    raises_one_line(write(tmp_path, content, "broken.csv"), "parse")


def test_binary_file_is_unparsable(tmp_path):
    path = tmp_path / "blob.csv"
    path.write_bytes(b"id,excerpt\n\xff\xfe\x00\x81,\x80\x81\n")
    raises_one_line(path, "parse")


def test_missing_column_names_it_and_lists_found(tmp_path):
    path = write(tmp_path, "id,text,target\na,t,1\n")
    msg = raises_one_line(path, "'excerpt'", "'id'", "'text'", "'target'")
    assert "missing" in msg


def test_missing_target_column_only_matters_when_required(tmp_path):
    path = write(tmp_path, "id,excerpt\na,t\n")
    raises_one_line(path, "'target'")
    assert len(load_table(path, require_target=False)) == 1


@pytest.mark.parametrize("bad", ['""', '"   "', '" \t "'])
def test_empty_text_names_first_row_and_count(tmp_path, bad):
    path = write(tmp_path, f"id,excerpt,target\nok,Fine.,1\nr2,{bad},1\nr3,,1\n")
    raises_one_line(path, "'r2'", "row 2", "2 row")


@pytest.mark.parametrize("bad", ["", "nan", "NA", "abc", "inf"])
def test_bad_target_names_first_row_and_count(tmp_path, bad):
    path = write(tmp_path, f"id,excerpt,target\nok,Fine.,1\nok2,Fine.,2\nt3,Text.,{bad}\nt4,Text.,x\n")
    raises_one_line(path, "'t3'", "row 3", "2 row", "'target'")


def test_non_numeric_standard_error(tmp_path):
    path = write(tmp_path, "id,excerpt,target,standard_error\na,T.,1,0.5\nb,T.,1,big\n")
    raises_one_line(path, "'b'", "standard_error")


def test_duplicate_ids_named_with_count(tmp_path):
    path = write(tmp_path, "id,excerpt,target\na,T.,1\ndup,T.,1\nb,T.,1\ndup,T.,1\nb,T.,2\n")
    msg = raises_one_line(path, "'dup'", "2 duplicated")
    assert "[2, 4]" in msg


def test_ids_compared_as_strings(tmp_path):
    # "7" and "007" are different ids; numeric parsing would merge them.
    df = load_table(write(tmp_path, "id,excerpt,target\n7,T.,1\n007,T.,1\n"))
    assert df["id"].tolist() == ["7", "007"]


def test_empty_id(tmp_path):
    raises_one_line(write(tmp_path, "id,excerpt,target\na,T.,1\n,T.,1\n"), "row 2", "'id'")


def test_too_few_rows(tmp_path):
    path = write(tmp_path, "id,excerpt,target\na,T.,1\nb,T.,2\nc,T.,3\n")
    raises_one_line(path, "3 rows", "5", min_rows=5)
    assert len(load_table(path, min_rows=3)) == 3


def test_header_only_is_too_few_rows(tmp_path):
    raises_one_line(write(tmp_path, "id,excerpt,target\n"), "0 rows")


# --------------------------------------------------------------------------- make_synthetic


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    train_path, test_path = make_synthetic(tmp_path_factory.mktemp("syn"), seed=42)
    return train_path, test_path, load_table(train_path), load_table(test_path, require_target=False)


def test_synthetic_files_and_columns(synthetic):
    train_path, test_path, train, test = synthetic
    assert (train_path.name, test_path.name) == ("train.csv", "test.csv")
    assert pd.read_csv(train_path, nrows=0).columns.tolist() == ["id", "excerpt", "target", "standard_error"]
    assert pd.read_csv(test_path, nrows=0).columns.tolist() == ["id", "excerpt"]
    assert (len(train), len(test)) == (400, 16)
    assert not list(train_path.parent.glob("*.tmp")), "temp files left behind"


def test_synthetic_ids(synthetic):
    _, _, train, test = synthetic
    ids = pd.concat([train["id"], test["id"]])
    assert ids.str.fullmatch(r"[0-9a-f]{9}").all()
    assert ids.is_unique  # also: train and test disjoint


def test_synthetic_target_distribution(synthetic):
    _, _, train, _ = synthetic
    assert abs(train["target"].mean() + 1.0) < 0.15
    assert abs(train["target"].std() - 1.0) < 0.15
    se = train["standard_error"]
    assert (se > 0).all() and abs(se.mean() - 0.49) < 0.03
    # Extreme targets are less certain, as in CommonLit.
    extreme = (train["target"] + 1).abs() > 1.5
    assert se[extreme].mean() > se[~extreme].mean()


def test_synthetic_passages_look_like_prose(synthetic):
    _, _, train, test = synthetic
    texts = pd.concat([train["text"], test["text"]])
    n_words = texts.str.split().str.len()
    assert n_words.between(85, 165).all(), (n_words.min(), n_words.max())  # 100-150 generated words
    assert texts.str.match(r"[A-Z]").all() and texts.str.endswith(".").all()
    assert texts.is_unique
    first_sentences = texts.str.split(".").str[0]
    assert first_sentences.nunique() == len(texts)


def test_difficulty_varies_measured_features(synthetic):
    _, _, train, _ = synthetic
    feats = pd.DataFrame([readability_features(t) for t in train["text"]])
    assert feats["words_per_sentence"].min() < 9 and feats["words_per_sentence"].max() > 25
    assert feats["chars_per_word"].max() - feats["chars_per_word"].min() > 1.5
    # Harder text (longer sentences, more rare words) gets a lower target.
    for col in FEATS:
        assert np.corrcoef(feats[col], train["target"])[0, 1] < -0.5, col


def test_target_is_learnable_from_text(synthetic):
    _, _, train, _ = synthetic
    x = pd.DataFrame([readability_features(t) for t in train["text"]])[FEATS].to_numpy()
    y = train["target"].to_numpy()
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x[:300], y[:300])
    rmse_ridge = np.sqrt(np.mean((model.predict(x[300:]) - y[300:]) ** 2))
    rmse_mean = np.sqrt(np.mean((y[:300].mean() - y[300:]) ** 2))
    assert rmse_ridge < 0.6, rmse_ridge
    assert rmse_mean > 0.85, rmse_mean


def test_readability_features_counts():
    f = readability_features("The cat sat. A meticulous phenomenon, ubiquitous, persisted!")
    assert f["n_words"] == 8 and f["n_sentences"] == 2
    assert f["words_per_sentence"] == 4.0
    assert f["chars_per_word"] == pytest.approx(49 / 8)
    assert f["rare_word_frac"] == pytest.approx(3 / 8)  # "persisted" is not in the rare list


def test_synthetic_is_deterministic(tmp_path, synthetic):
    train_path, test_path, _, _ = synthetic
    again = make_synthetic(tmp_path / "again", seed=42)
    assert again[0].read_bytes() == train_path.read_bytes()
    assert again[1].read_bytes() == test_path.read_bytes()
    other = make_synthetic(tmp_path / "other", seed=7)
    assert other[0].read_bytes() != train_path.read_bytes()
    assert load_table(other[0])["text"].iloc[0] != load_table(train_path)["text"].iloc[0]


def test_existing_files_are_not_rewritten(tmp_path):
    train_path, test_path = make_synthetic(tmp_path, n_train=20, n_test=3, seed=1)
    train_path.write_text("sentinel", encoding="utf-8")
    assert make_synthetic(tmp_path, n_train=20, n_test=3, seed=1) == (train_path, test_path)
    assert train_path.read_text(encoding="utf-8") == "sentinel"
    # With one file missing both are regenerated.
    test_path.unlink()
    make_synthetic(tmp_path, n_train=20, n_test=3, seed=1)
    assert len(load_table(train_path)) == 20 and len(load_table(test_path, require_target=False)) == 3


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("kfold_nlp.files.os.replace", boom)
    with pytest.raises(OSError):
        make_synthetic(tmp_path, n_train=10, n_test=2)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_set_is_regenerated_when_its_parameters_change(tmp_path):
    train, _ = make_synthetic(tmp_path, n_train=20, n_test=3, seed=1)
    first = train.stat().st_mtime_ns
    make_synthetic(tmp_path, n_train=20, n_test=3, seed=1)
    assert train.stat().st_mtime_ns == first  # same parameters: reused
    make_synthetic(tmp_path, n_train=30, n_test=3, seed=1)
    assert len(pd.read_csv(train)) == 30
    before = pd.read_csv(train)
    make_synthetic(tmp_path, n_train=30, n_test=3, seed=2)
    assert not pd.read_csv(train)["excerpt"].equals(before["excerpt"])


def test_the_default_max_length_reads_whole_synthetic_passages(tmp_path):
    """The default run's max_length (MiniLM's own) must not truncate a generated passage (else length grouping does
    nothing and the noise floor of about 0.3 is out of reach)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    import kfold_nlp  # noqa: F401  (the ${minilm_path:} resolver)
    from kfold_nlp.config.paths import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config")
    train, _ = make_synthetic(tmp_path, **cfg.data.generate)
    tokenizer = AutoTokenizer.from_pretrained(OmegaConf.to_container(cfg.model, resolve=True)["backbone"])
    longest = max(len(ids) for ids in tokenizer(pd.read_csv(train)["excerpt"].tolist())["input_ids"])
    assert longest <= cfg.model.max_length, longest


def test_a_public_sets_missing_file_says_how_to_get_it(tmp_path, monkeypatch):
    """``data=commonlit`` before the download: the line names the file and the preset's download command."""
    monkeypatch.chdir(tmp_path)  # no data/commonlit/ here
    cfg = OmegaConf.load(resource("conf") / "data" / "commonlit.yaml")
    with pytest.raises(DataError, match=r"^data/commonlit/train.csv: file not found; get it with: kaggle "
                                        r"competitions download -c commonlitreadabilityprize"):
        load_data(cfg, 5)


def test_other_generation_parameters_get_their_own_folder_and_never_rewrite_a_runs_files(tmp_path, monkeypatch):
    """Issue: ``data.generate.n_train=100`` used to rewrite the default set under the runs that had used it."""
    from hydra import compose, initialize_config_dir

    from kfold_nlp.config.paths import CONFIG_DIR

    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        default, other = compose("config"), compose("config", ["data.generate.n_train=100"])
    assert default.data.path == "data/synthetic/400-16-42/train.csv"
    assert other.data.path == "data/synthetic/100-16-42/train.csv"
    load_data(default.data, 5)
    before = (tmp_path / default.data.path).read_bytes()
    train, _ = load_data(other.data, 5)
    assert len(train) == 100 and (tmp_path / default.data.path).read_bytes() == before


def test_predicting_a_runs_own_test_file_refuses_one_that_changed_since(tmp_path):
    from kfold_nlp.predict import check_own_test

    pd.DataFrame({"id": ["a", "b", "c"], "target": [0.1, 0.2, 0.3]}).to_csv(tmp_path / "submission.csv", index=False)
    check_own_test(tmp_path, tmp_path / "test.csv", pd.Series(["c", "a", "b"]))  # the same rows, any order
    with pytest.raises(DataError, match=r"test.csv: not the test file .* predicted \(2 of its 3 ids missing, 1 new\); "
                                        r"it changed since the run; give the file to predict as INPUT=<csv>$"):
        check_own_test(tmp_path, tmp_path / "test.csv", pd.Series(["a", "x"]))
