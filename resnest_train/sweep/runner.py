"""Running a sweep: one launch.sh process per unfinished run, up to ``parallel`` at once, with
signals passed on.

Each of the ``parallel`` slots owns its GPUs (``CUDA_VISIBLE_DEVICES``), its CPU cores (pinned,
with ``OMP_NUM_THREADS`` set to their count) and a rendezvous port (``MASTER_PORT``), so runs on
one node never share a device, a core or a port. One run at a time keeps the terminal (its output
goes straight through); several at once write ``<root>/logs/<run>.log`` and the sweep prints one
progress line per run.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

from ..rundir import read_json, write_json
from .plan import Run, Sweep, SweepError, launch_argv
from .report import (
    STATUS_FILE,
    STOPPED_CODES,
    is_done,
    markdown,
    read_status,
    run_state,
    write_summary,
)

POLL_S = 0.5  # seconds between two looks at the running processes
PROGRESS_S = 30.0  # seconds between two progress reports of parallel runs


@dataclass(frozen=True)
class Slot:
    """Where one of the parallel runs trains: ``gpus`` (CUDA_VISIBLE_DEVICES ids; () hides every
    GPU; None leaves the variable alone) and ``cpus`` (cores it is pinned to; () pins nothing)."""

    index: int
    gpus: tuple[str, ...] | None = None
    cpus: tuple[int, ...] = ()


def visible_gpus(env: dict) -> list[str]:
    """The GPU ids the sweep may hand out: CUDA_VISIBLE_DEVICES's entries when set, else every
    device torch sees (``torch.cuda.device_count``); [] on a CPU machine."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def available_cpus() -> list[int]:
    """The cores this process may run on (its affinity), or 0..cpu_count-1 where there is no affinity."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def plan_slots(parallel: int, gpus_per_run: int | None, gpus: list[str], cpus: list[int]) -> list[Slot]:
    """The ``parallel`` slots: consecutive groups of ``gpus_per_run`` GPUs (default: the visible
    GPUs shared out evenly, none on a CPU machine; 0: CPU runs) and, with several slots,
    consecutive equal groups of ``cpus`` (none when there are fewer cores than slots).
    Raises SweepError when the GPUs do not go round."""
    if parallel < 1:
        raise SweepError(f"--parallel must be at least 1, got {parallel}.")
    if gpus_per_run is not None and gpus_per_run < 0:
        raise SweepError(f"--gpus-per-run must be 0 (CPU runs) or more, got {gpus_per_run}.")
    if gpus_per_run is None:
        gpus_per_run = len(gpus) // parallel if gpus else 0
        if gpus and gpus_per_run == 0:
            raise SweepError(
                f"--parallel {parallel} runs cannot get a GPU each: {len(gpus)} visible "
                f"(CUDA_VISIBLE_DEVICES={','.join(gpus)}). Lower --parallel, or add --gpus-per-run 0 for CPU runs."
            )
    if parallel * gpus_per_run > len(gpus):
        raise SweepError(
            f"--parallel {parallel} x --gpus-per-run {gpus_per_run} needs {parallel * gpus_per_run} GPUs; "
            f"{len(gpus)} are visible{' (' + ','.join(gpus) + ')' if gpus else ''}. Lower one of them."
        )
    per_cpu = len(cpus) // parallel if parallel > 1 else 0
    slots = []
    for i in range(parallel):
        if gpus_per_run:
            own_gpus = tuple(gpus[i * gpus_per_run : (i + 1) * gpus_per_run])
        else:
            own_gpus = () if gpus else None
        if parallel == 1 and gpus_per_run == len(gpus):
            own_gpus = None  # one run uses every visible GPU: nothing to narrow
        slots.append(Slot(i, own_gpus, tuple(cpus[i * per_cpu : (i + 1) * per_cpu])))
    return slots


def free_port() -> int:
    """A TCP port no one listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slot_env(slot: Slot, env: dict, parallel: int) -> dict:
    """The environment of a run in ``slot``: its GPUs, and with several slots its own rendezvous
    port (``MASTER_PORT``, for launch.sh's c10d or static rendezvous; the default one-node
    rendezvous picks its own) and ``OMP_NUM_THREADS`` = its cores (1 when it has none of its own)."""
    out = dict(env)
    if slot.gpus is not None:
        out["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
    if parallel > 1:
        out["MASTER_PORT"] = str(free_port())
        out["OMP_NUM_THREADS"] = str(max(1, len(slot.cpus)))
    return out


class Source(Protocol):
    """What the runner runs: a sweep's fixed list of runs, or a search's trials as it samples them."""

    total: int  # for "[i/total]"

    def next_run(self) -> tuple[int, Run] | None:
        """The next run to launch and its 1-based number, or None when there is none left."""

    def should_stop(self, run: Run) -> bool:
        """Called while ``run`` trains: True stops it now (a search's pruner)."""

    def ended(self, run: Run, state: str) -> None:
        """``run``'s process exited, leaving it in ``state`` (see ``report.run_state``)."""


class SweepRuns:
    """The runs of a sweep file in order, skipping finished, diverged and pruned ones (``report.is_done``)."""

    def __init__(self, sweep: Sweep, epochs: dict | None, echo: Callable[[str], None]):
        self.sweep, self.epochs, self.echo = sweep, epochs or {}, echo
        self.total = len(sweep.runs)
        self._next = 0

    def next_run(self) -> tuple[int, Run] | None:
        while self._next < self.total:
            self._next += 1
            run = self.sweep.runs[self._next - 1]
            status = read_status(self.sweep.root)
            if not is_done(run, status, self.epochs.get(run.name)):
                return self._next, run
            state = run_state(run, status)
            why = ""
            if state == "diverged":
                why = f" (it would diverge again; change its settings, or delete {run.output_dir} to run it again)"
            self.echo(f"[{self._next}/{self.total}] {run.name}: {state}, skipped{why}")
        return None

    def should_stop(self, run: Run) -> bool:
        return False

    def ended(self, run: Run, state: str) -> None:
        pass


@dataclass
class Job:
    """A run in progress: its number, slot, process and (with several slots) its log file."""

    number: int
    run: Run
    slot: Slot
    proc: subprocess.Popen
    start: float
    log: IO | None = None
    log_path: str = ""
    pruned: bool = False  # the sweep stopped it for its search's pruner
    shown: str = field(default="")  # the progress line printed last


def record(root: str, name: str, exit_code: int, seconds: float, pruned: bool = False) -> None:
    """Note a launch's exit in ``<root>/sweep_status.json`` (with ``pruned`` when the sweep stopped it)."""
    data = read_json(os.path.join(root, STATUS_FILE)) or {}
    entry = {"exit_code": exit_code, "seconds": round(seconds, 1), "ended": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if pruned:
        entry["pruned"] = True
    data.setdefault("runs", {})[name] = entry
    write_json(os.path.join(root, STATUS_FILE), data, indent=2)


def last_progress(path: str) -> str:
    """The last training-progress line (``epoch ...``) of a run's log; "" before the first."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.startswith("epoch ")), "")


def run_sweep(
    sweep: Sweep,
    launch_sh: str | None = None,
    env: dict | None = None,
    echo: Callable[[str], None] | None = None,
    epochs: dict | None = None,
    parallel: int = 1,
    gpus_per_run: int | None = None,
    source: Source | None = None,
    progress_every: float = PROGRESS_S,
) -> int:
    """Launch the runs of ``source`` (default: the sweep's unfinished runs, ``SweepRuns``), up to
    ``parallel`` at once, each in its own ``Slot``; write the summary. ``epochs``: each run's
    train.epochs (from ``check``), so a longer schedule is resumed.

    Returns 0 when no run failed (diverged and pruned runs are results, not failures), 1 when
    any failed (the others still ran), 143 (or 130) when the sweep itself was told to stop:
    every run in progress gets the signal and checkpoints, no new one starts, and the same
    command resumes them. Raises SweepError when the slots cannot be planned."""
    echo = echo or (lambda text: print(text, flush=True))  # in order with the runs' output
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHON", sys.executable)  # launch.sh runs train.py with this interpreter
    if parallel > 1 and "master_port" in sweep.launch:
        raise SweepError(
            f"'launch: master_port' in {sweep.file} would give all {parallel} parallel runs one port; "
            "drop it (each run gets its own MASTER_PORT)."
        )
    slots = plan_slots(parallel, gpus_per_run, visible_gpus(env), available_cpus())
    source = source or SweepRuns(sweep, epochs, echo)
    os.makedirs(sweep.root, exist_ok=True)
    stop: dict = {"signal": None}
    jobs: list[Job] = []

    def on_signal(signum, frame):
        stop["signal"] = signum
        for job in jobs:
            if job.proc.poll() is None:
                try:
                    job.proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    failed: list[str] = []
    free = list(slots)
    more = True
    last_report = time.monotonic()
    try:
        while True:
            while free and more and stop["signal"] is None:
                item = source.next_run()
                if item is None:
                    more = False
                else:
                    jobs.append(_start(sweep, *item, free.pop(0), source.total, launch_sh, env, parallel, echo))
            if not jobs:
                break
            time.sleep(POLL_S)
            for job in list(jobs):
                code = job.proc.poll()
                if code is None:
                    if not job.pruned and stop["signal"] is None and source.should_stop(job.run):
                        echo(f"[{job.number}/{source.total}] {job.run.name}: pruned (trails the median); stopping it")
                        job.pruned = True
                        job.proc.send_signal(signal.SIGTERM)
                    continue
                jobs.remove(job)
                free = sorted(free + [job.slot], key=lambda s: s.index)
                state = _finish(sweep, job, code, source.total, echo)
                source.ended(job.run, state)
                if state == "failed":
                    failed.append(job.run.name)
                elif state == "preempted" and stop["signal"] is None:
                    stop["signal"] = signal.SIGTERM  # stopped from outside (a group signal): stop the sweep too
            if parallel > 1 and time.monotonic() - last_report >= progress_every:
                last_report = time.monotonic()
                _report_progress(jobs, source.total, echo)
    finally:
        for job in jobs:  # only after an exception: wait for the runs, which got the signal
            job.proc.wait()
            if job.log:
                job.log.close()
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


def _start(
    sweep: Sweep,
    number: int,
    run: Run,
    slot: Slot,
    total: int,
    launch_sh: str | None,
    env: dict,
    parallel: int,
    echo: Callable[[str], None],
) -> Job:
    argv = launch_argv(sweep, run, launch_sh)
    where = []
    if slot.gpus is not None:
        where.append(f"GPUs {','.join(slot.gpus) or 'none'}")
    if slot.cpus:
        where.append(f"cores {','.join(map(str, slot.cpus))}")
    log, log_path = None, ""
    if parallel > 1:
        log_path = os.path.join(sweep.root, "logs", f"{run.name}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        log = open(log_path, "a")
        log.write(f"==> {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n")
        log.flush()
        where.append(f"log {log_path}")
    echo(f"[{number}/{total}] {run.name}: {shlex.join(argv)}" + (f"  ({'; '.join(where)})" if where else ""))
    pin = slot.cpus
    # one process group with us: a terminal's Ctrl-C or a scheduler's group signal reaches
    # launch.sh directly; a signal sent to this process alone is passed on
    proc = subprocess.Popen(
        argv,
        env=slot_env(slot, env, parallel),
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin and hasattr(os, "sched_setaffinity") else None,
    )
    return Job(number, run, slot, proc, time.monotonic(), log, log_path)


def _finish(sweep: Sweep, job: Job, code: int, total: int, echo: Callable[[str], None]) -> str:
    """Record a run's exit, say what became of it; returns its state."""
    if job.log:
        job.log.close()
    record(sweep.root, job.run.name, code, time.monotonic() - job.start, pruned=job.pruned and code != 0)
    state = run_state(job.run, read_status(sweep.root))
    head = f"[{job.number}/{total}] {job.run.name}"
    if state == "finished":
        echo(f"{head}: finished")
    elif state == "pruned":
        echo(f"{head}: pruned (exit {code}); its checkpoint stays, it is not launched again")
    elif state == "diverged":
        echo(f"{head}: DIVERGED (exit {code}); see its output. It is not launched again")
    elif state == "preempted" or code in STOPPED_CODES:
        state = "preempted"
        echo(f"{head}: stopped (exit {code}); run the sweep again to resume")
    else:
        state = "failed"
        echo(f"{head}: FAILED (exit {code}, state {run_state(job.run)}); going on")
    return state


def _report_progress(jobs: list[Job], total: int, echo: Callable[[str], None]) -> None:
    """One line per running run: its last ``epoch ... step ...`` line, when it changed."""
    for job in sorted(jobs, key=lambda j: j.number):
        line = last_progress(job.log_path) if job.log_path else ""
        if line and line != job.shown:
            job.shown = line
            echo(f"[{job.number}/{total}] {job.run.name}: {line}")
