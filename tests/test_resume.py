"""Resume: a CV run killed mid-fold and continued with ``resume=<run folder>`` ends like an uninterrupted one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from filelock import FileLock
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from conftest import (
    assert_stopped_with_one_line,
    cli,
    in_background,
    kill_when,
    read_metrics,
    signal_when,
    start_until,
    tiny_overrides,
)
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv import lock
from kfold_nlp.cv.prepare import check_run_config
from kfold_nlp.errors import DataError
from kfold_nlp.train import snapshot

TEMP = re.compile(r"\..+\.tmp")  # files.atomic_path's temporary names


def resume_overrides(data_dir: Path, run_dir: Path) -> list[str]:
    """The tiny run's overrides, continuing ``run_dir`` through ``resume=`` (which sets hydra.run.dir)."""
    return [o for o in tiny_overrides(data_dir, run_dir) if not o.startswith("hydra.run.dir=")] + [f"resume={run_dir}"]


def untimed(tree):
    """metrics.json without wall-clock and memory fields, which no two runs share."""
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items() if not k.endswith(("_time_s", "_mb"))}
    return tree


def assert_same_results(run_dir: Path, reference: Path) -> None:
    for name in ("oof.csv", "submission.csv"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    assert untimed(read_metrics(run_dir)) == untimed(read_metrics(reference))


def assert_nothing_half_written(run_dir: Path, folds: pd.DataFrame, n_test: int) -> None:
    """Every file is a temporary (dot name, .tmp, or in such a folder) or complete: CSVs have all their rows, a
    snapshot reads whole (the kill may come after a fold's first one, on a fast machine), the rest parse."""
    for path in run_dir.rglob("*"):
        parts = path.relative_to(run_dir).parts
        if not path.is_file() or any(TEMP.fullmatch(p) for p in parts) or path.suffix == ".log" \
                or path.name in lock.FILES:
            continue
        rel = "/".join(parts)
        if re.fullmatch(r"fold_\d+/snapshot(\.old)?", "/".join(parts[:-1])):
            assert snapshot._read(path.parent).state, rel
        elif path.suffix == ".yaml":
            assert yaml.safe_load(path.read_text()), rel
        elif path.suffix == ".json":
            assert json.loads(path.read_text()), rel
        elif path.suffix == ".safetensors":
            assert load_file(path), rel
        elif rel == "folds.csv":
            pd.testing.assert_frame_equal(pd.read_csv(path, dtype={"id": str}), folds)
        elif m := re.fullmatch(r"fold_(\d+)/(oof|test_pred)\.csv", rel):
            rows = (folds["fold"] == int(m[1])).sum() if m[2] == "oof" else n_test
            frame = pd.read_csv(path)
            assert len(frame) == rows and frame["pred"].notna().all(), rel
        else:
            raise AssertionError(f"unexpected file {rel}")


RUN = [sys.executable, "-m", "kfold_nlp"]


@in_background
def killed_in_fold_1(base: Path, data: Path) -> tuple[Path, Path]:
    """The tiny run with offline W&B, SIGKILLed while fold 1 trains (its progress bar has started): fold 1's W&B run
    is left unfinished. (the folder, for the one test that resumes it where it is: W&B ids name their folder; a copy
    of it as it was, without W&B's files, for the others to copy)."""
    killed = kill_when([*RUN, *tiny_overrides(data, base / "run", logger="wandb")], stderr="fold 1")
    assert killed["met"] and killed["returncode"] == -signal.SIGKILL, killed["stderr"]
    shutil.copytree(base / "run", base / "as_killed", ignore=shutil.ignore_patterns("wandb"))  # mtimes kept
    return base / "run", base / "as_killed"


@pytest.mark.process  # kill -9
def test_killed_mid_fold_then_resumed_equals_an_uninterrupted_run(killed_in_fold_1, tiny_run, tiny_data, tmp_path):
    """SIGKILL while fold 1 trains (its progress bar has started), then ``resume=``: fold 0 is kept, fold 1
    restarts (or continues from its epoch-end snapshot), and oof.csv, submission.csv and metrics.json equal the
    uninterrupted run's."""
    data, run_dir = tiny_data, tmp_path / "run"
    shutil.copytree(killed_in_fold_1[1], run_dir)  # mtimes kept (copy2)
    assert (run_dir / "fold_0" / "result.json").exists() and not (run_dir / "fold_1" / "result.json").exists()
    assert not (run_dir / "oof.csv").exists() and not (run_dir / "metrics.json").exists()
    reference_folds = pd.read_csv(tiny_run / "folds.csv", dtype={"id": str})
    assert_nothing_half_written(run_dir, reference_folds, n_test=6)
    kept = (run_dir / "fold_0" / "model.safetensors").stat().st_mtime_ns

    cli("cv", *resume_overrides(data, run_dir))
    assert (run_dir / "fold_0" / "model.safetensors").stat().st_mtime_ns == kept  # fold 0 not retrained
    assert_same_results(run_dir, tiny_run)
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()  # a resumed run is the latest too
    assert not [p for p in run_dir.rglob("*") if TEMP.fullmatch(p.name)]


@pytest.mark.slow
def test_resume_after_a_kill_while_fold_2_was_writing(tiny_run, tiny_data, tmp_path):
    """A finished run made to look killed while fold 2 wrote its files (no result.json, a truncated oof.csv, a stale
    temporary, no top-level outputs): resuming retrains fold 2 only and reproduces the run."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("wandb"))
    fold2 = run_dir / "fold_2"
    (fold2 / "result.json").unlink()
    text = (fold2 / "oof.csv").read_text()
    (fold2 / "oof.csv").write_text(text[: len(text) // 2])
    (fold2 / ".test_pred.csv.x1y2.tmp").write_text("id,pred\n1,")
    for name in ("oof.csv", "metrics.json", "submission.csv"):
        (run_dir / name).unlink()
    kept = {f: (run_dir / f"fold_{f}" / "result.json").stat().st_mtime_ns for f in (0, 1)}

    cli("cv", *resume_overrides(tiny_data, run_dir))
    assert {f: (run_dir / f"fold_{f}" / "result.json").stat().st_mtime_ns for f in (0, 1)} == kept
    assert (fold2 / "oof.csv").read_bytes() == (tiny_run / "fold_2" / "oof.csv").read_bytes()
    assert not (fold2 / ".test_pred.csv.x1y2.tmp").exists()
    assert_same_results(run_dir, tiny_run)


def test_a_run_folder_is_only_continued_with_its_own_config(tmp_path):
    def cfg(*overrides):
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            return compose("config", ["model=tiny", *overrides])

    check_run_config(cfg(), tmp_path)  # first start: saves it
    saved = (tmp_path / "run_config.yaml").read_text()
    check_run_config(cfg(f"resume={tmp_path}", "logger.mode=offline"), tmp_path)  # resume and logger may differ
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("what Hydra wrote for the refused start")
    with pytest.raises(DataError, match=r"optimizer\.lr, trainer\.epochs\)$"):
        check_run_config(cfg("optimizer.lr=1e-3", "trainer.epochs=5"), tmp_path)
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == saved  # predict reads the run's own config again
    assert (tmp_path / "run_config.yaml").read_text() == saved


def test_a_cut_run_config_of_a_folder_started_into_again_is_one_line(tmp_path):
    """A start pinned into an existing folder (no ``resume=``) reads its run_config.yaml too: cut short, it is
    refused naming the file, not a YAML traceback."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", ["model=tiny"])
    check_run_config(cfg, tmp_path)
    path = tmp_path / "run_config.yaml"
    path.write_text(path.read_text()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"run_config.yaml: cut short \(no line end after its last line\); restore it"):
        check_run_config(cfg, tmp_path)


