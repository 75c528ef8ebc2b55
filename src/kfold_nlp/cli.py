"""The one command line: ``kfold-nlp <command> ...`` (or ``python -m kfold_nlp.cli``), each command a module's main.

``cv`` is the Hydra application (``python -m kfold_nlp`` runs it too); the others take plain arguments. Each command's
module is imported only when it runs, so ``kfold-nlp --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys

from .errors import Exit

# command -> (module, what it does); the module has main(argv) (cv: Hydra's main, reading sys.argv)
COMMANDS = {
    "cv": ("kfold_nlp.__main__", "a K-fold CV run: kfold-nlp cv experiment=rdrop data=commonlit cv.n_splits=3"),
    "predict": ("kfold_nlp.predict", "bagged predictions of a run's fold models: kfold-nlp predict RUN [INPUT]"),
    "pretrain": ("kfold_nlp.pretrain", "MLM pretraining on the task's texts, no holdout text: kfold-nlp pretrain "
                                      "data=commonlit cv.holdout=0.2 --steps 500"),
    "refit": ("kfold_nlp.cv.refit", "one more model on every training row of a run: kfold-nlp refit RUN"),
    "export": ("kfold_nlp.bundle.export", "a run as an offline inference bundle: kfold-nlp export RUN [--out DIR]"),
    "collect": ("kfold_nlp.cv.collect", "rebuild a run's OOF, submission and metrics files: kfold-nlp collect RUN"),
    "compare": ("kfold_nlp.analysis.compare", "the compare table of a folder of runs: kfold-nlp compare FOLDER"),
    "sweep": ("kfold_nlp.analysis.sweep", "the sweep table of a multirun folder: kfold-nlp sweep FOLDER"),
    "hpo": ("kfold_nlp.search.run", "an Optuna search of the CV RMSE, resumable and pruned: kfold-nlp hpo rdrop ..."),
    "ensemble": ("kfold_nlp.analysis.ensemble", "blend runs on the same folds: kfold-nlp ensemble RUN RUN ..."),
    "report": ("kfold_nlp.analysis.report", "the OOF analysis notebook as HTML: kfold-nlp report RUN ..."),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "usage: kfold-nlp <command> [arguments]\n\ncommands:\n" + "\n".join(lines) + (
        "\n\n`kfold-nlp <command> --help` tells more about one of them.")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else Exit.BAD_INPUT)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: {command}: not a command; one of {', '.join(COMMANDS)} (kfold-nlp --help)", file=sys.stderr)
        sys.exit(Exit.BAD_INPUT)
    module = importlib.import_module(COMMANDS[command][0])
    if command == "cv":  # Hydra reads the command line itself
        sys.argv = [f"{sys.argv[0]} cv", *rest]
        module.run()
    else:
        sys.argv = [f"kfold-nlp {command}", *rest]  # argparse's usage line names the subcommand
        module.main(rest)


if __name__ == "__main__":
    main()
