"""The race: this project's fold trainer against Hugging Face ``Trainer`` and a minimal hand-written loop.

``python -m benchmarks.race [--rows 224 --rounds 2 --precision fp32 bf16 --model minilm --regularizer baseline
--data synthetic|commonlit|<csv>]`` from the repository's root (``make race [DATA=...]``; by default the precisions
the machine runs natively, ``native_precisions``, on the embedded set). All train the same model, with the same
regularizer (default: the model's dropout as shipped), on the same rows, batch size, max length and precision:

- ``project``: ``trainer.train_fold`` with the project's defaults (length-grouped dynamic padding, exact
  accumulation, clipping, best-state keeping, dropout masks from ``trainer.fast_dropout``, the process's allocator
  setting), evaluation only at the epoch's end on a 16-row validation set;
- ``project_compiled``: the same with ``trainer.compile=true`` (its untimed pass compiles: that time is reported
  apart);
- ``hf_trainer``: ``transformers.Trainer`` with its default collator (dynamic padding) and random sampling;
- ``minimal``: forward, MSE, backward, fused AdamW step on the project's own batches, collated before the clock
  starts, in a plain process: the floor of what a hand-written loop costs;
- ``minimal_kept``: the same loop after ``trainer.keep_freed_memory()``, the project's process setting: the floor
  the project's own loop is measured against.

Each contestant runs in a fresh process (so one's process settings never help another), trains one untimed
pass (each padded length's kernels, the allocator) and then the timed pass; the rounds go round-robin over the
contestants, so noise from the machine hits them alike. Samples/s = rows / wall time of the timed pass.
``--profile`` prints instead the top operators of the project's training steps (``torch.profiler``) in a plain
process and with the allocator setting. A report, not a test: it exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import kfold_nlp  # noqa: F401  (the ${minilm_path:} resolver)
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv.fold import build_fold_model
from kfold_nlp.data.loading import EncodedRows, make_loader
from kfold_nlp.model.regressor import load_tokenizer, tokenize
from kfold_nlp.train import hardware
from kfold_nlp.train.compiled import cxx_compiler
from kfold_nlp.train.device import make_accelerator
from kfold_nlp.train.loop import train_fold
from kfold_nlp.train.memory import keep_freed_memory
from kfold_nlp.train.precision import is_emulated, native_precisions

from . import mfu
from .rows import DEFAULT, HELP, load_rows

ROOT = Path(__file__).resolve().parents[1]  # where ``benchmarks`` is a package, for the child processes
CONTESTANTS = ("project", "project_compiled", "hf_trainer", "minimal", "minimal_kept")


def config(model: str, precision: str, batch_size: int, max_length: int, regularizer: str = "baseline"):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", [f"model={model}", f"regularizer={regularizer}", "name=race",
                                  f"trainer.precision={precision}",
                                  f"trainer.batch_size={batch_size}", f"model.max_length={max_length}",
                                  "trainer.epochs=1", "trainer.eval_every=null", "trainer.patience=null",
                                  "trainer.save_models=false", "logger.mode=disabled"])


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_project(cfg, enc, targets, tokenizer) -> tuple[float, str]:
    reset_accelerate()
    accelerator = make_accelerator(cfg.trainer)
    task, model, regularizer = build_fold_model(cfg, fold=0)
    seen = watch_device(model)
    n = len(targets) - 16
    train = make_loader(EncodedRows(enc, np.arange(n), targets), tokenizer, cfg.trainer.batch_size, True, seed=0)
    val = make_loader(EncodedRows(enc, np.arange(n, n + 16), targets), tokenizer, 64, False)
    start = time.perf_counter()
    train_fold(model, regularizer, train, val, targets[n:], cfg, accelerator, task=task)
    return n / (time.perf_counter() - start), seen.get("device", "?")


def train_device() -> torch.device:
    """Where the minimal loop trains: the GPU when there is one, as the project's accelerator and Trainer choose."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def watch_device(model) -> dict:
    """Records, at the first forward, the device of the weights and of the batch: what a contestant ran on."""
    seen: dict = {}

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        weights = str(next(module.parameters()).device)
        seen.setdefault("device", weights if ids is None or str(ids.device) == weights else
                        f"mixed (weights {weights}, batch {ids.device})")

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def autocast_dtype(precision: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def run_minimal(cfg, enc, targets, tokenizer, kept: bool = False) -> tuple[float, str]:
    """The floor: the batches collated, moved to the device and the optimizer built before the clock starts."""
    if kept:
        keep_freed_memory()
    reset_accelerate()
    device = train_device()
    _, model, _ = build_fold_model(cfg, fold=0)
    model.to(device)
    seen = watch_device(model)
    n = len(targets) - 16
    batches = [{k: v.to(device) for k, v in batch.items()}
               for batch in make_loader(EncodedRows(enc, np.arange(n), targets), tokenizer, cfg.trainer.batch_size,
                                        True, seed=0)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, fused=True)
    dtype = autocast_dtype(cfg.trainer.precision)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None  # fp16 needs loss scaling
    model.train()
    start = time.perf_counter()
    for batch in batches:
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            pred = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = F.mse_loss(pred.float(), batch["target"].float())
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start), seen.get("device", "?")


