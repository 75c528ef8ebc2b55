"""The readability features of ``model=readability``: the one definition, standard library and numpy only.

A fitted pipeline pickles the feature function by its module's name, so this file is what every classical bundle
carries (as ``kfold_features.py``, the export re-pointing the pipelines at it): the bundle then unpickles with
scikit-learn and joblib alone, without this package. The features are the classic formulas' ingredients (Flesch
reading ease, Flesch-Kincaid grade, SMOG-like polysyllable share, word and sentence lengths) with a vowel-group
syllable count: textstat computes the same formulas but its releases need ``pkg_resources`` (0.7.3) or NLTK data
from the internet (0.7.13).
"""

from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"[A-Za-z']+")
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_VOWELS = re.compile(r"[aeiouy]+")


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
