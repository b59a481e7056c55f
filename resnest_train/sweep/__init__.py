"""Sweeps: expand a sweep file into runs, launch them one after another, summarise.

A sweep file (YAML)::

    name: radix_cardinality        # optional; default: the file name without .yaml
    base: ../resnest50.yaml        # the config every run starts from, relative to this file
    overrides:                     # the same for every run (dotted keys or nested maps)
      train.epochs: 120
      output.dir: runs/ablation    # the sweep root; default runs/<name>
    grid:                          # every combination of these values ...
      model.radix: [1, 2, 4]
    runs:                          # ... crossed with each of these override maps
      - {model.cardinality: 1, model.bottleneck_width: 64}
      - {model.cardinality: 2, model.bottleneck_width: 40, name: wide}  # optional explicit name
    seeds: [0, 1, 2]               # optional: every configuration once per train.seed
    launch: {nproc: 8}             # launch.sh options for every run
    slurm: {partition: gpu}        # sbatch options for --slurm

Each run is named after the values that vary across the sweep (``radix2_cardinality1``)
and writes to ``<root>/<name>`` (with ``seeds:``, ``<root>/<name>_seed<k>``), so
``tensorboard --logdir <root>`` shows them side by side. A run's state is its
``run_state.json`` (written by the trainer): a finished run is skipped, anything else is
launched again and resumes from its last checkpoint.

A ``search:`` section instead of ``grid``/``runs`` makes the file a search (``search``). A
diverged or pruned run is settled: it is reported, never launched again.

Modules: ``plan`` (sweep file -> runs and their commands), ``check`` (every run's config through
the pre-flight check), ``report`` (run states, summary.csv/.md, best run first, the dry-run plan),
``seeds`` (mean and standard deviation over the seeds of each configuration), ``plot`` (PNG plots
of the runs' metrics, ``--plot``), ``runner`` (launching the runs, ``parallel`` at once in slots of
their own GPUs, cores and port), ``slurm`` (the sweep as an sbatch array job), ``search`` (Optuna
trials, pruning, the study). ``plan``, ``report``, ``seeds`` and ``plot`` are pure functions of the
sweep file and the files the runs wrote, so plans, commands and summaries are easy to test.
"""

from .check import check
from .plan import (
    LAUNCH_KEYS,
    SWEEP_KEYS,
    Run,
    Sweep,
    SweepError,
    dotted,
    expand,
    format_value,
    launch_argv,
    load_sweep,
    override_args,
    parse_overrides,
    plan_runs,
    run_names,
    short_keys,
)
from .report import (
    STATES,
    STATUS_FILE,
    is_done,
    markdown,
    plan_text,
    read_status,
    run_state,
    summary_rows,
    write_summary,
)
from .runner import run_sweep

__all__ = [
    "LAUNCH_KEYS",
    "STATES",
    "STATUS_FILE",
    "SWEEP_KEYS",
    "Run",
    "Sweep",
    "SweepError",
    "check",
    "dotted",
    "expand",
    "format_value",
    "is_done",
    "launch_argv",
    "load_sweep",
    "markdown",
    "override_args",
    "parse_overrides",
    "plan_runs",
    "plan_text",
    "read_status",
    "run_names",
    "run_state",
    "run_sweep",
    "short_keys",
    "summary_rows",
    "write_summary",
]
