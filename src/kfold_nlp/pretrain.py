"""Domain pretraining (``kfold-nlp pretrain``, ``make pretrain``): continued masked-language-model training of a
backbone on the task's own texts, never on a held-out row's, into a folder that ``model.backbone=`` takes.

``kfold-nlp pretrain [--steps N] [--batch-size B] [--lr LR] [--mlm-probability P] [--whole-word] [--extra FILE ...]
[--out DIR] [overrides ...]``; the overrides are the CV run's own (``data=commonlit cv.holdout=0.2 model=minilm``):
the pretraining reads the same train file, holds out the same rows (``cv.holdout``, ``cv.seed``, ``cv.bins``) and
trains the same backbone the run would. What it reads: the train file's texts but the holdout's, the test file's
and every ``--extra`` file's (a CSV with the data's text column, or plain text, one passage per blank-line-separated
paragraph), each text dropped that equals a holdout row's. Validation-fold texts are seen, unlabeled: the accepted
practice (the CV's folds all come from the rows pretrained on alike).

The folder it writes holds the backbone with its MLM head, its tokenizer and ``pretrain_manifest.json`` (written
last: its presence marks the pretraining finished): the source backbone, each file's digest and which rows were
used, a digest of every text seen, the settings and the loss curve. A CV run with a holdout refuses a backbone whose
manifest shows one of its holdout texts (``check_no_leak``), and records the manifest's digest in its fingerprint, so
resume, collect and ensembles tell two pretrainings apart. A killed pretraining continues from its snapshot
(``train/snapshot.py``, as a fold's) when started again with the same ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, DataError, OneLineError, refuse
from .files import write_json
from .model.manifest import MANIFEST, file_digest, text_digest

log = logging.getLogger(__name__)

@dataclass
class Corpus:
    """The texts a pretraining reads and where each came from (the manifest's ``data``)."""

    texts: list[str] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)

    def add(self, path: Path, texts, role: str, held: set[str], **extra) -> None:
        kept = [t for t in texts if str(t).strip() and text_digest(t) not in held]
        self.texts += kept
        self.sources.append({"role": role, "file": str(path), "sha256": file_digest(path), "rows": len(texts),
                             "used": len(kept), **extra})


def read_extra(path: Path, text_col: str) -> list[str]:
    """An extra file's passages: a CSV's ``text_col``, else blank-line-separated paragraphs of plain text."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (--extra)")
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if text_col not in frame:
            raise DataError(f"{path}: no {text_col!r} column (data.text_col); columns: {', '.join(frame.columns)}")
        return frame[text_col].tolist()
    return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def corpus(cfg, extra: list[Path]) -> Corpus:
    """The train file's texts but the holdout's, the test file's and the extra files', none equal to a holdout
    text; the holdout is the CV run's (``data.folds.assign``)."""
    from .data.folds import HOLDOUT, assign
    from .data.tables import load_data

    train, test = load_data(cfg.data, cfg.cv.n_splits)
    folds = assign(train["id"], train["target"], cfg.cv, cfg.data.id_col)
    held = {text_digest(t) for t in train["text"][folds == HOLDOUT]}
    out = Corpus()
    out.add(Path(cfg.data.path), train["text"].tolist(), "train", held, held_out=int((folds == HOLDOUT).sum()))
    if test is not None:
        from .data.tables import test_file

        out.add(test_file(cfg.data), test["text"].tolist(), "test", held)
    for path in extra:
        out.add(path, read_extra(path, cfg.data.text_col), "extra", held)
    if not out.texts:
        raise DataError(f"{cfg.data.path}: no text left to pretrain on")
    return out


def settings(args, cfg) -> dict:
    """What fixes the pretraining: a continued start must have the same."""
    return {"source_backbone": str(cfg.model.backbone), "pretrained": bool(cfg.model.pretrained),
            "config_overrides": dict(cfg.model.get("config_overrides") or {}), "max_length": int(cfg.model.max_length),
            "holdout": cfg.cv.get("holdout"), "cv_seed": int(cfg.cv.seed), "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
            "mlm_probability": args.mlm_probability, "whole_word": args.whole_word, "seed": int(cfg.seed)}


