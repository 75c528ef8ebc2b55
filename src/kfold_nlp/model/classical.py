"""Classical members for blends (``model=tfidf_ridge``, ``model=readability``): scikit-learn pipelines fitted per fold
in seconds, on the same folds and into the same run folder as a transformer, so compare, ensemble, predict and
export treat them like any run.

A preset says ``kind: sklearn`` and names its pipeline builder in ``estimator._target_``. The readability features
are the classic formulas' ingredients (Flesch reading ease, Flesch-Kincaid grade, SMOG-like polysyllable share,
word and sentence lengths) with a vowel-group syllable count: textstat computes the same formulas but its releases
need ``pkg_resources`` (0.7.3) or NLTK data from the internet (0.7.13).
"""

from __future__ import annotations

import re
from numbers import Integral

import numpy as np
from omegaconf import OmegaConf
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

# defined where a bundle can carry them: a fitted pipeline pickles the function by its module's name
from ..bundle.features import readability_features, syllables  # noqa: F401
from ..errors import ConfigError, DataError

KIND = "sklearn"  # model.kind of a classical preset
REGRESSORS = ("ridge", "gbm")  # model.estimator.regressor of model=readability


def is_classical(model_cfg) -> bool:
    return model_cfg.get("kind") == KIND


def tfidf_ridge(word_ngrams=(1, 2), char_ngrams=(2, 5), min_df: int = 2, alphas=(0.1, 1.0, 10.0, 100.0)):
    """Word and character n-gram TF-IDF (sublinear) into ``RidgeCV`` (its alpha by leave-one-out on the fold;
    ``alphas`` one number: that ridge strength, as a search samples it)."""
    features = FeatureUnion([
        ("words", TfidfVectorizer(ngram_range=_ngrams("word_ngrams", word_ngrams), min_df=min_df,
                                  sublinear_tf=True)),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=_ngrams("char_ngrams", char_ngrams), min_df=min_df,
                                  sublinear_tf=True)),
    ])
    return make_pipeline(features, RidgeCV(alphas=_alphas(alphas)))


def _ngrams(name: str, value) -> tuple[int, int]:
    """An n-gram range as two whole numbers ``[low, high]``, 1 <= low <= high: scikit-learn checks only that it is a
    tuple before fitting, and its order at the first fold."""
    pair = tuple(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else (value,)
    if len(pair) != 2 or not all(isinstance(n, Integral) and not isinstance(n, bool) for n in pair) \
            or not 1 <= pair[0] <= pair[1]:
        raise ValueError(f"{name}={_shown(value)}: must be [low,high], two whole numbers with 1 <= low <= high")
    return int(pair[0]), int(pair[1])


def _alphas(alphas) -> list[float]:
    """Ridge strengths, one or several, each a positive finite number (``RidgeCV`` accepts an empty list and checks
    the sign only at the first fold)."""
    try:
        values = [float(a) for a in np.atleast_1d(OmegaConf.to_container(alphas) if OmegaConf.is_list(alphas)
                                                  else alphas)]
    except (TypeError, ValueError):
        values = []
    if not values or not all(np.isfinite(a) and a > 0 for a in values):
        raise ValueError(f"alphas={_shown(alphas)}: must be one or more positive numbers, such as [0.1,1.0,10.0]")
    return values


def readability(regressor: str = "ridge", alphas=(0.1, 1.0, 10.0, 100.0)):
    """The readability features into a ridge (standardised) or a gradient-boosted regressor."""
    features, alphas = FunctionTransformer(readability_features), _alphas(alphas)  # checked even where unused
    if regressor == "ridge":
        return make_pipeline(features, StandardScaler(), RidgeCV(alphas=alphas))
    if regressor == "gbm":
        return make_pipeline(features, HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=0))
    raise ValueError(f"regressor={_shown(regressor)}: must be one of {', '.join(REGRESSORS)}")


# ---------------------------------------------------------------- checks before the first fold


