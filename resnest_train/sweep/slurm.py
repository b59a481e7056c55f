"""A sweep as one SLURM array job: task i trains run i through launch.sh with its overrides.

The script is plain bash with ``#SBATCH`` lines, so its per-task body runs anywhere with
``SLURM_ARRAY_TASK_ID`` set (the tests run it so). Requeue-friendly, for both ways a
task is cut short (submitit does the same with SIGUSR2: a warning signal of its own requeues,
SIGTERM does not):

* preemption: SLURM sends SIGTERM; ``--requeue`` has it requeue the task itself;
* the time limit: ``--signal=B:USR1@180`` warns the batch shell three minutes ahead; the script
  passes SIGTERM on to the run, which checkpoints (launch.sh's ``--shutdown-timeout`` default,
  170 s, fits), then requeues its own task with ``scontrol requeue``.

Either way the requeued task starts the same run again, which resumes from its last checkpoint
(``resume: auto``). A SIGTERM from ``scancel`` stops the run through its checkpoint and is not
requeued: only USR1 (the time-limit warning) requeues.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

from .plan import LAUNCH_SH, Sweep, SweepError, launch_argv

SIGNAL_LEAD_S = 180  # seconds between SLURM's time-limit warning (USR1) and its kill (see launch.sh --shutdown-timeout)


def log_pattern(sweep: Sweep) -> str:
    """Where each task's output goes: ``<root>/logs/<sweep>_<array index>.log`` (absolute: sbatch
    resolves a relative path against the submit directory, not the script's ``cd``)."""
    return os.path.join(os.path.abspath(sweep.root), "logs", f"{sweep.name}_%a.log")


def sbatch_options(sweep: Sweep, gpus_per_run: int | None, parallel: int | None) -> list[str]:
    """The ``#SBATCH`` options: the array (throttled to ``parallel`` tasks at once), nodes from
    ``launch: nnodes`` (``MIN:MAX`` becomes ``MIN-MAX``), one launch.sh per node, ``gpus_per_run``
    GPUs per node, logs, requeue and the warning signal, then the sweep file's ``slurm:`` options."""
    last = len(sweep.runs) - 1
    nodes = str(sweep.launch.get("nnodes", 1)).replace(":", "-")
    options = [
        f"--job-name={sweep.name}",
        f"--array=0-{last}" + (f"%{parallel}" if parallel else ""),
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
    ]
    if gpus_per_run:
        options.append(f"--gpus-per-node={gpus_per_run}")
    options += [
        f"--output={log_pattern(sweep)}",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{SIGNAL_LEAD_S}",
    ]
    options += [f"--{k.replace('_', '-')}={v}" for k, v in sweep.slurm.items()]
    return options


def multi_node(sweep: Sweep) -> bool:
    """Whether a run spans several nodes (``launch: nnodes`` above 1, or a MIN:MAX range)."""
    return str(sweep.launch.get("nnodes", 1)) not in ("1", "1:1")