KILL_POINTS = {  # when to send SIGKILL: (paths that exist, patterns that match) in the run folder
    "fold 1 has its first snapshot": (["fold_1/snapshot/state.json"], []),
    "fold 0 writes its second snapshot": (["fold_0/snapshot/state.json"], ["fold_0/.snapshot.*.tmp"]),
}
EVERY = ["trainer.snapshot_every=1"]


def kill_at(overrides: list[str], run_dir: Path, point: str) -> None:
    """Start a CV run and SIGKILL it at ``KILL_POINTS[point]`` (tests/kill_when.py)."""
    exists, globs = KILL_POINTS[point]
    killed = kill_when([*RUN, *overrides], exists=[run_dir / p for p in exists], globs=[run_dir / p for p in globs])
    assert killed["met"], f"the run ended before the kill point:\n{killed['stderr']}"


@in_background
def killed_at_fold_1s_snapshot(folder: Path, data: Path) -> Path:
    """The tiny run with offline W&B and a snapshot every step, SIGKILLed as soon as fold 1 has its first snapshot;
    each test resumes a copy."""
    kill_at([*tiny_overrides(data, folder / "run", logger="wandb"), *EVERY], folder / "run",
            "fold 1 has its first snapshot")
    return folder / "run"


@in_background
def killed_writing_a_snapshot(folder: Path, data: Path) -> Path:
    """The tiny run with a snapshot every step, SIGKILLed while fold 0 writes its second snapshot."""
    kill_at([*tiny_overrides(data, folder / "run"), *EVERY], folder / "run", "fold 0 writes its second snapshot")
    return folder / "run"


