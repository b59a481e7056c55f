"""`resnest-sweep` (and `scripts/sweep.py`): run a sweep, one training run per grid point or runs entry.

    python scripts/sweep.py configs/sweeps/cpu_smoke.yaml             check, run, summarise
    python scripts/sweep.py configs/sweeps/radix_cardinality.yaml data.root=/data/imagenet --dry-run
    python scripts/sweep.py configs/sweeps/radix_cardinality.yaml data.root=/data/imagenet --print > jobs.txt
    python scripts/sweep.py configs/sweeps/cpu_smoke.yaml --summary   rewrite summary.csv/.md now
    python scripts/sweep.py configs/sweeps/radix_cardinality.yaml --parallel 8 --gpus-per-run 1
    python scripts/sweep.py configs/sweeps/radix_cardinality.yaml --slurm sweep.sbatch --submit
    python scripts/sweep.py configs/sweeps/lr_search.yaml --parallel 4     a search (search: section)
    python scripts/sweep.py configs/sweeps/cpu_smoke.yaml --summary --plot   and PNG plots in <root>/plots

Every run's config goes through train.py's pre-flight check (resnest_train/preflight.py)
before anything starts, so --dry-run refuses what train.py would. Each run goes through
launch.sh (so it may use every GPU, or several nodes); a finished run is skipped and an unfinished
one resumes from its checkpoint, so running the same command again continues the sweep.
A failed run does not stop the others; the exit status is then 1 (a diverged or pruned run is
a result, not a failure, and is not launched again). SIGTERM/SIGINT stop every run in progress
through its checkpoint (exit 143/130); the same command resumes them. The sweep file format is
described in resnest_train/sweep/__init__.py, searches in resnest_train/sweep/search.py.
"""

import argparse
import os
import shlex
import sys

from resnest_train import sweep as sw
from resnest_train.cli import exit_status
from resnest_train.sweep import search, slurm


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status (see above)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep file (YAML: base, overrides, grid, runs, launch)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="added to the sweep's overrides for every run, e.g. data.root=/data/imagenet",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true", help="print one shell-quoted launch.sh command per run and exit")
    mode.add_argument(
        "--dry-run", action="store_true", help="check every run's config as train.py does, print the plan, exit"
    )
    mode.add_argument(
        "--summary",
        action="store_true",
        help="write summary.csv and summary.md from what the runs wrote so far, and print it",
    )
    mode.add_argument(
        "--slurm",
        metavar="FILE",
        help="write one sbatch array job (a task per run, each calling launch.sh) to FILE and exit",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="runs at once on this node (default 1); with --slurm: tasks at once",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=int,
        default=None,
        metavar="K",
        help="GPUs each run gets (CUDA_VISIBLE_DEVICES; default: the visible GPUs shared out evenly, "
        "0: CPU runs); with --slurm: GPUs per node",
    )
    parser.add_argument("--submit", action="store_true", help="with --slurm: submit the script with sbatch")
    parser.add_argument(
        "--plot",
        action="store_true",
        help="also draw PNG plots of the runs' metrics into <root>/plots (after the runs, or with --summary)",
    )
    args = parser.parse_args(argv)
    if args.submit and not args.slurm:
        parser.error("--submit goes with --slurm FILE")
    if args.plot and (args.print or args.dry_run or args.slurm):
        parser.error("--plot draws what runs wrote: use it with --summary or when running the sweep")

    def plot(sweep) -> None:
        from resnest_train.sweep.plot import plot_sweep

        paths = plot_sweep(sweep)
        print(f"Plots: {', '.join(paths)}" if paths else "Plots: no run has metrics yet", file=sys.stderr)

    def action() -> int:
        sweep = sw.load_sweep(args.sweep, args.overrides)
        if args.summary:
            csv_path, md_path, rows = sw.write_summary(sweep)
            print(sw.markdown(sweep, rows), end="")
            print(f"Summary: {csv_path}, {md_path}", file=sys.stderr)
            if args.plot:
                plot(sweep)
            return 0
        if sweep.search is not None:
            return search_action(sweep, args)
        epochs = sw.check(sweep)
        if args.print:
            for run in sweep.runs:
                print(shlex.join(sw.launch_argv(sweep, run)))
            return 0
        if args.dry_run:
            print(sw.plan_text(sweep, epochs=epochs), end="")
            return 0
        if args.slurm:
            path = slurm.write_script(sweep, args.slurm, args.gpus_per_run, args.parallel)
            print(
                f"Wrote {path}: an array of {len(sweep.runs)} task(s), "
                f"logs in {os.path.dirname(slurm.log_pattern(sweep))}"
            )
            if args.submit:
                print(f"Submitted array job {slurm.submit(path)}")
            else:
                print(f"Submit it with: sbatch {shlex.quote(path)}")
            return 0
        code = sw.run_sweep(sweep, epochs=epochs, parallel=args.parallel or 1, gpus_per_run=args.gpus_per_run)
        if args.plot:
            plot(sweep)
        return code

    return exit_status(action)


def search_action(sweep, args) -> int:
    """A search file: --dry-run prints the space and the trials so far, a run samples and trains trials."""
    if args.print or args.slurm:
        raise sw.SweepError(
            f"{sweep.file} is a search: its trials are sampled as results come in, so there is no fixed list "
            "of commands or SLURM array. Run it in one job: python scripts/sweep.py FILE --parallel N."
        )
    search.check_search(sweep)
    if args.dry_run:
        print(search.plan_text(sweep), end="")
        return 0
    return search.run_search(sweep, parallel=args.parallel or 1, gpus_per_run=args.gpus_per_run)