def masked_lm(cfg):
    """The backbone with an MLM head: pretrained weights (``model.pretrained``) or a fresh one from its config."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    overrides = dict(cfg.model.get("config_overrides") or {})
    if cfg.model.pretrained:
        model, info = AutoModelForMaskedLM.from_pretrained(cfg.model.backbone, output_loading_info=True, **overrides)
        if info["missing_keys"]:  # a sentence-embedding checkpoint (all-MiniLM, all-mpnet) ships the encoder only
            log.warning("pretrain: %s has no MLM head (%d weights start random, e.g. %s): the first steps train the "
                        "head through the encoder; measured on CommonLit this did not help (docs/results.md)",
                        cfg.model.backbone, len(info["missing_keys"]), sorted(info["missing_keys"])[0])
        return model.float()
    return AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(cfg.model.backbone, **overrides))


def batch_rows(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Step ``step``'s rows: epochs of a seeded permutation, so a continued start draws the same batches."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return order[i * batch_size:(i + 1) * batch_size].tolist()


def pretrain(cfg, args, collate_hook=None) -> Path:
    """Train and write ``args.out``; ``collate_hook(rows)`` (tests) sees the rows given to the collator."""
    from accelerate.utils import set_seed
    from transformers import DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    from .model.regressor import load_tokenizer, tokenize
    from .train import snapshot
    from .train.device import make_accelerator

    out = Path(args.out)
    if (out / MANIFEST).is_file():
        raise DataError(f"{out}: holds a finished pretraining ({MANIFEST}); give another --out or remove it")
    began = time.perf_counter()
    texts = corpus(cfg, [Path(p) for p in args.extra])
    wanted = settings(args, cfg)
    saved = snapshot.load(out) if out.is_dir() else None
    if saved is not None and saved.state["settings"] != wanted:
        changed = sorted(k for k in wanted if saved.state["settings"].get(k) != wanted[k])
        raise DataError(f"{out}: a pretraining with other settings was started there ({', '.join(changed)}); "
                        f"give another --out or remove it")
    accelerator = make_accelerator(cfg.trainer)
    set_seed(int(cfg.seed))
    tokenizer = load_tokenizer(cfg.model)
    if args.whole_word:  # the collator finds word starts from each token's character offsets
        enc = dict(tokenizer(texts.texts, truncation=True, max_length=cfg.model.max_length,
                             return_offsets_mapping=True))
        rows = [{"input_ids": ids, "offset_mapping": offsets}
                for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"])]
    else:
        enc = tokenize(tokenizer, texts.texts, cfg.model.max_length)
        rows = [{"input_ids": ids} for ids in enc["input_ids"]]
    collator = DataCollatorForLanguageModeling(  # whole words are always replaced by the mask token (transformers')
        tokenizer, mlm_probability=args.mlm_probability, whole_word_mask=args.whole_word,
        mask_replace_prob=1.0 if args.whole_word else 0.8, random_replace_prob=0.0 if args.whole_word else 0.1,
        pad_to_multiple_of=16)
    model = masked_lm(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(args.warmup * args.steps), args.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    step, curve, running = 0, [], []
    if saved is not None:
        accelerator.unwrap_model(model).load_state_dict(saved.model)
        optimizer.load_state_dict(saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
        snapshot.set_rng_state(saved.rng["tensors"], saved.rng["plain"])
        step, curve = saved.state["step"], saved.state["curve"]
        log.info("pretrain: continued from its snapshot at step %d", step)
    log_every = max(1, args.steps // 50)
    model.train()
    with tqdm(total=args.steps, initial=step, desc="pretrain", dynamic_ncols=True) as bar:
        while step < args.steps:
            chosen = [rows[i] for i in batch_rows(step, len(rows), args.batch_size, int(cfg.seed))]
            if collate_hook is not None:
                collate_hook(chosen)
            batch = {k: v.to(accelerator.device) for k, v in collator(chosen).items()}
            with accelerator.autocast():
                loss = model(**batch).loss
            if not math.isfinite(loss.item()):
                raise OneLineError(f"pretrain diverged at step {step + 1} (loss {loss.item()}); lower --lr")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            running.append(loss.item())
            bar.update(1)
            if step % log_every == 0 or step == args.steps:
                curve.append([step, sum(running) / len(running)])
                bar.set_postfix(loss=f"{curve[-1][1]:.3f}")
                running = []
            if step % args.snapshot_every == 0 or step == args.steps:
                # copies: the MLM head's decoder shares the embeddings' tensor, which safetensors will not save twice
                weights = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
                snapshot.save(out, model_state=weights, optimizer=optimizer, scheduler=scheduler, selections={},
                              state={"step": step, "curve": curve, "settings": wanted})
    accelerator.unwrap_model(model).save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json(wanted | {"data": texts.sources, "texts": sorted({text_digest(t) for t in texts.texts}),
                         "loss_curve": curve, "wall_time_s": round(time.perf_counter() - began, 1)},
               out / MANIFEST)  # last: a finished pretraining
    snapshot.remove(out)
    return out


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="kfold-nlp pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps (default 500)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=float, default=0.06, help="share of the steps warming up (default 0.06)")
    parser.add_argument("--mlm-probability", type=float, default=0.15)
    parser.add_argument("--whole-word", action="store_true", help="mask whole words, not word pieces")
    parser.add_argument("--extra", nargs="*", default=[], help="more unlabeled text files (CSV or plain text)")
    parser.add_argument("--snapshot-every", type=int, default=100, help="steps between snapshots (and at the end)")
    parser.add_argument("--out", default=None, help="default: outputs/pretrain/<data.name>-<backbone name>")
    args, overrides = parser.parse_known_args(argv)
    for name, low in (("steps", 1), ("batch_size", 1), ("snapshot_every", 1)):
        if getattr(args, name) < low:
            parser.exit(2, f"error: --{name.replace('_', '-')}={getattr(args, name)}: must be >= {low}\n")
    if not 0 < args.mlm_probability < 1 or not 0 <= args.warmup < 1 or not args.lr > 0:
        parser.exit(2, "error: --mlm-probability must be in (0, 1), --warmup in [0, 1), --lr > 0\n")
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.exit(2, f"error: {bad[0]}: not an option of kfold-nlp pretrain (kfold-nlp pretrain --help)\n")
    return args, overrides


def compose_config(overrides: list[str]):
    """The CV run's config under these overrides, checked as a run's is (one line for the first bad key)."""
    from .cv.app import check_config, composed_config
    from .train.precision import resolve_precision

    cfg = composed_config(overrides, check=False)
    if cfg.model.get("kind") not in (None, "transformer"):
        raise ConfigError(f"model.kind={cfg.model.kind}: pretraining needs a transformer backbone")
    cfg.trainer.precision, _ = resolve_precision(cfg.trainer.precision)
    check_config(cfg, check_files=False)
    return cfg


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = compose_config(overrides)
        if args.out is None:
            args.out = str(Path("outputs") / "pretrain" / f"{cfg.data.name}-{Path(str(cfg.model.backbone)).name}")
        out = pretrain(cfg, args)
    except Exception as err:  # noqa: BLE001  (errors.report maps each to its line and exit status)
        refuse(err)
    log.info("pretrain: wrote %s; use it with model.backbone=%s model.pretrained=true model.config_overrides={}",
             out, out)


if __name__ == "__main__":
    main()