@pytest.mark.process  # kill -9
@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_after_or_during_a_snapshot_resumes_mid_fold_to_the_same_results(point, tiny_run, tiny_data, tmp_path,
                                                                                 killed_at_fold_1s_snapshot,
                                                                                 killed_writing_a_snapshot):
    """SIGKILL as soon as fold 1 has a snapshot (mid-fold), or while fold 0 writes one; ``resume=`` continues the
    fold from its snapshot (the log says from which step) and ends with the uninterrupted run's files."""
    data, run_dir = tiny_data, tmp_path / "run"
    killed = {"fold 1 has its first snapshot": killed_at_fold_1s_snapshot,
              "fold 0 writes its second snapshot": killed_writing_a_snapshot}[point]
    shutil.copytree(killed, run_dir, ignore=shutil.ignore_patterns("wandb"))
    assert not (run_dir / "metrics.json").exists()
    assert list(run_dir.glob("fold_*/snapshot*/state.json"))  # a complete snapshot survived the kill

    cli("cv", *resume_overrides(data, run_dir), *EVERY)
    assert_same_results(run_dir, tiny_run)
    log = (run_dir / "run.log").read_text()
    assert re.search(r"fold \d: continued from its snapshot at step [1-9]", log), log[-2000:]
    assert not list(run_dir.glob("fold_*/snapshot*"))  # removed once each fold finished


@pytest.mark.process  # the killed run it damages
@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt", "state.json"])
def test_a_damaged_snapshot_is_set_aside_and_its_fold_restarts(damaged, killed_at_fold_1s_snapshot, tiny_run,
                                                               tiny_data, tmp_path):
    """A truncated snapshot file used to make the fold unresumable forever: now the snapshot is renamed to
    ``snapshot.damaged``, one warning names the file, the fold trains from its beginning and the run ends with the
    uninterrupted run's files (and without the damaged snapshot)."""
    run_dir = shutil.copytree(killed_at_fold_1s_snapshot, tmp_path / "run", ignore=shutil.ignore_patterns("wandb"))
    path = run_dir / "fold_1" / "snapshot" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    proc = cli("cv", *resume_overrides(tiny_data, run_dir), *EVERY)
    warning = [line for line in proc.stdout.splitlines() if "is unreadable" in line]
    assert len(warning) == 1 and f"warning: {path.parent} is unreadable (" in warning[0], proc.stdout
    assert warning[0].endswith(f"; set aside as {path.parent}.damaged; the fold restarts from its beginning")
    assert "fold 1: continued from its snapshot" not in proc.stdout
    assert_same_results(run_dir, tiny_run)
    assert not list(run_dir.glob("fold_*/snapshot*"))


