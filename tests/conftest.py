"""Shared fixtures: tiny randomly initialised models on a small generated set, the real entry point called in this
process (``cli``), and the work that needs other processes run in the background (``in_background``), so that each
run takes seconds and no test waits for a process it does not need."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the package sets once, at import, in every process: a process's environment is restored after each in-process
# call, so these must be there from the start.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
# The tiny models train faster on one intra-op thread than on two, and the processes some tests start (torchrun's,
# a launcher's, a search's) then share the cores without oversubscribing them; a run reads it (threads.set_threads).
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_DATA = {"n_train": 48, "n_test": 6, "seed": 42}  # the generated set of tiny_overrides (seed: conf/data)


def tiny_overrides(data_dir: Path, run_dir: Path, n_train: int = 48, logger: str = "none") -> list[str]:
    """A whole CV run in a few seconds: tiny model, 3 folds, 1 epoch, a 48-row generated set; the baseline
    regularizer (the model's own dropout), so that resumes and DDP ranks have random masks to get right.
    ``logger``: a conf/logger choice (``wandb``: offline)."""
    return [
        "model=tiny",
        "regularizer=baseline",
        f"data.path={data_dir}/train.csv",
        f"data.test_path={data_dir}/test.csv",
        f"data.generate.n_train={n_train}",
        "data.generate.n_test=6",
        "cv.n_splits=3",
        "trainer.epochs=1",
        "trainer.batch_size=8",
        "trainer.eval_every=2",
        f"logger={logger}",
        *(["logger.mode=offline"] if logger == "wandb" else []),
        f"hydra.run.dir={run_dir}",
    ]


# ---------------------------------------------------------------- the entry point in this process


@dataclass
class Result:
    """What a command left, as ``subprocess.CompletedProcess`` has it."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def reset_process_state() -> None:
    """Forget what a command leaves in the process and a new process would not have: Hydra's global and its config,
    accelerate's state, the run folders the ``${run_dir:}`` resolver made, the folder locks this process holds (each
    only once its module is loaded: nothing is imported for it)."""
    modules = sys.modules
    if "hydra.core.global_hydra" in modules:
        modules["hydra.core.global_hydra"].GlobalHydra.instance().clear()
    if "hydra.core.hydra_config" in modules:
        modules["hydra.core.hydra_config"].HydraConfig.instance().cfg = None
    if "accelerate.state" in modules:
        modules["accelerate.state"].AcceleratorState._reset_state(True)
        modules["accelerate.state"].GradientState._reset_state()
    if "kfold_nlp.rundir" in modules:  # the new run folders' names this process chose
        modules["kfold_nlp.rundir"]._CHOSEN.clear()
        modules["kfold_nlp.rundir"]._TAKEN.clear()
    if "kfold_nlp.cv.lock" in modules:
        modules["kfold_nlp.cv.lock"]._release_all()


def _loggers() -> list[logging.Logger]:
    return [logging.root, *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))]


@contextlib.contextmanager
def fresh_process(cwd: Path | None = None):
    """Run the block as a new process would: argv, environment, working folder, signal handlers, logging, torch's
    threads and the random generators are as before it afterwards, and the process-wide state is reset."""
    import numpy as np
    import torch

    argv, saved = sys.argv, {"argv": sys.argv[:], "env": dict(os.environ), "cwd": os.getcwd(),
                             "threads": torch.get_num_threads(),
                             "signals": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
                             "rng": (random.getstate(), np.random.get_state(), torch.get_rng_state())}
    logs = {x: (x.level, x.handlers[:], x.propagate, x.disabled) for x in _loggers()}
    logging.root.handlers.clear()  # a fresh process has none (``logging.basicConfig`` only acts then)
    logging.root.setLevel(logging.WARNING)
    reset_process_state()
    try:
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(saved["cwd"])
        sys.argv = argv
        sys.argv[:] = saved["argv"]
        os.environ.clear()
        os.environ.update(saved["env"])
        if torch.get_num_threads() != saved["threads"]:
            torch.set_num_threads(saved["threads"])
        for sig, handler in saved["signals"].items():
            signal.signal(sig, handler)
        random.setstate(saved["rng"][0])
        np.random.set_state(saved["rng"][1])
        torch.set_rng_state(saved["rng"][2])
        for x in _loggers():  # Hydra's console and run.log, a search's search.log: removed, their files closed
            if x in logs:
                level, handlers, x.propagate, x.disabled = logs[x]
                x.setLevel(level)
            else:  # a library's logger, made by its first import: keep what it set up, but no file of a run
                handlers = [h for h in x.handlers if not isinstance(h, logging.FileHandler)]
            for handler in x.handlers[:]:
                if handler not in handlers:
                    x.removeHandler(handler)
                    handler.close()
            x.handlers[:] = handlers
        reset_process_state()


