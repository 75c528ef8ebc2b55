"""A small, deterministic, learnable CommonLit-like data set, so the pipeline runs offline."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import write_csv, write_json

# Short, frequent words keep easy passages easy; the RARE lists are long, Latinate
# words whose share (and length) makes a passage measurably harder.
_DET = "the a his her their this that one every my our".split()


_PRON = "he she they we it".split()


_PREP = "in on at by near under over with into from behind past".split()


_CONNECT = [", and", ", but", ", so", " because", " while", " when", " until", ", although", " as"]


_OPENERS = ["Then,", "Later,", "Soon", "One day,", "At night,", "In the morning,", "After that,", "Still,"]


_COMMON = {
    "noun": (
        "cat dog house tree boy girl man woman ball car hat bed sun moon fish bird cake book box "
        "door road hill farm shop park pond boat bag cup pen lamp fox pig cow hen duck frog bus toy "
        "rug map kite bell nest sock coat ring shoe milk bread egg rain snow wind sea star king "
        "queen friend mom dad baby room yard garden river apple"
    ).split(),
    "adj": (
        "big red small old new hot cold sad glad good bad tall short fast slow wet dry soft hard "
        "happy kind little long warm dark blue green brown loud quiet nice pink thin clean"
    ).split(),
    "vt": (
        "saw found took made held liked kept had left met read built fed hid got sold lost loved "
        "wanted pushed pulled opened fixed washed packed"
    ).split(),
    "vi": ("ran sat slept waited smiled walked jumped stayed laughed sang cried played swam hopped rested danced went "
           "came stood fell").split(),
    "adv": "fast soon then now here there still well again too today slowly".split(),
}


_RARE = {
    "noun": (
        "phenomenon hypothesis paradigm equilibrium jurisprudence metamorphosis archipelago "
        "bureaucracy catastrophe philanthropist consciousness predicament ramification "
        "infrastructure manuscript constellation apparatus circumference dichotomy enterprise "
        "expedition hierarchy ideology juxtaposition legislation mechanism nomenclature "
        "paraphernalia precipitation prerogative reconnaissance sovereignty symbiosis testimony "
        "vicissitude chronology perspective proprietor correspondence aristocracy"
    ).split(),
    "adj": (
        "meticulous ubiquitous contemporaneous ambiguous benevolent cantankerous diligent ephemeral "
        "fastidious gregarious idiosyncratic impervious incongruous indefatigable magnanimous "
        "melancholic nonchalant obstreperous ostentatious perfunctory quintessential rudimentary "
        "superfluous tenacious unprecedented voracious inexorable surreptitious circumspect "
        "conspicuous extraordinary hypothetical"
    ).split(),
    "vt": (
        "scrutinized contemplated articulated synthesized ameliorated corroborated disseminated "
        "elucidated exacerbated facilitated interrogated juxtaposed promulgated repudiated "
        "substantiated circumvented appropriated commemorated reconstructed"
    ).split(),
    "vi": (
        "deliberated persevered proliferated acquiesced oscillated convalesced reminisced "
        "procrastinated capitulated fluctuated hesitated deteriorated coalesced predominated"
    ).split(),
    "adv": (
        "meticulously ostensibly inexorably surreptitiously ubiquitously conspicuously "
        "unequivocally predominantly simultaneously consequently inadvertently"
    ).split(),
}


RARE_WORDS = frozenset(w for words in _RARE.values() for w in words)


SYNTHETIC_VERSION = 2  # bump when the generator changes, so cached files are regenerated


_WORD_RE = re.compile(r"[A-Za-z']+")


_SENT_RE = re.compile(r"[^.!?]*[A-Za-z][^.!?]*[.!?]*")


def readability_features(text: str) -> dict[str, float]:
    """Surface statistics the synthetic target is built from (and a baseline can learn).

    Keys: n_words, n_sentences, words_per_sentence, chars_per_word, rare_word_frac
    (share of words from the embedded rare-word list).
    """
    words = _WORD_RE.findall(text)
    n_words = len(words)
    n_sent = len(_SENT_RE.findall(text))
    return {
        "n_words": float(n_words),
        "n_sentences": float(n_sent),
        "words_per_sentence": n_words / max(n_sent, 1),
        "chars_per_word": sum(map(len, words)) / max(n_words, 1),
        "rare_word_frac": sum(w.lower() in RARE_WORDS for w in words) / max(n_words, 1),
    }


@functools.cache
def _can_fill(m: int, obj: bool, adv: bool) -> bool:
    """Whether a clause tail of exactly m words can be built from the remaining piece kinds."""
    if m == 0:
        return True
    return any(
        size <= m and _can_fill(m - size, False, adv and kind != "adv")
        for kind, size in _tail_pieces(obj, adv)
    )


def _tail_pieces(obj: bool, adv: bool) -> list[tuple[str, int]]:
    pieces = [("pp", 3), ("pp", 4)]
    if obj:
        pieces += [("obj", 2), ("obj", 3)]
    if adv:
        pieces.append(("adv", 1))
    return pieces


class _Writer:
    """Emits exact-length sentences; p_rare sets how often a content slot takes a rare word."""

    def __init__(self, rng: random.Random, p_rare: float) -> None:
        self.rng, self.p_rare = rng, p_rare

    def word(self, pos: str) -> str:
        pool = _RARE if self.rng.random() < self.p_rare else _COMMON
        return self.rng.choice(pool[pos])

    def np_(self, n: int) -> list[str]:
        """Noun phrase of 2 (det noun) or 3 (det adj noun) words."""
        words = [self.rng.choice(_DET)] + [self.word("adj") for _ in range(n - 2)] + [self.word("noun")]
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return words

    def clause(self, k: int) -> list[str]:
        """Exactly k >= 2 words: subject, verb, then objects/prepositional phrases/adverb."""
        subjects = [s for s in (1, 2, 3) if k - s - 1 >= 0 and _can_fill(k - s - 1, True, True)]
        s = self.rng.choice(subjects)
        subject = [self.rng.choice(_PRON)] if s == 1 else self.np_(s)
        m, obj, adv, tail, transitive = k - s - 1, True, True, [], False
        while m:
            kind, size = self.rng.choice(
                [(kd, sz) for kd, sz in _tail_pieces(obj, adv)
                 if sz <= m and _can_fill(m - sz, False, adv and kd != "adv")]
            )
            if kind == "obj":
                tail += self.np_(size)
                transitive = True
            elif kind == "pp":
                tail += [self.rng.choice(_PREP)] + self.np_(size - 1)
            else:
                tail.append(self.word("adv"))
                adv = False
            obj, m = False, m - size
        return subject + [self.word("vt" if transitive else "vi")] + tail

    def sentence(self, n: int) -> str:
        """A sentence of exactly n >= 2 words, clauses joined by connectives."""
        parts: list[str] = []
        if n >= 8 and self.rng.random() < 0.25:
            opener = self.rng.choice(_OPENERS)
            parts.append(opener)
            n -= len(opener.split())
        remaining, first = n, True
        while remaining > 0:
            if not first:
                parts[-1] += self.rng.choice(_CONNECT)  # connective word counts as one
                remaining -= 1
            k = self.rng.randint(4, 10)
            if k > remaining or remaining - k < 3:  # leftover too short for connective + clause
                k = remaining
            parts.append(" ".join(self.clause(k)))
            remaining -= k
            first = False
        text = " ".join(parts)
        return text[0].upper() + text[1:] + "."


def _passage(rng: random.Random, difficulty: float) -> str:
    """100-150 word passage (shorter than CommonLit's 135-205, so the default run fits minutes on a CPU); harder =
    longer sentences and more rare (long) words."""
    writer = _Writer(rng, p_rare=float(np.clip(0.22 + 0.15 * difficulty, 0.02, 0.65)))
    mean_len = float(np.clip(15.0 + 6.0 * difficulty, 6.0, 30.0))
    total = rng.randint(100, 150)
    sentences = []
    while total > 0:
        n = int(np.clip(round(rng.gauss(mean_len, 0.3 * mean_len)), 3, 45))
        n = min(n, total)
        if total - n < 3:  # never leave a 1-2 word tail sentence
            n = total
        sentences.append(writer.sentence(n))
        total -= n
    return " ".join(sentences)


def make_synthetic(
    out_dir: str | os.PathLike, *, n_train: int = 400, n_test: int = 16, seed: int = 42
) -> tuple[Path, Path]:
    """Write a deterministic CommonLit-like `train.csv` and `test.csv`; return their paths.

    Each passage gets a latent difficulty d ~ N(0, 1) that drives sentence length and
    rare-word share; the target is then a linear function of the *measured*
    `readability_features` plus noise (a perfect feature model scores RMSE ~0.3),
    rescaled to train mean -1 / sd 1 (harder = lower, as in CommonLit). The parameters are
    recorded in `params.json` beside the files: files made with the same ones are
    returned untouched (cheap, no rewrite races); other parameters regenerate them.
    """
    if n_train < 2 or n_test < 0:
        raise ValueError(f"need n_train >= 2 and n_test >= 0, got n_train={n_train}, n_test={n_test}")
    out_dir = Path(out_dir)
    train_path, test_path, params_path = out_dir / "train.csv", out_dir / "test.csv", out_dir / "params.json"
    params = {"n_train": n_train, "n_test": n_test, "seed": seed, "version": SYNTHETIC_VERSION}
    if train_path.is_file() and test_path.is_file() and params_path.is_file():
        with contextlib.suppress(ValueError):
            if json.loads(params_path.read_text()) == params:
                return train_path, test_path
    out_dir.mkdir(parents=True, exist_ok=True)

    n = n_train + n_test
    ss_ids, ss_diff, ss_text, ss_noise = np.random.SeedSequence(seed).spawn(4)
    ids = [f"{x:09x}" for x in np.random.default_rng(ss_ids).choice(16**9, size=n, replace=False)]
    difficulty = np.random.default_rng(ss_diff).standard_normal(n)
    text_rng = random.Random(int(ss_text.generate_state(1)[0]))
    texts = [_passage(text_rng, d) for d in difficulty]

    feats = pd.DataFrame([readability_features(t) for t in texts[:n_train]])
    signal = -(
        0.08 * feats["words_per_sentence"] + 0.6 * feats["chars_per_word"] + 2.5 * feats["rare_word_frac"]
    ).to_numpy()
    # Noise sd chosen so that, after rescaling to sd 1, the unexplained part is ~0.3.
    noise_rng = np.random.default_rng(ss_noise)
    noisy = signal + noise_rng.normal(0.0, 0.3 / np.sqrt(1 - 0.3**2) * signal.std(), n_train)
    target = -1.0 + (noisy - noisy.mean()) / noisy.std()
    se = np.clip(0.465 + 0.025 * (target + 1.0) ** 2 + noise_rng.normal(0.0, 0.01, n_train), 0.42, 0.75)

    train = pd.DataFrame(
        {"id": ids[:n_train], "excerpt": texts[:n_train], "target": target.round(6), "standard_error": se.round(6)}
    )
    test = pd.DataFrame({"id": ids[n_train:], "excerpt": texts[n_train:]})
    params_path.unlink(missing_ok=True)  # a crash between the writes below leaves files that are regenerated
    write_csv(train, train_path)
    write_csv(test, test_path)
    write_json(params, params_path)
    return train_path, test_path
