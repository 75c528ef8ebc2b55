"""Time one training step (forward + loss + backward + AdamW) of every regularizer on the same batches.

``python -m kfold_nlp.bench [--steps 5 --batch-size 16 --max-length 256 --precision fp32|bf16 --model minilm|tiny]``
(``make bench``). A report, not a test: it exits 0 whatever the ratios. Regularizers come from
``conf/regularizer/*.yaml`` through ``hydra.utils.instantiate``, exactly as training builds them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import gc
import json
import random
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

import kfold_nlp  # noqa: F401  (registers the ${minilm_path:} resolver)
from kfold_nlp.model import build_model, load_tokenizer

# (label, conf/regularizer/<name>.yaml, constructor overrides, (max ratio to baseline, strict?) or None)
RUNS = [
    ("baseline", "baseline", {}, None),
    ("msd", "msd", {}, (1.05, False)),
    ("mixout", "mixout", {}, (1.2, False)),
    ("rdrop", "rdrop", {}, (2.0, True)),
    ("rdrop_2fwd", "rdrop", {"single_forward": False}, None),
    ("no_dropout", "no_dropout", {}, None),
]


def conf_dir() -> Path:
    """The repo's ``conf/`` when run from a checkout, else ``./conf``."""
    here = Path(__file__).resolve().parents[2] / "conf"
    return here if here.is_dir() else Path("conf")


def load_texts(path: Path, n: int, tokenizer, seed: int) -> tuple[list[str], list[float]]:
    """``n`` CommonLit excerpts and targets if the CSV exists, else ~256-token texts of random vocabulary words."""
    rng = random.Random(seed)
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        rows = rng.sample(rows, n) if len(rows) >= n else rng.choices(rows, k=n)
        print(f"texts: {n} excerpts from {path}")
        return [r["excerpt"] for r in rows], [float(r["target"]) for r in rows]
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2)
    print(f"texts: {path} not found, {n} texts of 220 random vocabulary words")
    return [" ".join(rng.choices(words, k=220)) for _ in range(n)], [rng.gauss(-1.0, 1.0) for _ in range(n)]


def make_batches(tokenizer, texts, targets, batch_size: int, max_length: int, device) -> list[dict]:
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
        batch = dict(enc) | {"target": torch.tensor(targets[i:i + batch_size]),
                             "index": torch.arange(i, i + batch_size)}
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


class PeakMemory:
    """Peak memory of one run: CUDA allocator peak, or the process's resident-set high-water mark on CPU.

    On Linux the RSS high-water mark (VmHWM) is reset per run via ``/proc/self/clear_refs``; where that is not
    possible it falls back to ``resource.getrusage`` ``ru_maxrss``, the peak since the process started.
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated"
        elif self._reset_hwm():
            self.kind = "peak RSS (VmHWM, reset per run)"
        else:
            self.kind = "peak RSS since start (getrusage ru_maxrss)"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so the previous run's peak doesn't linger
        self._reset_hwm()

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if "VmHWM" in self.kind:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_run(reg_cfg, overrides, model_cfg, batches, warmup, device, autocast, memory) -> dict:
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device).train()
    regularizer = instantiate(reg_cfg, **overrides)
    regularizer.setup(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    memory.reset()
    times = []
    for i, batch in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = regularizer.loss(model, batch, F.mse_loss)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    result = {"ms_per_step": statistics.median(times), "steps_ms": times, "peak_mem_mib": memory.peak_mib(),
              "last_loss": loss.item()}
    del model, optimizer, regularizer, loss
    memory.reset()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per regularizer (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--model", default="minilm", help="conf/model/<name>.yaml: minilm | tiny | ...")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/commonlit/train.csv"))
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    conf = conf_dir()
    model_cfg = OmegaConf.load(conf / "model" / f"{args.model}.yaml")
    tokenizer = load_tokenizer(model_cfg)
    n = (args.warmup + args.steps) * args.batch_size
    texts, targets = load_texts(args.data, n, tokenizer, seed=0)
    batches = make_batches(tokenizer, texts, targets, args.batch_size, args.max_length, device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    memory = PeakMemory(device)
    print(f"model={args.model} device={device} threads={torch.get_num_threads()} precision={args.precision} "
          f"batch={args.batch_size} max_length={args.max_length} warmup={args.warmup} steps={args.steps}")
    results = []
    for label, name, overrides, target in RUNS:
        reg_cfg = OmegaConf.load(conf / "regularizer" / f"{name}.yaml")
        result = time_run(reg_cfg, overrides, model_cfg, batches, args.warmup, device, autocast, memory)
        result |= {"regularizer": label, "config": f"{name}.yaml", "overrides": overrides}
        results.append(result)
        print(f"  {label}: {result['ms_per_step']:.0f} ms/step", flush=True)

    base = results[0]["ms_per_step"]
    header = f"{'regularizer':<12} {'ms/step':>9} {'ratio':>7} {'target':>9} {'result':>6} {'peak MiB':>9}"
    print(f"\npeak memory = {memory.kind}\n{header}\n{'-' * len(header)}")
    for result, (*_, target) in zip(results, RUNS):
        result["ratio"] = result["ms_per_step"] / base
        if target is None:
            result["target"], result["status"] = None, "-"
        else:
            limit, strict = target
            ok = result["ratio"] < limit if strict else result["ratio"] <= limit
            result["target"], result["status"] = f"{'<' if strict else '<='} {limit:.2f}x", "PASS" if ok else "FAIL"
        print(f"{result['regularizer']:<12} {result['ms_per_step']:>9.0f} {result['ratio']:>6.2f}x "
              f"{result['target'] or '-':>9} {result['status']:>6} {result['peak_mem_mib']:>9.0f}")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "device": str(device),
                  "threads": torch.get_num_threads(), "memory": memory.kind, "results": results}
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
