"""Planning a sweep: a sweep file -> named runs with their overrides, and the command of each.

Pure functions of the sweep file (and the command line's extra overrides); the file format is in
the package docstring (``resnest_train/sweep/__init__.py``).
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..config_loader import describe_yaml_error
from ..errors import UserError

SWEEP_KEYS = ("name", "base", "overrides", "grid", "runs", "seeds", "launch", "slurm", "search")
# launch: keys -> launch.sh flags (--nproc N, ...)
LAUNCH_KEYS = (
    "nproc",
    "nnodes",
    "node_rank",
    "master_addr",
    "master_port",
    "rdzv",
    "rdzv_endpoint",
    "rdzv_id",
    "max_restarts",
)
LAUNCH_SH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "launch.sh")


class SweepError(UserError):
    """A mistake in a sweep file; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its name, output folder, overrides (dotted key -> value) and the values that vary."""

    name: str
    output_dir: str
    overrides: dict  # dotted key -> value, as passed to train.py (output.dir last)
    varying: dict  # the subset of overrides that differs across the sweep (train.seed of ``seeds:`` aside)
    group: str = ""  # the configuration's name: ``name`` without its ``_seed<k>`` (= ``name`` without seeds)
    seed: int | None = None  # the train.seed given by the sweep's ``seeds:``; None without it


@dataclass
class Sweep:
    """A planned sweep: its name, file, base config, root folder, launch.sh options and runs."""

    name: str
    file: str
    config: str  # the base config path, as a command line would write it
    root: str
    launch: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    varying_keys: list = field(default_factory=list)
    metric: str = "val_top1"  # the metrics.jsonl key the summary ranks runs by (a search: the one it optimises)
    mode: str = "max"  # max | min
    slurm: dict = field(default_factory=dict)  # sbatch options for --slurm (partition: gpu -> --partition=gpu)
    search: Any = None  # a search.SearchSpec when the file has 'search:'; its runs are then the trials so far


def dotted(mapping: dict, where: str, prefix: str = "") -> dict:
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
            out.update(dotted(value, where, full + "."))
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
    overrides = dotted(spec.get("overrides") or {}, f"'overrides' in {where}")
    overrides.pop("output.dir", None)  # the sweep root, not a run's setting
    grid = dotted(spec.get("grid") or {}, f"'grid' in {where}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(
                f"'grid' key '{key}' in {where} must be a non-empty list of values, got "
                f"{values!r}. Write e.g. {key}: [1, 2] (a list-valued key takes a list of "
                "lists: [[3, 4], [4]])."
            )
    entries = spec.get("runs") or []
    if not isinstance(entries, list):
        raise SweepError(f"'runs' in {where} must be a list of override maps, got {entries!r}.")
    explicit_entries = []
    flat_entries = []
    for i, entry in enumerate(entries):
        entry = dotted(entry or {}, f"'runs' entry {i + 1} in {where}")
        name = entry.pop("name", None)
        if name is not None and (not isinstance(name, (str, int)) or sanitize(str(name)) != str(name)):
            raise SweepError(
                f"'runs' entry {i + 1} in {where} has name {name!r}; a name may hold only "
                "letters, digits, '.', '_' and '-'."
            )
        explicit_entries.append(None if name is None else str(name))
        flat_entries.append(entry)
    for key in list(grid) + [k for e in flat_entries for k in e]:
        if key == "output.dir":
            raise SweepError(
                f"{where} sets output.dir in 'grid' or 'runs'; each run's output.dir is "
                "<sweep root>/<run name>. Set the sweep root under 'overrides' instead."
            )

    settings = expand(overrides, grid, flat_entries)
    n_points = len(settings) // max(len(flat_entries), 1)
    explicit = explicit_entries * n_points if flat_entries else [None] * len(settings)
    for name in set(n for n in explicit if n is not None):
        if explicit.count(name) > 1:
            raise SweepError(
                f"The run name '{name}' in {where} is used by {explicit.count(name)} runs "
                "(a named 'runs' entry crossed with a grid); drop the name or the grid."
            )
    seen: dict[tuple, int] = {}
    for i, s in enumerate(settings):
        key = tuple(sorted((k, format_value(v)) for k, v in s.items()))
        if key in seen:
            raise SweepError(
                f"Runs {seen[key] + 1} and {i + 1} of {where} have the same settings "
                f"({', '.join(f'{k}={format_value(v)}' for k, v in s.items()) or 'none'}); "
                "remove one or make them differ (e.g. train.seed)."
            )
        seen[key] = i
    keys = varying_keys(settings)
    names = run_names(settings, keys, explicit)
    seeds = check_seeds(spec.get("seeds"), [overrides, grid, *flat_entries], where)
    runs = []
    for name, s in zip(names, settings):
        for seed in seeds or [None]:
            run_name = name if seed is None else f"{name}_seed{seed}"
            out_dir = os.path.join(root, run_name)
            extra = {} if seed is None else {"train.seed": seed}
            runs.append(
                Run(
                    name=run_name,
                    output_dir=out_dir,
                    overrides={**s, **extra, "output.dir": out_dir},
                    varying={k: s[k] for k in keys if k in s},
                    group=name,
                    seed=seed,
                )
            )
    return runs


def check_seeds(seeds: Any, settings: list[dict], where: str) -> list[int]:
    """The sweep's ``seeds:`` (distinct ints >= 0; [] when absent): every configuration runs once
    per seed, as ``<name>_seed<k>`` with ``train.seed: k``. Refused next to a ``train.seed`` of its own."""
    if seeds is None:
        return []
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise SweepError(
            f"'seeds' in {where} must be a list of distinct ints >= 0, e.g. seeds: [0, 1, 2]; got {seeds!r}."
        )
    if any("train.seed" in s for s in settings):
        raise SweepError(
            f"{where} sets train.seed in 'overrides', 'grid' or 'runs' and also has 'seeds:'; "
            "the seeds list sets train.seed of every run: keep one of the two."
        )
    return list(seeds)


def override_args(run: Run) -> list[str]:
    """train.py's ``key=value`` arguments for one run."""
    return [f"{k}={format_value(v)}" for k, v in run.overrides.items()]


