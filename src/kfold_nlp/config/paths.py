"""Where the package finds its configs and notebook: inside the package when installed from a wheel (pyproject maps
``conf/`` and ``notebooks/`` into it), else beside ``src/`` in a checkout or an editable install."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # kfold_nlp/


def resource(name: str) -> Path:
    installed = PACKAGE / name
    return installed if installed.is_dir() else PACKAGE.parents[1] / name


CONFIG_DIR = str(resource("conf"))  # a string: what Hydra's config_path and initialize_config_dir take


NOTEBOOK = resource("notebooks") / "oof_analysis.ipynb"


def offline_for_local(*paths) -> None:
    """A backbone or tokenizer that is a local folder needs no model hub: keep transformers from trying one.

    Decided by what the path is, not how it is spelled; an explicit ``HF_HUB_OFFLINE`` wins. Call it before
    transformers is imported (huggingface_hub reads the variable once).
    """
    if any(p and Path(str(p)).is_dir() for p in paths):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
