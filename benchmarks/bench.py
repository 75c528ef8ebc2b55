"""Time one training step (forward + loss + backward + AdamW) of every regularizer on the same batches.

``python -m benchmarks.bench [--steps 5 --batch-size 16 --max-length 256 --precision fp32|bf16 --model minilm|tiny
--data synthetic|commonlit|<csv>]`` from the repository's root (``make bench [DATA=...]``). Each regularizer gets
its own model, built and warmed up in turn; then the timed steps go round-robin over them, so load from other
processes on a shared machine skews them alike. A report, not a test: it exits 0 whatever the ratios.
Regularizers come from ``conf/regularizer/*.yaml`` through ``hydra.utils.instantiate``, exactly as training builds
them; the cost targets and the extra settings to time are the benchmark's own (``MAX_STEP_COST``, ``VARIANTS``),
not the regularizers'.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import kfold_nlp  # noqa: F401  (registers the ${minilm_path:} resolver)
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.errors import ConfigError
from kfold_nlp.model.regressor import build_model, check_backbone, load_tokenizer
from kfold_nlp.model.tasks import Task
from kfold_nlp.train import fast_dropout, hardware, threads
from kfold_nlp.train.compiled import compile_backbone, cxx_compiler
from kfold_nlp.train.memory import keep_freed_memory, release_freed_memory
from kfold_nlp.train.precision import is_emulated

from . import mfu
from .rows import DEFAULT, HELP, load_rows

# What one training step of conf/regularizer/<name>.yaml may cost against baseline's (PASS or FAIL); a name that is
# not here makes no claim. The benchmark's figures, not the regularizers': training never reads them.
MAX_STEP_COST = {"msd": 1.05, "mixout": 1.2, "rdrop": 2.0}
# Other settings timed beside a YAML's own: name -> {label: constructor overrides}.
VARIANTS = {"rdrop": {"rdrop_2fwd": {"single_forward": False}}}


def conf_dir() -> Path:
    return Path(CONFIG_DIR)


def runs_from_conf(conf: Path) -> list[tuple[str, str, dict]]:
    """(label, conf/regularizer/<name>.yaml, constructor overrides): baseline first, then every other YAML and
    its variants."""
    names = sorted(p.stem for p in (conf / "regularizer").glob("*.yaml"))
    unknown = (MAX_STEP_COST.keys() | VARIANTS.keys()) - set(names)
    if unknown:  # a renamed YAML would otherwise lose its target silently
        raise SystemExit(f"error: bench targets for {', '.join(sorted(unknown))}: no such conf/regularizer/*.yaml")
    runs = []
    for name in ["baseline", *(n for n in names if n != "baseline")]:
        runs.append((name, name, {}))
        runs += [(label, name, overrides) for label, overrides in VARIANTS.get(name, {}).items()]
    return runs


def make_batches(tokenizer, texts, targets, batch_size: int, max_length: int, device) -> list[dict]:
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
        batch = dict(enc) | {"target": torch.tensor(targets[i:i + batch_size], dtype=torch.float32),
                             "index": torch.arange(i, i + batch_size)}
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


class Memory:
    """Memory one run adds: CUDA allocator peak, or the process's resident-set high-water mark on CPU.

    On Linux the RSS high-water mark (VmHWM) is reset per run via ``/proc/self/clear_refs``; where that is not
    possible it falls back to ``resource.getrusage`` ``ru_maxrss`` (the peak since start, so later runs' numbers
    are upper bounds).
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "CUDA memory added (torch.cuda.max_memory_allocated)"
        elif self._reset_hwm():
            self.kind = "RSS added (VmHWM, reset per run)"
        else:
            self.kind = "RSS added (getrusage ru_maxrss, peak since start)"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def _current(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()

    def start(self) -> None:
        """Mark the memory in use now; ``added()`` is the peak above it."""
        release_freed_memory()  # gc + the freed heap back to the kernel, so "now" is what is really in use
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._reset_hwm()
        self.base = self._current()

    def added_mib(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif "VmHWM" in self.kind:
            line = next(r for r in Path("/proc/self/status").read_text().splitlines() if r.startswith("VmHWM:"))
            peak = int(line.split()[1]) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return (peak - self.base) / 2**20


class Run:
    """One regularizer's model, optimizer and step timings."""

    def __init__(self, label, reg_cfg, overrides, model_cfg, device, autocast, compiled: bool = False,
                 fast: bool = True):
        torch.manual_seed(0)
        self.label, self.autocast, self.device = label, autocast, device
        self.model = build_model(model_cfg).to(device).train()
        if compiled:  # as trainer.compile does
            compile_backbone(self.model)
        self.regularizer = instantiate(reg_cfg, **overrides)
        self.regularizer.setup(self.model)
        if fast and not compiled:  # as trainer.fast_dropout (the default) does, after the regularizer's setup
            fast_dropout.apply(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-5)
        self.times: list[float] = []

    def step(self, batch: dict) -> float:
        """One optimizer step; returns its wall time in ms."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.regularizer.loss(self.model, batch, Task().loss).loss
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_loss = loss.item()
        return (time.perf_counter() - start) * 1000


def base_size_mfu(args, conf: Path, device, autocast, texts, targets, peak: float) -> list[dict]:
    """Baseline steps of the base-size model, eager and compiled, interleaved (when its weights are installed)."""
    model_cfg = OmegaConf.load(conf / "model" / f"{args.base_model}.yaml")
    try:
        check_backbone(model_cfg)
    except ConfigError as err:
        print(f"\n{args.base_model}: skipped ({err})")
        return []
    batches = make_batches(load_tokenizer(model_cfg), texts, targets, args.batch_size, args.max_length, device)
    reg_cfg = OmegaConf.load(conf / "regularizer" / "baseline.yaml")
    runs, out, memory = [], [], Memory(device)
    for label in ["eager", *([] if args.no_compile else ["compiled"])]:
        memory.start()
        run = Run(label, reg_cfg, {}, model_cfg, device, autocast, compiled=label == "compiled")
        first = [run.step(batch) for batch in batches[:args.warmup]]
        runs.append((run, first, memory.added_mib()))
    for batch in batches[args.warmup:]:
        for run, _, _ in runs:
            run.times.append(run.step(batch))
    print(f"\n{args.base_model} (baseline, batch {args.batch_size}, max_length {args.max_length}, {args.precision}; "
          f"mem = {memory.kind} by building the model and its warm-up steps)")
    for run, first, added in runs:
        flops = sum(mfu.train_flops(run.model.backbone.config, mfu.real_lengths(b["attention_mask"]))
                    for b in batches[args.warmup:])
        tflops = flops / (sum(run.times) / 1000) / 1e12
        out.append({"regularizer": f"{args.base_model} {run.label}", "ms_per_step": statistics.median(run.times),
                    "steps_ms": run.times, "first_step_ms": first[0] if first else None, "tflops": tflops,
                    "mfu": tflops * 1e12 / peak, "mem_added_mib": added})
        print(f"  {run.label:<9} {out[-1]['ms_per_step']:>8.0f} ms/step, {tflops:.3f} TFLOP/s, MFU "
              f"{100 * out[-1]['mfu']:.1f}% (first step {out[-1]['first_step_ms'] / 1000:.1f} s), mem {added:.0f} MiB")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per regularizer (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 where the device runs it natively, else fp32")
    parser.add_argument("--model", default="minilm", help="conf/model/<name>.yaml: minilm | tiny | ...")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--data", default=DEFAULT, help=HELP)
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled baseline (trainer.compile)")
    parser.add_argument("--base-model", default="mpnet_base",
                        help="a base-size conf/model/<name>.yaml whose eager and compiled MFU is measured too, when "
                             "its weights are installed (make models); 'none' skips it")
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.precision == "auto":
        args.precision = "bf16" if (hardware.cuda_has_bf16() if device.type == "cuda"
                                    else hardware.cpu_has_native_bf16()) else "fp32"
    emulated = " (emulated: this CPU has no native bf16)" if is_emulated(args.precision, device.type) else ""
    if device.type == "cpu":
        keep_freed_memory()  # as training does (trainer.make_accelerator)
        threads.set_threads()
    conf = conf_dir()
    runs_conf = runs_from_conf(conf)
    model_cfg = OmegaConf.load(conf / "model" / f"{args.model}.yaml")
    tokenizer = load_tokenizer(model_cfg)
    n = (args.warmup + args.steps) * args.batch_size
    texts, targets = load_rows(args.data, n, seed=0)
    batches = make_batches(tokenizer, texts, targets, args.batch_size, args.max_length, device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    memory = Memory(device)
    print(hardware.header(hardware.record()))
    print(mfu.describe_peaks([args.precision], str(device)))
    print(f"model={args.model} device={device} threads={torch.get_num_threads()} precision={args.precision}{emulated} "
          f"batch={args.batch_size} max_length={args.max_length} warmup={args.warmup} steps={args.steps}")
    # Build and warm up one run at a time (so its memory can be measured), then time the steps round-robin:
    # on a shared machine, load from other processes then hits every regularizer alike instead of one of them.
    Run("warm-up", OmegaConf.load(conf / "regularizer" / "baseline.yaml"), {}, model_cfg, device, autocast).step(
        batches[0])  # one-time allocations (thread pools, kernels) would otherwise count against the first run
    if not args.no_compile and cxx_compiler() is None:
        args.no_compile = True
        print("compiled rows skipped: torch.compile needs a C++ compiler on CPU and none was found")
    runs_conf += [("baseline+torch_dropout", "baseline", {})]  # trainer.fast_dropout=false
    runs_conf += [] if args.no_compile else [("baseline+compile", "baseline", {})]
    runs, results = [], []
    for label, name, overrides in runs_conf:
        memory.start()
        run = Run(label, OmegaConf.load(conf / "regularizer" / f"{name}.yaml"), overrides, model_cfg, device,
                  autocast, compiled=label.endswith("+compile"), fast=not label.endswith("+torch_dropout"))
        warmup = [run.step(batch) for batch in batches[:args.warmup]]
        runs.append(run)
        results.append({"regularizer": label, "config": f"{name}.yaml", "overrides": overrides,
                        "mem_added_mib": memory.added_mib(), "first_step_ms": warmup[0] if warmup else None})
    for batch in batches[args.warmup:]:
        for run in runs:
            run.times.append(run.step(batch))
    peak = mfu.gemm_peak(args.precision, str(device))
    for run, result in zip(runs, results):
        flops = sum(mfu.train_flops(run.model.backbone.config, mfu.real_lengths(b["attention_mask"]))
                    for b in batches[args.warmup:])
        result |= {"ms_per_step": statistics.median(run.times), "steps_ms": run.times, "last_loss": run.last_loss,
                   "tflops": flops / (sum(run.times) / 1000) / 1e12}
        result["mfu"] = result["tflops"] * 1e12 / peak

    base = results[0]["ms_per_step"]
    header = (f"{'regularizer':<16} {'ms/step':>9} {'min ms':>7} {'ratio':>7} {'target':>9} {'result':>6} "
              f"{'mem MiB':>8} {'TFLOP/s':>8} {'MFU':>6}")
    print(f"\nms/step = median (the min is the least disturbed step on a shared machine); mem = {memory.kind} by "
          f"building the model and its warm-up steps; TFLOP/s = model work (real tokens, padding excluded) per second "
          f"of the timed steps; MFU = that / the measured GEMM peak; padding = "
          f"{100 * mfu.padding_share(batches[args.warmup:]):.0f}% of the timed batches' tokens\n{header}\n"
          f"{'-' * len(header)}")
    for result, (_, name, _) in zip(results, runs_conf):
        result["ratio"] = result["ms_per_step"] / base
        limit = None if result["overrides"] else MAX_STEP_COST.get(name)
        if limit is None:
            result["target"], result["status"] = None, "-"
        else:
            result["target"] = f"<= {limit:.2f}x"
            result["status"] = "PASS" if result["ratio"] <= limit else "FAIL"
        print(f"{result['regularizer']:<16} {result['ms_per_step']:>9.0f} {min(result['steps_ms']):>7.0f} "
              f"{result['ratio']:>6.2f}x "
              f"{result['target'] or '-':>9} {result['status']:>6} {result['mem_added_mib']:>8.0f} "
              f"{result['tflops']:>8.3f} {100 * result['mfu']:>5.1f}%")
    if "baseline+compile" in {r["regularizer"] for r in results}:
        compiled = next(r for r in results if r["regularizer"] == "baseline+compile")
        print(f"baseline+compile: first step (compilation) {compiled['first_step_ms'] / 1000:.1f} s")
    by_label = {r["regularizer"]: r["ms_per_step"] for r in results}
    # Mixout turns all dropout off, which is itself faster (SDPA attention without dropout), so its own overhead
    # is best read against no_dropout.
    if {"mixout", "no_dropout"} <= by_label.keys():
        print(f"mixout / no_dropout = {by_label['mixout'] / by_label['no_dropout']:.2f}x")

    if args.base_model != "none" and args.base_model != args.model:
        results += base_size_mfu(args, conf, device, autocast, texts, targets, peak)

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "device": str(device),
                  "hardware": hardware.record(args.precision),
                  "threads": torch.get_num_threads(), "memory": memory.kind, "results": results}
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
