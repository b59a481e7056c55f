"""Running a sweep: one launch.sh process per unfinished run, one after another, with signals passed on."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from ..rundir import read_json, write_json
from .plan import Sweep, launch_argv
from .report import (
    STATUS_FILE,
    STOPPED_CODES,
    is_done,
    markdown,
    read_status,
    run_state,
    write_summary,
)


def _record(root: str, name: str, exit_code: int, seconds: float) -> None:
    data = read_json(os.path.join(root, STATUS_FILE)) or {}
    data.setdefault("runs", {})[name] = {
        "exit_code": exit_code,
        "seconds": round(seconds, 1),
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(os.path.join(root, STATUS_FILE), data, indent=2)


def run_sweep(
    sweep: Sweep,
    launch_sh: str | None = None,
    env: dict | None = None,
    echo: Callable[[str], None] | None = None,
    epochs: dict | None = None,
) -> int:
    """Launch the runs that are not finished, one after another; write the summary.
    ``epochs``: each run's train.epochs (from ``check``), so a longer schedule is resumed.

    Returns 0 when every run finished, 1 when any failed (the others still ran), 143
    (or 130) when the sweep itself was told to stop: the run in progress gets the signal,
    checkpoints, and the sweep stops after it."""
    echo = echo or (lambda text: print(text, flush=True))  # in order with the runs' output
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHON", sys.executable)  # launch.sh runs train.py with this interpreter
    os.makedirs(sweep.root, exist_ok=True)
    stop = {"signal": None}
    child: dict = {"proc": None}

    def on_signal(signum, frame):
        stop["signal"] = signum
        if child["proc"] is not None and child["proc"].poll() is None:
            try:
                child["proc"].send_signal(signum)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    failed = []
    try:
        total = len(sweep.runs)
        for i, run in enumerate(sweep.runs, 1):
            if stop["signal"] is not None:
                break
            if is_done(run, read_status(sweep.root), (epochs or {}).get(run.name)):
                echo(f"[{i}/{total}] {run.name}: finished, skipped")
                continue
            argv = launch_argv(sweep, run, launch_sh)
            echo(f"[{i}/{total}] {run.name}: {shlex.join(argv)}")
            start = time.monotonic()
            # one process group with us: a terminal's Ctrl-C or a scheduler's group signal
            # reaches launch.sh directly; a signal sent to this process alone is passed on
            child["proc"] = subprocess.Popen(argv, env=env)
            code = child["proc"].wait()
            child["proc"] = None
            _record(sweep.root, run.name, code, time.monotonic() - start)
            state = run_state(run, read_status(sweep.root))
            if code != 0 or state != "finished":
                if stop["signal"] is not None or code in STOPPED_CODES:
                    echo(f"[{i}/{total}] {run.name}: stopped (exit {code}); run the sweep again to resume")
                    stop["signal"] = stop["signal"] or signal.SIGTERM
                else:
                    echo(f"[{i}/{total}] {run.name}: FAILED (exit {code}, state {state}); going on")
                    failed.append(run.name)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        csv_path, md_path, rows = write_summary(sweep)
    echo(markdown(sweep, rows))
    echo(f"Summary: {csv_path}, {md_path}")
    if stop["signal"] is not None:
        return 130 if stop["signal"] == signal.SIGINT else 143
    if failed:
        echo(f"{len(failed)} run(s) failed: {', '.join(failed)}")
        return 1
    return 0
