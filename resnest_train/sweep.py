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
    launch: {nproc: 8}             # launch.sh options for every run

Each run is named after the values that vary across the sweep (``radix2_cardinality1``)
and writes to ``<root>/<name>``, so ``tensorboard --logdir <root>`` shows them side by
side. A run's state is its ``run_state.json`` (written by the trainer): a finished run is
skipped, anything else is launched again and resumes from its last checkpoint.

Everything here except ``run_sweep`` is a pure function of the sweep file and the files
the runs wrote, so plans, commands and summaries are easy to test.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from .config import ConfigError, describe_yaml_error, load_config
from .errors import UserError

SWEEP_KEYS = ("name", "base", "overrides", "grid", "runs", "launch")
# launch: keys -> launch.sh flags (--nproc N, ...)
LAUNCH_KEYS = ("nproc", "nnodes", "node_rank", "master_addr", "master_port", "rdzv",
               "rdzv_endpoint", "rdzv_id", "max_restarts")
STATES = ("finished", "failed", "preempted", "running", "pending")
LAUNCH_SH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch.sh")
STOPPED_CODES = (143, 130, 129, -15, -2, -1)  # exit after SIGTERM / SIGINT / SIGHUP
STATUS_FILE = "sweep_status.json"  # the sweep's own record: each run's last launch exit code


class SweepError(UserError):
    """A mistake in a sweep file; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Run:
    name: str
    output_dir: str
    overrides: dict  # dotted key -> value, as passed to train.py (output.dir last)
    varying: dict  # the subset of overrides that differs across the sweep


@dataclass
class Sweep:
    name: str
    file: str
    config: str  # the base config path, as a command line would write it
    root: str
    launch: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    varying_keys: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Expanding a sweep file into runs (pure)
# ---------------------------------------------------------------------------------------

def flatten(mapping: dict, where: str, prefix: str = "") -> dict:
    """``{model: {radix: 2}}`` and ``{model.radix: 2}`` both become ``{"model.radix": 2}``.

    Config leaves are never mappings, so every nested mapping is a section."""
    if not isinstance(mapping, dict):
        raise SweepError(f"{where} must be a mapping of key: value, got {mapping!r}.")
    out: dict = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not key:
            raise SweepError(f"{where} has the key {key!r}; keys are config names like train.epochs.")
        full = prefix + key
        if isinstance(value, dict):
            out.update(flatten(value, where, full + "."))
        else:
            out[full] = value
    return out


def expand(overrides: dict, grid: dict, runs: list) -> list[dict]:
    """Every run's settings: ``overrides``, then one grid point, then one ``runs`` entry
    (later ones win). Grid points go in order with the first key changing slowest; the
    ``runs`` entries cycle fastest. All inputs are already flattened."""
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    return [{**overrides, **point, **entry} for point in points for entry in (runs or [{}])]


def format_value(value: Any) -> str:
    """The override text whose YAML parse gives back ``value`` (``0.1``, ``[3, 4]``, ``'2'``)."""
    if isinstance(value, str) and value and value == value.strip() and "\n" not in value:
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    if text.endswith("\n..."):
        text = text[:-4].rstrip()
    return text


def varying_keys(settings: list[dict]) -> list[str]:
    """Keys whose value is not the same in every run (missing counts as a value), in the
    order they first appear."""
    order: list[str] = []
    for s in settings:
        order += [k for k in s if k not in order]
    missing = object()

    def text(s: dict, k: str):
        return format_value(s[k]) if k in s else missing

    return [k for k in order if len({text(s, k) for s in settings}) > 1]


def short_keys(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key shares:
    ``model.radix`` -> ``radix``; ``model.dropblock.prob`` next to ``x.prob`` -> ``dropblock.prob``."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        out[key] = suffix
    return out


def sanitize(text: str) -> str:
    """A safe file name: letters, digits, '.', '_' and '-' only."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return text or "run"