class _WithLoss(torch.nn.Module):
    """What ``Trainer`` expects of a model: ``labels`` in, ``loss`` out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels=None, **kwargs):
        pred = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return {"loss": F.mse_loss(pred.float(), labels.float()), "logits": pred}


def run_hf_trainer(cfg, enc, targets, tokenizer, out_dir: str) -> tuple[float, str]:
    from transformers import Trainer, TrainingArguments

    reset_accelerate()
    _, model, _ = build_fold_model(cfg, fold=0)
    seen = watch_device(model)
    n = len(targets) - 16
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": float(targets[i])} for i in range(n)]
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=cfg.trainer.batch_size,
                             num_train_epochs=1, learning_rate=cfg.optimizer.lr, bf16=cfg.trainer.precision == "bf16",
                             fp16=cfg.trainer.precision == "fp16",
                             use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=_WithLoss(model), args=args, train_dataset=rows, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return n / (time.perf_counter() - start), seen.get("device", "?")


def setup(args):
    """The config, tokenizer, encodings and targets every child process trains on."""
    cfg = config(args.model, args.precision[0], args.batch_size, args.max_length, args.regularizer)
    texts, targets = load_rows(args.data, args.rows + 16)
    tokenizer = load_tokenizer(cfg.model)
    return cfg, tokenize(tokenizer, texts, args.max_length), targets, tokenizer


def work(args) -> tuple[float, dict]:
    """Model FLOPs per trained sample (real tokens only) and the padding share of the batches each contestant
    trains on: the project's length-grouped ones, and random ones (Trainer's default sampler, dynamic padding)."""
    from transformers import AutoConfig

    cfg, enc, targets, tokenizer = setup(args)
    n = len(targets) - 16
    lengths = [len(ids) for ids in enc["input_ids"][:n]]
    per_sample = mfu.train_flops(AutoConfig.from_pretrained(cfg.model.backbone), lengths) / n
    grouped = make_loader(EncodedRows(enc, np.arange(n), targets), tokenizer, args.batch_size, True, seed=0)
    chunks = np.array_split(np.random.default_rng(0).permutation(n), max(1, n // args.batch_size))
    random_batches = [{"attention_mask": torch.tensor([[1] * lengths[i] + [0] * (max(lengths[j] for j in chunk)
                                                                                - lengths[i]) for i in chunk])}
                      for chunk in chunks]
    return per_sample, {"project": mfu.padding_share(grouped), "random": mfu.padding_share(random_batches)}


def run_one(args) -> tuple[float, str]:
    """One contestant in this process: an untimed pass, then the timed one; returns its samples/s and device."""
    cfg, enc, targets, tokenizer = setup(args)
    compiled = cfg.copy()
    compiled.trainer.compile = True
    runner = {"project": lambda: run_project(cfg, enc, targets, tokenizer),
              "project_compiled": lambda: run_project(compiled, enc, targets, tokenizer),
              "hf_trainer": lambda: run_hf_trainer(cfg, enc, targets, tokenizer, tempfile.mkdtemp()),
              "minimal": lambda: run_minimal(cfg, enc, targets, tokenizer),
              "minimal_kept": lambda: run_minimal(cfg, enc, targets, tokenizer, kept=True)}[args.one]
    began = time.perf_counter()
    runner()
    first = time.perf_counter() - began
    return (*runner(), first)


def profile(args) -> None:
    """The project's training steps under ``torch.profiler`` (after an untimed pass): top operators by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cfg, enc, targets, tokenizer = setup(args)
    run_project(cfg, enc, targets, tokenizer)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        speed, _ = run_project(cfg, enc, targets, tokenizer)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
    print(f"{speed:.2f} samples/s under the profiler")


