"""``python -m kfold_nlp [overrides]``: one CV experiment, or a sweep with ``-m``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .config.overrides import composed, one_line_errors
from .config.paths import CONFIG_DIR


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One run, or one job of a sweep or search: ``cv.app.train`` runs it and ends it on an error with one line and
    its exit status."""
    composed()  # a bad command line was refused in one line; from here on, the run reports its own errors
    from .cv.app import train  # after Hydra has parsed the command line: --help and --cfg answer at once

    return train(cfg)


def run() -> None:
    """The command (``python -m kfold_nlp``, ``kfold-nlp cv``): Hydra's refusals of the command line as one line."""
    with one_line_errors():
        main()


if __name__ == "__main__":
    run()
