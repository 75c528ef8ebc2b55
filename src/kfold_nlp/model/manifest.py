"""A backbone folder's pretraining manifest (written by ``kfold-nlp pretrain``): which texts the backbone saw, so
that a CV run refuses one pretrained on its holdout rows and its fingerprint tells two pretrainings apart."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import DataError
from ..files import read_json

MANIFEST = "pretrain_manifest.json"


def text_digest(text: str) -> str:
    """A text's identity, whitespace-insensitive: what a manifest records and a holdout is compared with."""
    return hashlib.sha256(" ".join(str(text).split()).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(backbone) -> dict | None:
    """The manifest of a backbone folder made by ``pretrain``; None for any other backbone (a hub name too)."""
    path = Path(str(backbone)) / MANIFEST
    return read_json(path) if path.is_file() else None


def manifest_digest(backbone) -> str | None:
    path = Path(str(backbone)) / MANIFEST
    return file_digest(path)[:16] if path.is_file() else None


def check_no_leak(backbone, held_ids, held_texts) -> None:
    """Refuse (``DataError``, one line) a backbone whose pretraining saw the text of one of these holdout rows."""
    manifest = read_manifest(backbone)
    if manifest is None or not len(held_texts):
        return
    seen = set(manifest["texts"])
    leaked = [i for i, text in zip(held_ids, held_texts) if text_digest(text) in seen]
    if leaked:
        raise DataError(f"model.backbone={backbone}: pretrained on the texts of {len(leaked)} of this run's "
                        f"{len(held_texts)} holdout rows (first: id {leaked[0]}); pretrain it with this run's "
                        f"cv.holdout, or use another backbone")