def launch_flags(launch: dict) -> list[str]:
    """The sweep's ``launch:`` mapping as launch.sh flags (``nproc: 8`` -> ``--nproc 8``)."""
    return [arg for k, v in launch.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


def launch_argv(sweep: Sweep, run: Run, launch_sh: str | None = None) -> list[str]:
    """The command that trains one run: ``launch.sh [options] CONFIG key=value ...``."""
    return [
        launch_sh or display_path(LAUNCH_SH, executable=True),
        *launch_flags(sweep.launch),
        sweep.config,
        *override_args(run),
    ]


def display_path(path: str, executable: bool = False) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    rel = os.path.relpath(os.path.abspath(path))
    if rel.startswith(".."):
        return os.path.abspath(path)
    if executable and os.sep not in rel:
        rel = "." + os.sep + rel  # ./launch.sh: a bare name would be looked up on PATH
    return rel


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
        raise SweepError(
            f"Sweep file {path} has unknown top-level key(s) {unknown}; a sweep file holds "
            f"{', '.join(SWEEP_KEYS)}. Config keys go under 'overrides:', 'grid:' or 'runs:'."
        )
    base = spec.get("base")
    if not isinstance(base, str) or not base:
        raise SweepError(f"Sweep file {path} needs 'base: CONFIG' (a config path relative to the sweep file).")
    config = os.path.normpath(os.path.join(os.path.dirname(path), base))
    if not os.path.isfile(config):
        raise SweepError(
            f"The base config {config} of sweep file {path} does not exist; 'base:' is relative to the sweep file."
        )
    name = spec.get("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(name, str) or sanitize(name) != name:
        raise SweepError(f"Sweep file {path} has name {name!r}; use letters, digits, '.', '_' and '-'.")
    overrides = dotted(spec.get("overrides") or {}, f"'overrides' in {path}")
    overrides.update(parse_overrides(list(extra_overrides)))
    spec = {**spec, "overrides": overrides}
    root = overrides.get("output.dir", os.path.join("runs", name))
    if not isinstance(root, str) or not root:
        raise SweepError(f"'output.dir' in 'overrides' of {path} must be a directory path, got {root!r}.")
    launch = spec.get("launch") or {}
    if not isinstance(launch, dict) or any(k not in LAUNCH_KEYS for k in launch):
        bad = [k for k in launch] if isinstance(launch, dict) else launch
        raise SweepError(f"'launch' in {path} may set {', '.join(LAUNCH_KEYS)} (launch.sh options); got {bad!r}.")
    slurm = spec.get("slurm") or {}
    if not isinstance(slurm, dict) or not all(isinstance(k, str) and k for k in slurm):
        raise SweepError(
            f"'slurm' in {path} must map sbatch options to values (partition: gpu, time: '2-00:00:00'); got {slurm!r}."
        )
    if spec.get("search") is not None:
        from .search import load_search  # the search module needs Optuna only when a search runs

        return load_search(spec, path, name, config, os.path.normpath(root), dict(launch), dict(slurm))
    runs = plan_runs(spec, root, where=path)
    keys = []
    for run in runs:
        keys += [k for k in run.varying if k not in keys]
    return Sweep(
        name=name,
        file=path,
        config=config,
        root=os.path.normpath(root),
        launch=dict(launch),
        runs=runs,
        varying_keys=keys,
        slurm=dict(slurm),
    )