@pytest.mark.process  # kill -9
def test_resuming_after_a_failed_fold_replaces_its_wandb_run(killed_in_fold_1, tiny_data):
    """Fold 1 killed mid-way (its W&B run left unfinished), then the run resumed twice (the second time finished):
    still one W&B run per fold and one ``-cv`` run, not one more per attempt."""
    from conftest import wandb_runs

    run_dir = killed_in_fold_1[0]
    overrides = tiny_overrides(tiny_data, run_dir, logger="wandb")
    resume = [o for o in overrides if not o.startswith("hydra.run.dir=")] + [f"resume={run_dir}"]
    cli("cv", *resume)
    cli("cv", *resume)  # resuming a finished run
    names = sorted(r["name"] for r in wandb_runs(run_dir))
    assert names == ["baseline-cv", "baseline-fold0", "baseline-fold1", "baseline-fold2"], names


@pytest.mark.process  # kill -9
def test_a_fold_continued_from_its_snapshot_continues_its_wandb_run(killed_at_fold_1s_snapshot, tiny_data, tmp_path):
    """Killed right after fold 1's first snapshot (W&B run unfinished): the resumed fold continues that W&B run."""
    from conftest import wandb_runs

    run_dir = shutil.copytree(killed_at_fold_1s_snapshot, tmp_path / "run")  # the W&B id is in the snapshot
    overrides = [*tiny_overrides(tiny_data, run_dir, logger="wandb"), *EVERY]
    recorded = json.loads((run_dir / "fold_1" / "snapshot" / "state.json").read_text())["tracker_id"]
    cli("cv", *[o for o in overrides if not o.startswith("hydra.run.dir=")], f"resume={run_dir}")
    (continued,) = [r for r in wandb_runs(run_dir) if r.get("name") == "baseline-fold1" and r["state"] == "finished"]
    # The same id, or (while wandb's service still holds it for the killed process) a new run that names it.
    named = continued["summary"].get("continues_run_id")
    if named is None:  # the killed attempt's folder goes if its log holds nothing: no empty run beside this one
        attempts = [p for p in (run_dir / "wandb").glob("offline-run-*") if "-fold1-" in p.name]
        assert 1 <= len(attempts) <= 2 and all(p.name.endswith(recorded) for p in attempts), attempts
        assert all(f.stat().st_size >= 64 for p in attempts for f in p.glob("*.wandb")), attempts
    else:
        assert named == recorded