def sbatch_script(
    sweep: Sweep,
    gpus_per_run: int | None = None,
    parallel: int | None = None,
    python: str | None = None,
    workdir: str | None = None,
) -> str:
    """The array job's script. Each task ``cd``s to ``workdir`` (default: the current directory,
    where the sweep's relative paths hold), picks its run by ``SLURM_ARRAY_TASK_ID``, sets a
    rendezvous port of its own (from its job id) and runs launch.sh, under ``srun`` with one
    launch.sh per node when the runs span several nodes (launch.sh reads the node count, rank and
    first host from SLURM's variables). ``python`` (default: this interpreter) runs train.py.

    The batch shell stays to pass signals on: SIGTERM/SIGINT to the run (exit 143/130, as
    launch.sh's), and on USR1 (the time-limit warning) SIGTERM, then, once the run has saved its
    checkpoint and exited 143, ``scontrol requeue <array job>_<task>`` and exit 0."""
    if not sweep.runs:
        raise SweepError(f"Sweep {sweep.file} has no runs to write as a SLURM array.")
    workdir = os.path.abspath(workdir or os.getcwd())
    lines = [
        "#!/bin/bash",
        f"# Sweep {sweep.name} ({sweep.file}) as a SLURM array job: task i trains run i through launch.sh.",
        "# Submit: sbatch THIS_FILE. A task preempted or stopped by its time limit is requeued and resumes",
        "# its run from its last checkpoint; a finished run's task ends at once. Summary afterwards:",
        f"#   python scripts/sweep.py {shlex.quote(sweep.file)} --summary",
        *(f"#SBATCH {option}" for option in sbatch_options(sweep, gpus_per_run, parallel)),
        "set -euo pipefail",
        f"cd {shlex.quote(workdir)}",
        f"export PYTHON=${{PYTHON:-{shlex.quote(python or sys.executable)}}}",
        'task=${SLURM_ARRAY_TASK_ID:?"run this script with sbatch (SLURM_ARRAY_TASK_ID is not set)"}',
        "# a rendezvous port of its own: array tasks may share a node",
        "export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}",
        'case "$task" in',
    ]
    for i, run in enumerate(sweep.runs):
        argv = launch_argv(sweep, run, launch_sh=LAUNCH_SH)
        lines.append(f"  {i}) run={shlex.quote(run.name)}; cmd=({shlex.join(argv)}) ;;")
    lines += [
        f'  *) echo "task $task: this array has tasks 0-{len(sweep.runs) - 1}" >&2; exit 2 ;;',
        "esac",
        'echo "task $task: run $run (restart ${SLURM_RESTART_COUNT:-0}): ${cmd[*]}"',
    ]
    if multi_node(sweep):
        lines.append('cmd=(srun --ntasks-per-node=1 --kill-on-bad-exit=1 "${cmd[@]}")')
    lines += [
        "# Pass signals on to the run; USR1 is SLURM's time-limit warning (--signal): requeue after it.",
        'got_signal=""',
        'forward() { got_signal=$1; kill -s TERM "$child" 2>/dev/null || true; }',
        '"${cmd[@]}" &',
        "child=$!",
        "trap 'forward TERM' TERM",
        "trap 'forward INT' INT",
        "trap 'forward USR1' USR1",
        "status=0",
        'wait "$child" || status=$?',
        "if [[ -n $got_signal ]]; then",
        "  status=0",
        '  wait "$child" 2>/dev/null || status=$?  # the first wait was cut short by the signal',
        "fi",
        "if [[ $got_signal == USR1 && $status == 143 ]]; then",
        '  job="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-}}_$task"',
        '  echo "task $task: time limit near, run $run checkpointed; scontrol requeue $job"',
        '  scontrol requeue "$job" && exit 0',
        '  echo "task $task: scontrol requeue $job failed; submit this script again to resume run $run" >&2',
        "fi",
        "case $got_signal in TERM) exit 143 ;; INT) exit 130 ;; esac",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def write_script(sweep: Sweep, path: str, gpus_per_run: int | None = None, parallel: int | None = None) -> str:
    """Write the array job to ``path`` (executable) and create its log folder; returns ``path``."""
    if sweep.search is not None:
        raise SweepError(
            f"{sweep.file} is a search: its trials are sampled as results come in, so they are not a "
            "fixed SLURM array. Run the search inside one job instead (python scripts/sweep.py FILE --parallel N)."
        )
    text = sbatch_script(sweep, gpus_per_run, parallel)
    os.makedirs(os.path.dirname(log_pattern(sweep)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def submit(path: str) -> str:
    """``sbatch path``; returns the job id. Raises SweepError without sbatch or when it refuses."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SweepError(
            f"--submit needs SLURM's sbatch on PATH; it is not. Submit {path} from a login node: sbatch {path}"
        )
    result = subprocess.run([sbatch, path], capture_output=True, text=True)
    if result.returncode != 0:
        raise SweepError(
            f"sbatch {path} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
        )
    found = re.search(r"(\d+)", result.stdout)
    return found.group(1) if found else result.stdout.strip()