def check_estimator(estimator_cfg, key: str = "model.estimator") -> BaseEstimator:
    """Build the pipeline of ``estimator_cfg`` and have scikit-learn validate every step's parameters, without
    fitting: a bad value is one ``ConfigError`` line naming its key before any folder is written, not a traceback
    in the first fold. Returns the unfitted pipeline."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        estimator = instantiate(estimator_cfg)
    except InstantiationException as err:  # the builder's own ValueError or TypeError, wrapped by Hydra
        raise ConfigError(_config_line(estimator_cfg, key, err.__cause__ or err)) from None
    for step in _steps(estimator):
        try:
            step._validate_params()  # scikit-learn's own constraints (what fit would check first)
        except (ValueError, TypeError) as err:  # InvalidParameterError is both
            raise ConfigError(_config_line(estimator_cfg, key, err, step)) from None
    return estimator


def check_texts(estimator_cfg, texts, source, folds=None, key: str = "model.estimator") -> None:
    """Texts that leave a vectorizer of the pipeline no vocabulary (emoji or punctuation only; no word in
    ``min_df`` rows), on all of ``texts`` or on the training rows of any fold of ``folds`` (each row's fold number,
    -1 for a holdout row): one ``DataError`` naming ``source``, the data file, before any folder is written."""
    estimator = check_estimator(estimator_cfg, key)
    texts = np.asarray(texts, dtype=object)
    labels, sets = [""], [np.ones(len(texts), dtype=bool)]
    if folds is not None:
        folds = np.asarray(folds)
        sets[0] = folds >= 0
        for k in np.unique(folds[folds >= 0]):
            labels.append(f" once fold {k}'s rows are held out")
            sets.append((folds != k) & (folds >= 0))
    sets = np.stack(sets, axis=1)
    for name, vectorizer in _vectorizers(estimator):
        kept, any_term = _keeps_a_term(vectorizer, texts, sets)
        if not any_term:
            raise DataError(f"{source}: its {len(texts)} texts leave the '{name}' TF-IDF step no vocabulary (no "
                            f"{_why_none(vectorizer)}); give texts with words, or use model=readability")
        if not kept.all():
            which = int(np.flatnonzero(~kept)[0])
            raise DataError(f"{source}: no {_unit(vectorizer)} n-gram is in enough of the {int(sets[:, which].sum())} "
                            f"training texts{labels[which]} for the '{name}' TF-IDF step ({key}.min_df="
                            f"{_shown(vectorizer.min_df)}); lower {key}.min_df, or give texts that share more words")


def _keeps_a_term(vectorizer: CountVectorizer, texts: np.ndarray, sets: np.ndarray) -> tuple[np.ndarray, bool]:
    """Whether the vocabulary ``vectorizer`` would fit on each set of rows (a column of ``sets``) keeps a term: one
    in as many of its rows as ``min_df`` asks and ``max_df`` allows (scikit-learn's pruning rule); and whether any
    text has a term at all.

    The texts are read in growing chunks with the vectorizer's own analyzer, stopping once every set keeps a term:
    on ordinary texts the first chunk settles it, where fitting the vectorizer would read every text."""
    if vectorizer.vocabulary is not None:  # a fixed vocabulary is never empty
        return np.ones(sets.shape[1], dtype=bool), True
    sizes = sets.sum(axis=0)
    low = np.maximum([v if isinstance(v := vectorizer.min_df, Integral) else v * n for n in sizes], 1)
    high = np.asarray([v if isinstance(v := vectorizer.max_df, Integral) else v * n for n in sizes])
    may_stop = bool(np.all(high >= sizes))  # max_df prunes nothing: a term kept stays kept as more rows are read
    analyzer, index = vectorizer.build_analyzer(), {}
    counts = np.zeros((0, sets.shape[1]), dtype=np.int64)  # rows of each set holding each term
    kept, start, size = np.zeros(sets.shape[1], dtype=bool), 0, 32
    while start < len(texts) and not (may_stop and kept.all()):
        rows = slice(start, start + size)
        start, size = start + size, 2 * size
        counter = CountVectorizer(analyzer=analyzer, binary=True)
        try:
            present = counter.fit_transform(texts[rows])
        except ValueError:  # no term in these texts
            continue
        columns = np.empty(len(counter.vocabulary_), dtype=np.int64)
        for term, column in counter.vocabulary_.items():
            columns[column] = index.setdefault(term, len(index))
        if len(index) > len(counts):
            counts = np.concatenate([counts, np.zeros((max(len(index) - len(counts), len(counts)), sets.shape[1]),
                                                      dtype=np.int64)])
        counts[columns] += present.T @ sets[rows].astype(np.int64)
        kept = np.any((counts >= low) & (counts <= high), axis=0)
    return kept, bool(index)


def _steps(estimator) -> list[BaseEstimator]:
    """The estimator and every estimator nested in it (a pipeline's steps, a union's transformers), once each."""
    found = {id(estimator): estimator}
    if isinstance(estimator, BaseEstimator):
        for value in estimator.get_params(deep=True).values():
            if isinstance(value, BaseEstimator):
                found.setdefault(id(value), value)
    return [s for s in found.values() if isinstance(s, BaseEstimator) and hasattr(s, "_parameter_constraints")]


def _vectorizers(estimator) -> list[tuple[str, CountVectorizer]]:
    """The steps that build a vocabulary (``TfidfVectorizer`` is a ``CountVectorizer``), by their short name."""
    if isinstance(estimator, CountVectorizer):
        return [("vectorizer", estimator)]
    params = estimator.get_params(deep=True) if isinstance(estimator, BaseEstimator) else {}
    return [(name.rsplit("__", 1)[-1], value) for name, value in params.items() if isinstance(value, CountVectorizer)]


def _unit(vectorizer: CountVectorizer) -> str:
    return "word" if vectorizer.analyzer == "word" else "character"


def _why_none(vectorizer: CountVectorizer) -> str:
    """What no text has, in the words of the default word pattern (two or more letters or digits)."""
    if vectorizer.analyzer == "word" and vectorizer.token_pattern == CountVectorizer().token_pattern:
        return "word of two or more letters or digits in any text: emoji, punctuation or single letters only?"
    return f"{_unit(vectorizer)} in any text"


_SKLEARN_PARAM = re.compile(r"^The '(?P<param>\w+)' parameter of (?P<owner>\w+) must be (?P<what>.*?)\.(?: Got .* "
                            r"instead\.)?$", re.S)
_OWN_PARAM = re.compile(r"^(?P<param>\w+)=")


def _config_line(estimator_cfg, key: str, err: BaseException, step=None) -> str:
    """``<key>.<param>=<value>: <what is allowed>``: the config key a builder's or scikit-learn's complaint is about
    (by name, else by value: ``alphas`` reach ``RidgeCV`` unrenamed), or the builder when no key matches."""
    message = " ".join(str(err).split())
    own = _OWN_PARAM.match(message)
    if own and own["param"] in estimator_cfg:  # the builder's own check: "<param>=<value>: ..."
        return f"{key}.{message}"
    found = _SKLEARN_PARAM.match(message)
    if found and step is not None:
        param, value = found["param"], step.get_params(deep=False).get(found["param"])
        what = f"{found['owner']}'s {param} must be {found['what']}"
        name = param if param in estimator_cfg else next(
            (k for k in estimator_cfg if k != "_target_" and _same(estimator_cfg.get(k), value)), None)
        if name is not None:
            return f"{key}.{name}={_shown(estimator_cfg.get(name))}: {what}"
        return f"{key} ({estimator_cfg.get('_target_')}): {what}, got {value!r}"
    return f"{key} ({estimator_cfg.get('_target_')}): {type(err).__name__}: {message}"


def _same(configured, value) -> bool:
    configured = OmegaConf.to_container(configured) if OmegaConf.is_config(configured) else configured
    if isinstance(configured, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(configured) == list(value)
    return configured == value and type(configured) is type(value)


def _shown(value) -> str:
    """A value as an override writes it: ``[1,2]``, ``svm``, ``null``."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    return "null" if value is None else str(value)
