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

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

KIND = "sklearn"  # model.kind of a classical preset
FILE = "model.joblib"  # a classical fold model, beside where a transformer's model.safetensors would be

_WORD = re.compile(r"[A-Za-z']+")
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_VOWELS = re.compile(r"[aeiouy]+")


def is_classical(model_cfg) -> bool:
    return model_cfg.get("kind") == KIND


def syllables(word: str) -> int:
    """Vowel groups, less a silent final e: the usual heuristic, within one syllable of a dictionary mostly."""
    word = word.lower()
    count = len(_VOWELS.findall(word)) - (word.endswith("e") and not word.endswith(("le", "ee")))
    return max(1, count)


def readability_features(texts) -> np.ndarray:
    """One row per text: words, sentences, words per sentence, characters and syllables per word, the share of
    words of 3+ syllables and of 7+ letters, Flesch reading ease, Flesch-Kincaid grade."""
    rows = []
    for text in texts:
        words = _WORD.findall(str(text))
        n_words, n_sent = max(len(words), 1), max(len([s for s in _SENTENCE.findall(str(text)) if s.strip()]), 1)
        syl = [syllables(w) for w in words] or [1]
        wps, spw = n_words / n_sent, sum(syl) / n_words
        rows.append([n_words, n_sent, wps, sum(map(len, words)) / n_words, spw,
                     sum(s >= 3 for s in syl) / n_words, sum(len(w) >= 7 for w in words) / n_words,
                     206.835 - 1.015 * wps - 84.6 * spw, 0.39 * wps + 11.8 * spw - 15.59])
    return np.asarray(rows, dtype=float)


def tfidf_ridge(word_ngrams=(1, 2), char_ngrams=(2, 5), min_df: int = 2, alphas=(0.1, 1.0, 10.0, 100.0)):
    """Word and character n-gram TF-IDF (sublinear) into ``RidgeCV`` (its alpha by leave-one-out on the fold;
    ``alphas`` one number: that ridge strength, as a search samples it)."""
    features = FeatureUnion([
        ("words", TfidfVectorizer(ngram_range=tuple(word_ngrams), min_df=min_df, sublinear_tf=True)),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(char_ngrams), min_df=min_df,
                                  sublinear_tf=True)),
    ])
    return make_pipeline(features, RidgeCV(alphas=_alphas(alphas)))


def _alphas(alphas) -> list[float]:
    return [float(a) for a in np.atleast_1d(alphas)]


def readability(regressor: str = "ridge", alphas=(0.1, 1.0, 10.0, 100.0)):
    """The readability features into a ridge (standardised) or a gradient-boosted regressor."""
    features = FunctionTransformer(readability_features)
    if regressor == "ridge":
        return make_pipeline(features, StandardScaler(), RidgeCV(alphas=_alphas(alphas)))
    if regressor == "gbm":
        return make_pipeline(features, HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=0))
    raise ValueError(f"model.estimator.regressor must be ridge or gbm, got {regressor!r}")