def cli(*argv: str, check: bool = True, cwd: Path | None = None) -> Result:
    """``kfold-nlp <argv>`` (``python -m kfold_nlp.cli``; ``cli("cv", ...)`` is ``python -m kfold_nlp ...``) called
    in this process: its exit status (``SystemExit``), and what it printed and logged on stdout and stderr."""
    from kfold_nlp.cli import main

    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with fresh_process(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code) if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
            if not isinstance(exit_.code, (int, type(None))):  # sys.exit("message"): printed, status 1
                print(exit_.code, file=sys.stderr)
        except Exception:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
    proc = Result(argv, code, out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


@contextlib.contextmanager
def signal_when(sig: int, ready, poll_s: float = 0.002):
    """Send ``sig`` to this process as soon as ``ready()`` holds while the block runs (a user's Ctrl-C, SIGINT; a
    scheduler's SIGTERM), and never after it. The command under test handles it with its own handler, or, where it
    installed none, it raises KeyboardInterrupt (as SIGINT does); once the block ends it is ignored."""
    armed = threading.Event()
    armed.set()

    def fallback(signum, frame):
        if armed.is_set():
            raise KeyboardInterrupt

    def watch():
        while armed.is_set() and not ready():
            time.sleep(poll_s)
        if armed.is_set():
            os.kill(os.getpid(), sig)

    previous = signal.signal(sig, fallback)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        armed.clear()
        watcher.join()
        signal.signal(sig, previous)


def assert_stopped_with_one_line(returncode: int, stderr: str, code: int, word: str, run_dir: Path) -> None:
    """A run ended by Ctrl-C or SIGTERM: its exit status, and a last line naming the folder and the resume command
    (no traceback); its first fold kept."""
    assert returncode == code, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"{word}: finished folds are kept in {run_dir}") and f"RESUME={run_dir}" in last
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert (run_dir / "fold_0" / "result.json").exists()


