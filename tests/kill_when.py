"""Start a command and signal it the moment a condition holds, polled every 2 ms by a process of its own: a test's
thread would share its interpreter with other work and could signal too late (after the step it aims at).

``python tests/kill_when.py [--stderr TEXT] [--exists PATH ...] [--glob PATTERN ...] [--children] -- COMMAND ...``

The condition: every given one holds (TEXT seen on the command's stderr, each PATH exists, each glob PATTERN
matches). Then SIGKILL goes to the command (and this waits for the processes it had started, such as W&B's
service, to end too, so that the folder they wrote holds still), or with ``--children`` to the command's own child
processes (a torchrun agent's worker), the command going on. Prints one JSON line: whether the condition was met,
the command's exit status, the tail of its stderr.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import select
import signal
import subprocess
import sys

import psutil


def main(argv: list[str]) -> None:
    # A file-size limit a test sets for a moment in the pytest process (test_environment) is inherited by a run
    # started in that moment from a background fixture: the runs started here never test it, so lift it.
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.getrlimit(resource.RLIMIT_FSIZE)[1],) * 2)
    parser = argparse.ArgumentParser()
    parser.add_argument("--stderr", default=None)
    parser.add_argument("--exists", action="append", default=[])
    parser.add_argument("--glob", action="append", default=[])
    parser.add_argument("--children", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen, met = b"", False
    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    while not met and proc.poll() is None:
        if select.select([fd], [], [], 0.002)[0]:
            seen += os.read(fd, 65536)
        met = ((args.stderr is None or args.stderr.encode() in seen)
               and all(os.path.exists(p) for p in args.exists) and all(glob.glob(p) for p in args.glob))
    if met and args.children:
        for child in psutil.Process(proc.pid).children():
            child.kill()
    elif met:
        started = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        psutil.wait_procs(started, timeout=30)
    os.set_blocking(fd, True)
    seen += proc.communicate(timeout=600)[1]
    print(json.dumps({"met": met, "returncode": proc.returncode, "stderr": seen.decode(errors="replace")[-3000:]}))


if __name__ == "__main__":
    main(sys.argv[1:])
