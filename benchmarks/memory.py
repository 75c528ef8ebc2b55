"""Peak memory and step time of full fine-tuning, LoRA and gradient checkpointing, per model and precision.

``python -m benchmarks.memory [--models minilm mpnet_base --precisions bf16 fp32 --modes full lora lora+ckpt ...]``
from the repository's root (``make memory [DATA=...]``). Each (model, precision, mode) trains a few AdamW steps of
the baseline regularizer at the fold's batch size and length in a fresh process of its own, so its peak resident
memory (VmHWM: the model, the optimizer's state, the activations, torch itself) is what one fold of it needs; the
processes go round-robin over the configurations for ``--rounds`` rounds, so load from elsewhere hits them alike.
A model whose weights are not installed, or a mode its architecture refuses (checkpointing in MPNet), is listed as
skipped with the one-line reason. A report, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = {  # label -> model overrides
    "full": {},
    "full+ckpt": {"gradient_checkpointing": True},
    "lora": {"peft": "lora"},
    "lora+ckpt": {"peft": "lora", "gradient_checkpointing": True},
}


def one(job: dict) -> dict:
    """Build the model of ``job``, take ``warmup`` then ``steps`` optimizer steps; its times and memory."""
    import torch
    from omegaconf import OmegaConf

    import kfold_nlp  # noqa: F401  (the model paths' resolvers)
    from kfold_nlp.model import lora
    from kfold_nlp.model.optim import build_optimizer
    from kfold_nlp.model.regressor import build_model, check_backbone, load_tokenizer
    from kfold_nlp.model.regularizers import Regularizer
    from kfold_nlp.model.tasks import Task
    from kfold_nlp.train import threads
    from kfold_nlp.train.memory import keep_freed_memory, memory_mb

    from .bench import conf_dir, make_batches
    from .rows import load_rows

    keep_freed_memory()  # as training does
    threads.set_threads()
    conf = conf_dir()
    model_cfg = OmegaConf.load(conf / "model" / f"{job['model']}.yaml")
    model_cfg.merge_with(job["overrides"])
    check_backbone(model_cfg)  # ConfigError: the parent reports it as skipped
    texts, targets = load_rows(job["data"], (job["warmup"] + job["steps"]) * job["batch_size"], seed=0)
    batches = make_batches(load_tokenizer(model_cfg), texts, targets, job["batch_size"], job["max_length"],
                           torch.device("cpu"))
    torch.manual_seed(0)
    model = lora.adapt(build_model(model_cfg), model_cfg).train()
    loaded = memory_mb()["peak_rss_mb"]
    optimizer = build_optimizer(OmegaConf.load(conf / "optimizer" / "adamw.yaml"), model)
    regularizer = Regularizer()
    bf16 = job["precision"] == "bf16"
    times = []
    for batch in batches:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = regularizer.loss(model, batch, Task().loss).loss
        loss.backward()
        optimizer.step()
        times.append((time.perf_counter() - start) * 1000)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))
    return {"ms": times[job["warmup"]:], "peak_rss_mib": memory_mb()["peak_rss_mb"], "after_build_mib": loaded,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "params": sum(p.numel() for p in model.parameters()), "optimizer_state_mib": state / 2**20}


def run_job(job: dict) -> dict:
    """``one(job)`` in a fresh process (its peak memory is its own); a refusal comes back as ``skipped``."""
    root = str(Path(__file__).resolve().parents[1])  # benchmarks/ importable from any working folder
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--one", json.dumps(job)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": last.removeprefix("error: ")}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    from .rows import DEFAULT, HELP

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "mpnet_base"], help="conf/model/<name>.yaml")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per configuration, round-robin")
    parser.add_argument("--data", default=DEFAULT, help=HELP)
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one job as JSON
    args = parser.parse_args(argv)
    if args.one:
        from kfold_nlp.errors import ConfigError

        try:
            print(json.dumps(one(json.loads(args.one))))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0

    from kfold_nlp.train import hardware

    print(hardware.header(hardware.record()))
    print(f"batch {args.batch_size}, max_length {args.max_length}, {args.warmup} untimed + {args.steps} timed AdamW "
          f"steps per process, {args.rounds} rounds; peak RSS = the process's VmHWM (model, optimizer state, "
          f"activations, torch)")
    jobs = [{"model": m, "precision": p, "mode": mode, "overrides": MODES[mode], "batch_size": args.batch_size,
             "max_length": args.max_length, "warmup": args.warmup, "steps": args.steps, "data": args.data}
            for m in args.models for p in args.precisions for mode in args.modes]
    results: dict[int, list[dict]] = {i: [] for i in range(len(jobs))}
    skipped: dict[int, str] = {}
    for _ in range(args.rounds):
        for i, job in enumerate(jobs):
            if i in skipped:
                continue
            got = run_job(job)
            if "skipped" in got:
                skipped[i] = got["skipped"]
            else:
                results[i].append(got)
    header = (f"{'model':<11} {'precision':<9} {'mode':<10} {'trainable':>12} {'ms/step':>8} {'samples/s':>9} "
              f"{'peak RSS MiB':>12} {'optimizer MiB':>13}")
    print(f"\n{header}\n{'-' * len(header)}")
    rows = []
    for i, job in enumerate(jobs):
        label = f"{job['model']:<11} {job['precision']:<9} {job['mode']:<10}"
        if i in skipped:
            print(f"{label} skipped: {skipped[i]}")
            rows.append(job | {"skipped": skipped[i]})
            continue
        runs = results[i]
        ms = statistics.median([t for r in runs for t in r["ms"]])
        peak = max(r["peak_rss_mib"] for r in runs)
        row = job | {"ms_per_step": ms, "samples_per_s": 1000 * job["batch_size"] / ms, "peak_rss_mib": peak,
                     "trainable": runs[0]["trainable"], "params": runs[0]["params"],
                     "optimizer_state_mib": runs[0]["optimizer_state_mib"], "runs": runs}
        rows.append(row)
        print(f"{label} {row['trainable']:>12,} {ms:>8.0f} {row['samples_per_s']:>9.2f} {peak:>12.0f} "
              f"{row['optimizer_state_mib']:>13.1f}")
    if args.out:
        from kfold_nlp.train import hardware as hw

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "hardware": hw.record(), "results": rows}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