def pytest_collection_modifyitems(items):
    """A test that starts a process is slow too: `make test-fast` (``-m "not slow"``) leaves both out."""
    for item in items:
        if item.get_closest_marker("process"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _process_state():
    """Whatever a test did in this process (a command called directly, an accelerator built, a lock taken), the
    next one starts without it."""
    yield
    reset_process_state()


# ---------------------------------------------------------------- real processes, where a test needs one


def run_process(*argv: str, check: bool = True, cwd: Path = ROOT, **popen) -> subprocess.CompletedProcess:
    """``python -m kfold_nlp.cli <argv>`` in another process: for what only a process has (its own limits,
    capabilities or imports)."""
    proc = subprocess.run([sys.executable, "-m", "kfold_nlp.cli", *map(str, argv)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def kill_when(command: list[str], *, stderr: str | None = None, exists=(), globs=(), children: bool = False) -> dict:
    """``command`` under tests/kill_when.py: SIGKILLed (or, with ``children``, its own child processes) the moment
    ``stderr`` shows on its stderr, every path of ``exists`` exists and every pattern of ``globs`` matches. Returns
    whether that happened, the command's exit status and its stderr's tail."""
    flags = [*(["--stderr", stderr] if stderr else []), *(x for p in exists for x in ("--exists", str(p))),
             *(x for p in globs for x in ("--glob", str(p))), *(["--children"] if children else [])]
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_when.py"), *flags, "--", *map(str, command)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def start_until(overrides: list[str], marker: bytes, **popen) -> subprocess.Popen:
    """Start the real entry point in another process (to be killed or signalled) and return it once its stderr (the
    progress bars) has shown ``marker``."""
    proc = subprocess.Popen([sys.executable, "-m", "kfold_nlp", *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **popen)
    seen = b""
    while marker not in seen:
        chunk = proc.stderr.read1(65536)
        assert chunk, seen.decode()[-2000:]
        seen += chunk
    return proc


# ---------------------------------------------------------------- work for the core the in-process tests leave idle

ENV = dict(os.environ)  # what the processes of background work get: a command in this process changes os.environ
BACKGROUND: dict[str, Callable[[Path, Path], Any]] = {}  # fixture name -> its work, fn(folder, tiny data)
_JOBS: dict[str, Future] = {}
_ARGS: dict[str, tuple[Path, Path]] = {}
_QUEUE: queue.Queue = queue.Queue()
_TAKING = threading.Lock()
_SESSION: dict = {}  # the session's tmp_path_factory, the tiny set's folder (background work reads it), the worker


def _tiny_data(factory: pytest.TempPathFactory) -> Path:
    if "tiny_data" not in _SESSION:
        from kfold_nlp.data.synthetic import make_synthetic

        base = factory.mktemp("tiny_run")
        make_synthetic(base / "data", **TINY_DATA)
        _SESSION["tiny_data"] = base / "data"
    return _SESSION["tiny_data"]


def in_background(fn: Callable[[Path, Path], Any]):
    """A session fixture named as ``fn`` whose value is ``fn(folder, tiny_data)``, computed in a background thread:
    started once the session is collected, if a selected test needs it, one at a time in the order the tests need
    them (a test that needs one not started yet computes it itself). The in-process tests keep one core busy; what
    only starts other processes and reads their files (a torchrun, a killed run, a launcher's or a search's jobs)
    runs on the other meanwhile. ``fn`` touches nothing of this process that a test changes (no ``cli``, no Hydra
    global, no os.environ, no working folder): its processes get ``ENV`` and absolute paths."""
    BACKGROUND[fn.__name__] = fn

    @pytest.fixture(scope="session", name=fn.__name__)
    def fixture(tmp_path_factory):
        _submit(fn.__name__, tmp_path_factory)
        _run(fn.__name__)  # not started yet: this thread has nothing else to do meanwhile
        return _JOBS[fn.__name__].result()

    fixture.__doc__ = fn.__doc__
    return fixture


def _submit(name: str, factory: pytest.TempPathFactory) -> None:
    _SESSION["factory"] = factory
    if name not in _JOBS:
        _JOBS[name], _ARGS[name] = Future(), (factory.mktemp(name), _tiny_data(factory))
        _QUEUE.put(name)
        if not _SESSION.get("worker"):
            threading.Thread(target=_work, name="background-work", daemon=True).start()
            _SESSION["worker"] = True


def _run(name: str) -> None:
    """Compute a queued job in this thread, unless another has started it."""
    job = _JOBS[name]
    with _TAKING:
        if job.running() or job.done():
            return
        job.set_running_or_notify_cancel()
    try:
        job.set_result(BACKGROUND[name](*_ARGS[name]))
    except BaseException as err:  # noqa: BLE001  (the test that needs it raises it)
        job.set_exception(err)


def _work() -> None:
    while True:
        _run(_QUEUE.get())


def background_value(name: str) -> Any:
    """For background work that builds on another's (a notebook on a sweep): its value, computed first if it was
    not yet."""
    _submit(name, _SESSION["factory"])
    _run(name)
    return _JOBS[name].result()


def pytest_collection_finish(session) -> None:
    """Queue the background work the selected tests need, in the order they need it."""
    if session.config.option.collectonly:
        return
    factory = session.config._tmp_path_factory  # the session's tmp_path_factory (pytest's tmpdir plugin)
    needed = dict.fromkeys(name for item in session.items for name in getattr(item, "fixturenames", ())
                           if name in BACKGROUND)
    for name in needed:
        _submit(name, factory)


def pytest_sessionfinish(session) -> None:
    """Background work left running (a test run stopped early): end the processes it started (this process's
    children), so that none outlives the session."""
    if any(not job.done() for job in _JOBS.values()):
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


# ---------------------------------------------------------------- run folders


def copy_run(run_dir: Path, dest: Path, models: bool = False) -> Path:
    """A copy of a finished run folder without its W&B files (and models unless asked) that logs nothing when
    collected or resumed."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("wandb", *([] if models else ["*.safetensors"])))
    config = dest / "run_config.yaml"
    config.write_text(config.read_text().replace("mode: offline", "mode: disabled"))
    return dest


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def leet(run: Path, *flags: str) -> subprocess.CompletedProcess:
    """W&B's own reader of an offline run's ``.wandb`` log (``wandb leet inspect``), called as that command calls it:
    the wandb-core binary, without starting Python; a tool, not a run."""
    from wandb.util import get_core_path

    log = next(run.glob("*.wandb"), run)
    return subprocess.run([get_core_path(), "leet", "inspect", "--no-observability", *flags, "--run-file", str(log),
                           str(run.parent)], capture_output=True, text=True)


def wandb_runs(run_dir: Path) -> list[dict]:
    """What each offline W&B run under ``run_dir`` recorded: name, state, summary, group, job type, history.

    wandb 0.31 writes no summary file offline, so read the .wandb log with ``leet``.
    """
    runs = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*")):
        out = leet(path, "--summary", "--json")
        if out.returncode:  # the log of a process killed while writing it may not parse
            runs.append({"name": None, "state": "unreadable", "summary": {}, "path": path.name})
            continue
        info = json.loads(out.stdout)
        out = leet(path, "--json")
        assert out.returncode == 0, out.stderr
        records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        run = next((r["run"] for r in records if r["type"] == "run"), {})  # a killed run may have none
        info |= {"group": run.get("run_group"), "job_type": run.get("job_type"),
                 "history": [r["history"]["item"] for r in records if r["type"] == "history"]}
        runs.append(info)
    return runs


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The folder of the tiny generated set (train.csv, test.csv), as a tiny run generates it; read-only."""
    return _tiny_data(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_base(tiny_data) -> Path:
    return tiny_data.parent


@pytest.fixture(scope="session")
def tiny_run(tiny_base, tiny_data) -> Path:
    """One complete CV run of the real entry point with offline W&B, on ``tiny_data`` (its ``parent / "data"``);
    read-only for the tests that share it."""
    run_dir = tiny_base / "run"
    cli("cv", *tiny_overrides(tiny_data, run_dir, logger="wandb"))
    return run_dir


@pytest.fixture(scope="session")
def tiny_train(tiny_data) -> pd.DataFrame:
    return pd.read_csv(tiny_data / "train.csv", dtype={"id": str})


# ---------------------------------------------------------------- in-process pieces


@pytest.fixture
def memory_runs():
    """The runs ``logger=memory`` records in this process, empty at the start of the test."""
    from kfold_nlp.track import memory

    memory.RUNS.clear()
    yield memory.RUNS
    memory.RUNS.clear()


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps its state process-wide; a test that builds accelerators gets its own."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


TEXTS = ["The cat sat on the mat.", "A much longer sentence about reading levels of old texts.",
         "Short one.", "Readability depends on words, sentences and ideas."]


@pytest.fixture(scope="session")
def model_cfg():
    """The tiny random BERT's ``model`` group."""
    from omegaconf import OmegaConf

    import kfold_nlp  # noqa: F401  (registers the ${minilm_path:} resolver)

    return OmegaConf.load(ROOT / "conf/model/tiny.yaml")


@pytest.fixture(scope="session")
def batch(model_cfg):
    """``TEXTS`` collated as a training batch: random targets and standard errors (one 0, like CommonLit's anchor)."""
    import torch

    from kfold_nlp.model.regressor import load_tokenizer

    enc = load_tokenizer(model_cfg)(TEXTS, padding=True, return_tensors="pt")
    return dict(enc) | {"target": torch.randn(len(TEXTS), generator=torch.Generator().manual_seed(0)),
                        "index": torch.arange(len(TEXTS)), "standard_error": torch.tensor([0.5, 0.0, 0.45, 0.6])}