@pytest.mark.slow
@pytest.mark.parametrize("how", ["resume", "collect"])
def test_a_finished_fold_never_keeps_its_snapshot(how, tiny_run, tiny_data, tmp_path):
    """Killed between fold 1's result.json and its snapshot's removal: the next start (or collect) removes the
    snapshot, and the results stay the run's."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("wandb"))
    for name in ("snapshot", "snapshot.old", ".snapshot.a1b2.tmp"):
        (run_dir / "fold_1" / name).mkdir()
        (run_dir / "fold_1" / name / "state.json").write_text("{}")
    if how == "resume":
        cli("cv", *resume_overrides(tiny_data, run_dir))
    else:
        cli("collect", run_dir)
    assert not [p.name for p in (run_dir / "fold_1").iterdir() if "snapshot" in p.name]
    for name in ("oof.csv", "submission.csv"):
        assert (run_dir / name).read_bytes() == (tiny_run / name).read_bytes(), name


@pytest.mark.slow
def test_a_finished_run_is_not_cut_to_fewer_folds(tiny_run, tiny_data, tmp_path):
    """Resuming a collected run with a narrower ``cv.folds`` would rewrite its oof.csv and bag with fold 0 only:
    refused with one line, every result as it was; a parallel fold job (``collect=false``) is still let in."""
    data, run_dir = tiny_data, tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("wandb"))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts
              and p.name != "run.log"}
    proc = cli("cv", *resume_overrides(data, run_dir), "cv.folds=[0]", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {run_dir / 'metrics.json'}: the results cover folds [0, 1, 2]; "
                                   f"cv.folds=[0] would cut them to fewer; resume with cv.folds covering [0, 1, 2] "
                                   f"(or null), or start a new run")
    assert {p: p.read_bytes() for p in before} == before
    assert (run_dir / ".hydra" / "config.yaml").read_text() == (run_dir / "run_config.yaml").read_text()

    cli("cv", *tiny_overrides(data, tmp_path / "job"), f"output={run_dir}", "collect=false", "cv.folds=[0]")
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.slow
def test_resuming_through_latest_keeps_latest_pointing_at_the_real_folder(tiny_run, tiny_data, tmp_path):
    """``RESUME=outputs/<name>/latest`` continues the folder the link names, and ``latest`` still names it (it
    used to become ``latest -> latest``), so a second resume through it works too."""
    data, real = tiny_data, tmp_path / "outputs" / "baseline" / "2026-01-01_00-00-00"
    shutil.copytree(tiny_run, real, ignore=shutil.ignore_patterns("wandb"))
    latest = real.parent / "latest"
    latest.symlink_to(real.name)
    for _ in range(2):
        cli("cv", *resume_overrides(data, latest))
        assert latest.is_symlink() and Path(latest.readlink()).name == real.name
        assert latest.resolve() == real.resolve()
    assert sorted(p.name for p in real.parent.iterdir()) == [real.name, "latest", "latest-synthetic"]
    assert (real.parent / "latest-synthetic").resolve() == real.resolve()  # the newest on this data set too
    for name in ("oof.csv", "submission.csv"):
        assert (real / name).read_bytes() == (tiny_run / name).read_bytes(), name


@pytest.mark.slow
def test_resume_from_the_folder_alone_continues_the_run_with_its_own_config(tiny_data, tmp_path):
    """Started with non-default overrides and interrupted (Ctrl-C, in fold 1): ``resume=<folder>`` alone continues
    it with the config in its run_config.yaml (name, folds, batch size, regularizer), ending like the uninterrupted
    run; an override that disagrees with that config is refused with one line naming the key."""
    data, run_dir = tiny_data, tmp_path / "run"
    overrides = [o for o in tiny_overrides(data, run_dir) if not o.startswith("regularizer=")]
    overrides += ["regularizer=msd", "cv.n_splits=2", "trainer.batch_size=4"]
    reference = tmp_path / "reference"
    cli("cv", *[o if not o.startswith("hydra.run.dir") else f"hydra.run.dir={reference}" for o in overrides])
    with signal_when(signal.SIGINT, lambda: (run_dir / "fold_0" / "result.json").exists()):
        interrupted = cli("cv", *overrides, check=False)
    assert interrupted.returncode == 130 and not (run_dir / "fold_1" / "result.json").exists(), interrupted.stderr
    saved = (run_dir / "run_config.yaml").read_text()
    done = cli("cv", f"resume={run_dir}")  # nothing else typed
    assert "msd: resuming folder" in done.stdout and "regularizer msd" in done.stdout
    assert (run_dir / "run_config.yaml").read_text() == saved
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "oof.csv"), pd.read_csv(reference / "oof.csv"))
    assert read_metrics(run_dir)["cv"]["rmse"] == read_metrics(reference)["cv"]["rmse"]

    before = {p: p.read_bytes() for p in run_dir.rglob("*")  # the results, not Hydra's own files or the log
              if p.is_file() and not {"wandb", ".hydra"} & set(p.parts) and p.name != "run.log"}
    refused = cli("cv", f"resume={run_dir}", "trainer.batch_size=8", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().startswith(f"error: {run_dir / 'run_config.yaml'}: this run was started with other "
                                             f"values of trainer.batch_size;")
    assert {p: p.read_bytes() for p in before} == before  # the finished run is untouched


@contextmanager
def another_writer(folder: Path):
    """What another process holding ``folder``'s lock (``lock.hold``) leaves: the lock taken, through a file
    description of its own (flock refuses every other one, this process's too), and the holder's pid beside it."""
    other = FileLock(folder / lock.LOCK, timeout=0)
    other.acquire()
    (folder / lock.HOLDER).write_text(f"{os.getpid()}\n")
    try:
        yield os.getpid()
    finally:
        other.release()


def every_file(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("held, start", [("run", "resume"), ("run", "pinned"), ("run", "launcher"),
                                         ("run", "collect"), ("fold", "resume")])
def test_a_second_writer_of_a_run_folder_is_refused_and_changes_nothing(held, start, tiny_run, tiny_data, tmp_path):
    """Another writer holds the run folder's lock, or fold 1's (a fold job whose launcher died): a resume, a start
    pinned to the folder, a launcher start and a collect are refused with one line naming its process, before
    anything is written: every file of the folder, Hydra's own and the log included, is as it was."""
    data, run_dir = tiny_data, tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("wandb"))
    folder = run_dir if held == "run" else run_dir / "fold_1"
    with another_writer(folder) as pid:
        before = every_file(run_dir)
        args = {"resume": resume_overrides(data, run_dir), "pinned": tiny_overrides(data, run_dir),
                "launcher": [*resume_overrides(data, run_dir), "launcher=joblib"], "collect": [str(run_dir)]}[start]
        proc = cli("collect" if start == "collect" else "cv", *args, check=False)
    what = "run folder" if held == "run" else "fold"
    assert proc.returncode == 2 and proc.stderr.strip() == (f"error: {folder.resolve()}: another process (pid "
                                                            f"{pid}) is writing this {what}; wait for it or stop it")
    assert every_file(run_dir) == before