def name_part(short: str, value: Any) -> str:
    """``radix`` + 2 -> ``radix2``; strings, booleans and lists get a dash: ``amp-bf16``,
    ``stages-3-4``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return sanitize(f"{short}{value}")
    if isinstance(value, list):
        text = "-".join(format_value(v) for v in value) or "none"
    elif value is None:
        text = "none"
    else:
        text = format_value(value)
    return sanitize(f"{short}-{sanitize(text)}")


def run_names(settings: list[dict], keys: list[str], explicit: list[str | None]) -> list[str]:
    """One unique, readable, file-system-safe name per run."""
    shorts = short_keys(keys)
    names = []
    for s, given in zip(settings, explicit):
        if given is not None:
            names.append(given)
            continue
        parts = [name_part(shorts[k], s[k]) for k in keys if k in s]
        names.append("_".join(parts) if parts else "run")
    seen: dict[str, int] = {}
    unique = []
    for n in names:
        if n in seen:
            seen[n] += 1
            candidate = f"{n}-{seen[n]}"
            while candidate in names or candidate in unique:
                seen[n] += 1
                candidate = f"{n}-{seen[n]}"
            n = candidate
        else:
            seen[n] = 1
        unique.append(n)
    return unique


def plan_runs(spec: dict, root: str, where: str = "the sweep") -> list[Run]:
    """The runs of a sweep ``spec`` (a sweep file's mapping, ``base`` aside), each writing to
    ``<root>/<name>``."""
    overrides = flatten(spec.get("overrides") or {}, f"'overrides' in {where}")
    overrides.pop("output.dir", None)  # the sweep root, not a run's setting
    grid = flatten(spec.get("grid") or {}, f"'grid' in {where}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"'grid' key '{key}' in {where} must be a non-empty list of values, got "
                             f"{values!r}. Write e.g. {key}: [1, 2] (a list-valued key takes a list of "
                             "lists: [[3, 4], [4]]).")
    entries = spec.get("runs") or []
    if not isinstance(entries, list):
        raise SweepError(f"'runs' in {where} must be a list of override maps, got {entries!r}.")
    explicit_entries = []
    flat_entries = []
    for i, entry in enumerate(entries):
        entry = flatten(entry or {}, f"'runs' entry {i + 1} in {where}")
        name = entry.pop("name", None)
        if name is not None and (not isinstance(name, (str, int)) or sanitize(str(name)) != str(name)):
            raise SweepError(f"'runs' entry {i + 1} in {where} has name {name!r}; a name may hold only "
                             "letters, digits, '.', '_' and '-'.")
        explicit_entries.append(None if name is None else str(name))
        flat_entries.append(entry)
    for key in list(grid) + [k for e in flat_entries for k in e]:
        if key == "output.dir":
            raise SweepError(f"{where} sets output.dir in 'grid' or 'runs'; each run's output.dir is "
                             "<sweep root>/<run name>. Set the sweep root under 'overrides' instead.")

    settings = expand(overrides, grid, flat_entries)
    n_points = len(settings) // max(len(flat_entries), 1)
    explicit = explicit_entries * n_points if flat_entries else [None] * len(settings)
    for name in set(n for n in explicit if n is not None):
        if explicit.count(name) > 1:
            raise SweepError(f"The run name '{name}' in {where} is used by {explicit.count(name)} runs "
                             "(a named 'runs' entry crossed with a grid); drop the name or the grid.")
    seen: dict[tuple, int] = {}
    for i, s in enumerate(settings):
        key = tuple(sorted((k, format_value(v)) for k, v in s.items()))
        if key in seen:
            raise SweepError(f"Runs {seen[key] + 1} and {i + 1} of {where} have the same settings "
                             f"({', '.join(f'{k}={format_value(v)}' for k, v in s.items()) or 'none'}); "
                             "remove one or make them differ (e.g. train.seed).")
        seen[key] = i
    keys = varying_keys(settings)
    names = run_names(settings, keys, explicit)
    runs = []
    for name, s in zip(names, settings):
        out_dir = os.path.join(root, name)
        runs.append(Run(name=name, output_dir=out_dir, overrides={**s, "output.dir": out_dir},
                        varying={k: s[k] for k in keys if k in s}))
    return runs


def override_args(run: Run) -> list[str]:
    """train.py's ``key=value`` arguments for one run."""
    return [f"{k}={format_value(v)}" for k, v in run.overrides.items()]


def launch_flags(launch: dict) -> list[str]:
    return [arg for k, v in launch.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


def launch_argv(sweep: Sweep, run: Run, launch_sh: str | None = None) -> list[str]:
    """The command that trains one run: ``launch.sh [options] CONFIG key=value ...``."""
    return [launch_sh or display_path(LAUNCH_SH, executable=True), *launch_flags(sweep.launch),
            sweep.config, *override_args(run)]


def display_path(path: str, executable: bool = False) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    rel = os.path.relpath(os.path.abspath(path))
    if rel.startswith(".."):
        return os.path.abspath(path)
    if executable and os.sep not in rel:
        rel = "." + os.sep + rel  # ./launch.sh: a bare name would be looked up on PATH
    return rel


# ---------------------------------------------------------------------------------------
# Loading and checking a sweep file
# ---------------------------------------------------------------------------------------

def parse_overrides(items: list[str]) -> dict:
    """Command-line ``key=value`` words (value parsed as YAML, as train.py does)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"'{item}' is not an override: write section.key=value, e.g. data.root=/data/imagenet.")
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        out[key.strip()] = value
    return out


def load_sweep(path: str, extra_overrides: list[str] = ()) -> Sweep:
    """Read a sweep file and plan its runs (without checking their configs: see ``check``).

    ``extra_overrides`` (``key=value`` words) join the file's ``overrides``, e.g. the
    dataset path, or ``output.dir`` for another sweep root."""
    if not os.path.isfile(path):
        raise SweepError(f"Sweep file {path} does not exist. Check the path (e.g. configs/sweeps/cpu_smoke.yaml).")
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise SweepError(f"Sweep file {path} is not valid YAML{describe_yaml_error(e)}.") from None
    if not isinstance(spec, dict):
        raise SweepError(f"Sweep file {path} must hold a mapping with base:, overrides:, grid: and/or runs:.")
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"Sweep file {path} has unknown top-level key(s) {unknown}; a sweep file holds "
                         f"{', '.join(SWEEP_KEYS)}. Config keys go under 'overrides:', 'grid:' or 'runs:'.")
    base = spec.get("base")
    if not isinstance(base, str) or not base:
        raise SweepError(f"Sweep file {path} needs 'base: CONFIG' (a config path relative to the sweep file).")
    config = os.path.normpath(os.path.join(os.path.dirname(path), base))
    if not os.path.isfile(config):
        raise SweepError(f"The base config {config} of sweep file {path} does not exist; 'base:' is "
                         "relative to the sweep file.")
    name = spec.get("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(name, str) or sanitize(name) != name:
        raise SweepError(f"Sweep file {path} has name {name!r}; use letters, digits, '.', '_' and '-'.")
    overrides = flatten(spec.get("overrides") or {}, f"'overrides' in {path}")
    overrides.update(parse_overrides(list(extra_overrides)))
    spec = {**spec, "overrides": overrides}
    root = overrides.get("output.dir", os.path.join("runs", name))
    if not isinstance(root, str) or not root:
        raise SweepError(f"'output.dir' in 'overrides' of {path} must be a directory path, got {root!r}.")
    launch = spec.get("launch") or {}
    if not isinstance(launch, dict) or any(k not in LAUNCH_KEYS for k in launch):
        bad = [k for k in launch] if isinstance(launch, dict) else launch
        raise SweepError(f"'launch' in {path} may set {', '.join(LAUNCH_KEYS)} (launch.sh options); "
                         f"got {bad!r}.")
    runs = plan_runs(spec, root, where=path)
    keys = []
    for run in runs:
        keys += [k for k in run.varying if k not in keys]
    return Sweep(name=name, file=path, config=config, root=os.path.normpath(root), launch=dict(launch),
                 runs=runs, varying_keys=keys)


def check(sweep: Sweep) -> dict[str, int]:
    """Load every run's config the way train.py will, through the same pre-flight check
    (``load_config`` runs ``preflight.preflight``: types, ranges, cross-key rules, model
    construction): a config train.py would refuse fails here, before any run starts.
    Returns each run's train.epochs."""
    epochs = {}
    for i, run in enumerate(sweep.runs):
        try:
            cfg = load_config(sweep.config, override_args(run))
        except ConfigError as e:
            raise SweepError(f"Run {i + 1} '{run.name}' of sweep {sweep.file} has a bad config: {e}") from None
        epochs[run.name] = cfg.train.epochs
    return epochs


# ---------------------------------------------------------------------------------------
# Run states and the summary (pure: read what the runs wrote)
# ---------------------------------------------------------------------------------------

def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def read_metrics(output_dir: str) -> list[dict]:
    rows = []
    try:
        with open(os.path.join(output_dir, "metrics.jsonl")) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass  # a line cut short by a crash
    except OSError:
        pass
    return rows


def read_status(root: str) -> dict:
    return (_read_json(os.path.join(root, STATUS_FILE)) or {}).get("runs", {})


def run_state(run: Run, status: dict | None = None) -> str:
    """finished | failed | preempted | running | pending.

    The trainer's run_state.json says finished, failed, preempted or running. "running"
    with a non-zero exit of its last launch by this sweep means the run died (killed,
    or a crash before it could say so): failed. No run_state.json: pending, or failed
    when its launch failed."""
    state = (_read_json(os.path.join(run.output_dir, "run_state.json")) or {}).get("state")
    exit_code = (status or {}).get(run.name, {}).get("exit_code")
    if state in ("finished", "failed", "preempted"):
        return state
    if exit_code not in (None, 0):
        return "preempted" if exit_code in STOPPED_CODES else "failed"
    return "running" if state == "running" else "pending"


def is_done(run: Run, status: dict | None = None, epochs: int | None = None) -> bool:
    """Finished, with at least the ``epochs`` its config asks for now (when given): a sweep
    whose train.epochs went up launches its runs again and they train on."""
    if run_state(run, status) != "finished":
        return False
    done = (_read_json(os.path.join(run.output_dir, "run_state.json")) or {}).get("epoch")
    return epochs is None or not isinstance(done, int) or done >= epochs


def summary_rows(sweep: Sweep) -> list[dict]:
    """One row per run: its varying values, state, epochs, best val top-1, final train loss,
    images/s (median over epochs: the first epoch's warm-up does not skew it)."""
    status = read_status(sweep.root)
    rows = []
    for run in sweep.runs:
        saved = _read_json(os.path.join(run.output_dir, "run_state.json")) or {}
        metrics = read_metrics(run.output_dir)
        top1 = [m["val_top1"] for m in metrics if isinstance(m.get("val_top1"), (int, float))]
        best = saved.get("best_top1")
        if not isinstance(best, (int, float)):
            best = max(top1) if top1 else None
        speeds = [m["images_per_sec"] for m in metrics if isinstance(m.get("images_per_sec"), (int, float))]
        last = metrics[-1] if metrics else {}
        row = {"run": run.name}
        row.update({k: format_value(run.varying[k]) if k in run.varying else "" for k in sweep.varying_keys})
        row.update({
            "state": run_state(run, status),
            "epoch": saved.get("epoch", last.get("epoch")),
            "epochs": saved.get("epochs"),
            "best_val_top1": best,
            "final_val_top1": last.get("val_top1"),
            "final_train_loss": last.get("train_loss"),
            "images_per_sec": statistics.median(speeds) if speeds else None,
            "output_dir": run.output_dir,
        })
        rows.append(row)
    return rows


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(sweep: Sweep, rows: list[dict]) -> str:
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    head = ["run", *sweep.varying_keys, "state", "epochs", "best val top-1 (%)", "final train loss", "images/s"]
    lines = [
        f"# Sweep {sweep.name}",
        "",
        f"Base config `{sweep.config}`, {len(rows)} runs under `{sweep.root}`: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
        f"Compare them with `tensorboard --logdir {shlex.quote(sweep.root)}`. "
        "images/s is the median over epochs.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 1 + len(sweep.varying_keys) + 1 else "---:" for i in range(len(head))) + "|",
    ]
    for r in rows:
        done = f"{r['epoch']}/{r['epochs']}" if r["epochs"] is not None else _fmt(r["epoch"], 0)
        cells = [r["run"], *(r[k] or "-" for k in sweep.varying_keys), r["state"], done,
                 _fmt(r["best_val_top1"], 2), _fmt(r["final_train_loss"], 4), _fmt(r["images_per_sec"], 1)]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep: Sweep) -> tuple[str, str, list[dict]]:
    """Write <root>/summary.csv and <root>/summary.md; return their paths and the rows."""
    rows = summary_rows(sweep)
    columns = ["run", *sweep.varying_keys, "state", "epoch", "epochs", "best_val_top1", "final_val_top1",
               "final_train_loss", "images_per_sec", "output_dir"]
    os.makedirs(sweep.root, exist_ok=True)
    csv_path = os.path.join(sweep.root, "summary.csv")
    md_path = os.path.join(sweep.root, "summary.md")
    _write_atomic(csv_path, _csv_text(rows, columns))
    _write_atomic(md_path, markdown(sweep, rows))
    return csv_path, md_path, rows


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def plan_text(sweep: Sweep, launch_sh: str | None = None, epochs: dict | None = None) -> str:
    """What --dry-run prints: each run, its state and its command."""
    status = read_status(sweep.root)
    lines = [f"Sweep {sweep.name}: {len(sweep.runs)} run(s) of {sweep.config} under {sweep.root}"]
    for i, run in enumerate(sweep.runs, 1):
        state = run_state(run, status)
        if is_done(run, status, (epochs or {}).get(run.name)):
            action = "skip (finished)"
        else:
            action = "start" if state == "pending" else "resume"
        lines.append(f"[{i}/{len(sweep.runs)}] {run.name}: {state}, would {action}")
        lines.append("    " + shlex.join(launch_argv(sweep, run, launch_sh)))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------

def _record(root: str, name: str, exit_code: int, seconds: float) -> None:
    data = _read_json(os.path.join(root, STATUS_FILE)) or {}
    data.setdefault("runs", {})[name] = {"exit_code": exit_code, "seconds": round(seconds, 1),
                                         "ended": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_atomic(os.path.join(root, STATUS_FILE), json.dumps(data, indent=2) + "\n")


def run_sweep(sweep: Sweep, launch_sh: str | None = None, env: dict | None = None,
              echo: Callable[[str], None] | None = None, epochs: dict | None = None) -> int:
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
