"""Run by test_distributed under torchrun (or in the test process): the real fold model, a few optimizer steps on
fixed batches.

``python tests/ddp_steps.py OUT BATCH_SIZE REGULARIZER[,REGULARIZER...]``: for each regularizer in turn (each seeded
afresh, as a fold is), rank 0 writes OUT/<regularizer>.pt with the final parameters, each rank's first dropout mask
after the fold's seeding, and each rank's Mixout targets (if any).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

import kfold_nlp  # noqa: F401  (the ${minilm_path:} resolver)
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv.fold import build_fold_model
from kfold_nlp.data.loading import EncodedRows
from kfold_nlp.model.optim import build_optimizer
from kfold_nlp.model.regressor import load_tokenizer, tokenize
from kfold_nlp.model.regularizers.mixout import MixLinear
from kfold_nlp.train.device import make_accelerator
from kfold_nlp.train.loop import optimizer_step


def steps(out: str, batch_size: int, regularizer: str, accelerator=None):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", ["model=tiny", "name=ddp", f"regularizer={regularizer}", "trainer.precision=fp32",
                                 "optimizer=sgd", "optimizer.lr=0.5", "trainer.max_grad_norm=null"])
    accelerator = accelerator or make_accelerator(cfg.trainer)
    task, model, reg = build_fold_model(cfg, fold=1, rank=accelerator.process_index)
    mask = torch.nn.functional.dropout(torch.ones(256), 0.5)  # what this rank's next dropout draws
    targets = torch.cat([m.target.flatten() for m in model.modules() if isinstance(m, MixLinear)] or [torch.zeros(1)])

    words = "the cat sat on a mat while ubiquitous phenomena proliferated inexorably near the river".split()
    texts = [" ".join(words[(i * 7 + k) % len(words)] for k in range(4 + i % 9)) for i in range(32)]
    tokenizer = load_tokenizer(cfg.model)
    rows = EncodedRows(tokenize(tokenizer, texts, 64), np.arange(32), np.linspace(-2, 1, 32))
    loader = DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=DataCollatorWithPadding(tokenizer))
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(cfg.optimizer, model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    for batch in loader:
        optimizer_step(model, reg, [batch], optimizer, accelerator, task)
    masks, all_targets = accelerator.gather(mask[None]), accelerator.gather(targets[None])
    if accelerator.is_main_process:
        params = {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        torch.save({"params": params, "start": start, "masks": masks, "targets": all_targets,
                    "processes": accelerator.num_processes},
                   f"{out}/{regularizer}.pt")
    return accelerator


def main(argv: list[str]) -> None:
    out, batch_size, regularizers = argv[0], int(argv[1]), argv[2].split(",")
    accelerator = None
    for regularizer in regularizers:
        accelerator = steps(out, batch_size, regularizer, accelerator)


if __name__ == "__main__":
    main(sys.argv[1:])