@pytest.fixture(scope="module")
def paused_then_terminated(tiny_data, tmp_path_factory) -> SimpleNamespace:
    """A run in another process, paused (SIGSTOP) while it trains fold 1 so that a resume is tried beside it (it
    cannot finish first), continued (SIGCONT) until fold 1 is done, then sent SIGTERM (a timeout, a preemption):
    the refused resume, whether it changed a file, the run's exit status and what it printed last."""
    run_dir = tmp_path_factory.mktemp("paused") / "run"
    proc = start_until(tiny_overrides(tiny_data, run_dir), b"fold 1")
    try:
        proc.send_signal(signal.SIGSTOP)
        before = every_file(run_dir)
        refused = cli("cv", *resume_overrides(tiny_data, run_dir), check=False)
        unchanged = every_file(run_dir) == before
        proc.send_signal(signal.SIGCONT)
        while not (run_dir / "fold_1" / "result.json").exists():  # it goes on
            assert proc.poll() is None, "the run ended before fold 1 did"
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[1].decode()
    finally:
        proc.kill()
        proc.wait()
    return SimpleNamespace(run_dir=run_dir, pid=proc.pid, refused=refused, unchanged=unchanged,
                           returncode=proc.returncode, stderr=rest)


@pytest.mark.process  # SIGTERM to a running process
def test_sigterm_ends_with_one_line_naming_the_folder_and_the_resume_command(paused_then_terminated):
    """SIGTERM (a timeout, a preemption): one line naming the folder and the command that resumes it, exit 143
    (Ctrl-C: tests/test_cli.py)."""
    run = paused_then_terminated
    assert_stopped_with_one_line(run.returncode, run.stderr, 143, "terminated", run.run_dir)


@pytest.mark.process  # a run in another process, paused and continued
def test_a_resume_of_a_run_still_training_is_refused_and_the_run_goes_on(paused_then_terminated, tiny_run,
                                                                         tiny_data):
    """A resume started while the run trains fold 1 (paused meanwhile, so that it cannot finish first) is refused,
    naming the run's pid, and changes no file; the run goes on (it finished fold 1 before its SIGTERM), and its
    resume ends as if it had been alone."""
    run = paused_then_terminated
    assert run.refused.returncode == 2 and run.refused.stderr.strip() == (
        f"error: {run.run_dir.resolve()}: another process (pid {run.pid}) is writing this run folder; wait for it "
        f"or stop it")
    assert run.unchanged and (run.run_dir / "fold_1" / "result.json").exists()
    cli("cv", *resume_overrides(tiny_data, run.run_dir))
    assert_same_results(run.run_dir, tiny_run)
