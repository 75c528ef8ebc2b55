"""Once-tokenized rows as a dataset, and their loaders: length-grouped training, sorted evaluation."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler


class EncodedRows(Dataset):
    """Rows of a once-tokenized table, picked by position; ``index`` is the position within this subset.

    ``targets`` and each array of ``columns`` (other per-row labels a task reads, e.g. ``standard_error``) are
    indexed like ``encodings``, by position in the table.
    """

    def __init__(self, encodings: dict, rows: np.ndarray, targets: np.ndarray | None = None,
                 columns: dict[str, np.ndarray] | None = None):
        self.encodings, self.rows, self.targets = encodings, np.asarray(rows), targets
        self.columns = dict(columns or {})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        item = {key: values[row] for key, values in self.encodings.items()}
        item["index"] = i
        if self.targets is not None:
            item["target"] = float(self.targets[row])
        for key, values in self.columns.items():
            item[key] = float(values[row])
        return item

    @property
    def lengths(self) -> list[int]:
        return [len(self.encodings["input_ids"][int(r)]) for r in self.rows]


# Batches are padded to a multiple of this many tokens. Each distinct (batch, length) shape makes oneDNN (CPU) build
# and cache kernels of its own, and makes a compiled graph (``trainer.compile``) specialise again: with every length
# distinct, a CPU process grew by about one model's size per fold (docs/results.md, "Folds that do not grow"). 16
# bounds the shapes at no measured cost in speed; on a GPU it is also a multiple of the tensor cores' 8.
PAD_MULTIPLE = 16


def make_loader(dataset: EncodedRows, tokenizer, batch_size: int, train: bool, seed: int = 0, num_workers: int = 0):
    """Dynamic padding; training batches are length-grouped (shuffled megabatches), evaluation sorted by length.

    Every loader has a generator of its own: starting an epoch draws the loader's base seed from it, where a loader
    without one would draw from torch's global stream, so an evaluation (or skipping one) would change the
    training's dropout masks after it.
    """
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=PAD_MULTIPLE)
    if train:
        sampler = LengthGroupedSampler(batch_size, lengths=dataset.lengths,
                                       generator=torch.Generator().manual_seed(seed))
    else:
        sampler = np.argsort(dataset.lengths, kind="stable").tolist()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))