def spawn(args, name: str, precision: str, plain: bool = False) -> str:
    """Runs ``--one name`` (a contestant, or ``profile``) in a fresh process; returns its stdout."""
    command = [sys.executable, "-m", "benchmarks.race", "--precision", precision, "--rows", str(args.rows),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--model", args.model,
               "--data", args.data, "--regularizer", args.regularizer, "--one", name]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env |= {"KFOLD_NLP_KEEP_FREED_MEMORY": "0"} if plain else {}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"race: {name} ({precision}) failed:\n{done.stderr[-2000:]}")
    return done.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=224, help="training rows (+16 validation rows for the project)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (each contestant once per round)")
    parser.add_argument("--precision", nargs="+", default=None,
                        help="default: the precisions this machine runs natively (bf16 only where it is native)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default=DEFAULT, help=HELP)
    parser.add_argument("--regularizer", default="baseline",
                        help="conf/regularizer/<name>.yaml every contestant trains with (default baseline: the "
                             "model's dropout as shipped, what Trainer trains; no_dropout is the project's recipe)")
    parser.add_argument("--profile", action="store_true", help="top operators of the project's steps instead")
    parser.add_argument("--one", choices=(*CONTESTANTS, "profile"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)

    if args.one == "profile":
        profile(args)
        return 0
    if args.one:
        speed, device, first = run_one(args)
        print(json.dumps({"samples_per_s": speed, "device": device, "first_pass_s": first}))
        return 0
    print(hardware.header(hardware.record()))
    if args.precision is None:
        args.precision = native_precisions()
        if "bf16" not in args.precision and not torch.cuda.is_available():
            print("bf16 skipped: this CPU has no native bf16, it would be emulated (--precision fp32 bf16 to time it)")
    print(f"race: {args.model}, regularizer {args.regularizer}, {args.rows} rows = {args.rows // args.batch_size} "
          f"steps of batch {args.batch_size}, max_length {args.max_length}, {torch.get_num_threads()} threads, "
          f"{args.rounds} timed rounds, each contestant in a fresh process after one untimed pass")
    per_sample, padding = work(args)
    print(f"model work {per_sample / 1e9:.2f} GFLOP per sample (real tokens); padding: "
          f"{100 * padding['project']:.1f}% of the tokens of the project's length-grouped batches, "
          f"{100 * padding['random']:.1f}% of random batches (Trainer's sampler)")
    if not args.profile:
        print(mfu.describe_peaks(args.precision, "cuda" if torch.cuda.is_available() else "cpu"))
    if args.profile:
        for precision in args.precision:
            for plain in (True, False):
                print(f"\n## project, {precision}, {'glibc default' if plain else 'keep_freed_memory'}")
                print(spawn(args, "profile", precision, plain), flush=True)
        return 0
    results, devices, firsts = {}, {}, {}
    contestants = CONTESTANTS
    if not torch.cuda.is_available() and cxx_compiler() is None:
        contestants = tuple(c for c in CONTESTANTS if c != "project_compiled")
        print("project_compiled skipped: torch.compile needs a C++ compiler on CPU and none was found")
    for round_ in range(1, args.rounds + 1):
        for precision in args.precision:
            for name in contestants:
                out = json.loads(spawn(args, name, precision).splitlines()[-1])
                results.setdefault((precision, name), []).append(out["samples_per_s"])
                devices[(precision, name)] = out["device"]
                firsts.setdefault((precision, name), []).append(out["first_pass_s"])
                print(f"  round {round_} {precision} {name} on {out['device']}: {out['samples_per_s']:.2f} samples/s",
                      flush=True)
    print(f"\n| precision | contestant | device | samples/s (median of {args.rounds}) | vs Trainer | vs minimal | "
          f"vs minimal_kept | TFLOP/s | MFU |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for precision in args.precision:
        med = {n: statistics.median(results[(precision, n)]) for n in contestants}
        label = f"{precision} (emulated)" if is_emulated(precision, "cuda" if torch.cuda.is_available()
                                                           else "cpu") else precision
        for name in contestants:
            tflops = med[name] * per_sample / 1e12
            print(f"| {label} | {name} | {devices[(precision, name)]} | {med[name]:.2f} | "
                  f"{med[name] / med['hf_trainer']:.2f}x | {med[name] / med['minimal']:.2f}x | "
                  f"{med[name] / med['minimal_kept']:.2f}x | {tflops:.3f} | "
                  f"{100 * tflops * 1e12 / mfu.gemm_peak(precision, device):.1f}% |")
    for precision in args.precision if "project_compiled" in contestants else ():
        first = {n: statistics.median(firsts[(precision, n)]) for n in ("project", "project_compiled")}
        print(f"{precision}: the untimed first pass took {first['project']:.0f} s eager, "
              f"{first['project_compiled']:.0f} s compiled (compilation included)")
    if {"fp32", "bf16"} <= set(args.precision):
        base = statistics.median(results[("fp32", "hf_trainer")])
        print(f"\nproject bf16 vs Trainer's fp32 default: "
              f"{statistics.median(results[('bf16', 'project')]) / base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
