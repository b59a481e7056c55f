"""The command-line tools, one module each; `pyproject.toml` installs each as a console command.

    resnest-train             train.py            train from a YAML config (cli/train.py)
    resnest-sweep             scripts/sweep.py    run a sweep of configs (cli/sweep.py)
    resnest-prepare-imagenet  scripts/prepare_imagenet.py  sort val/, check a dataset
    resnest-make-shards       scripts/make_shards.py  write / check WebDataset tar shards
    resnest-benchmark         scripts/benchmark.py  models / data / gpu benchmarks (cli/bench_*.py)
    resnest-make-demo-data    scripts/make_demo_data.py  the quick-start data set (data/demo.py)
    resnest-models            python -m resnest_train.models  the model table (models/__main__.py)
    resnest-evaluate          scripts/evaluate.py  evaluate a checkpoint or run (cli/evaluate.py)
    resnest-export            scripts/export.py   ONNX / TorchScript / safetensors (cli/export.py)

The files under scripts/ and train.py are thin wrappers for a checkout; every `main(argv=None)`
here returns the process exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from resnest_train.errors import UserError


def print_check(report: dict, headline, where, json_path: str | None) -> int:
    """Print a ``--check`` report (``prepare_imagenet``, ``make_shards``): per split ``headline(split,
    stats)`` and its first 20 unreadable files (``where(split, name)``: the path to print), then the
    problems and ``ok`` or their count; write the whole report as JSON to ``json_path`` if given.
    Returns the exit status: 0 when ``report["ok"]``, else 1."""
    import json

    for split, s in report["splits"].items():
        print(headline(split, s))
        for name, reason in list(s["bad"].items())[:20]:
            print(f"  unreadable: {where(split, name)}: {reason}")
        if len(s["bad"]) > 20:
            print(f"  ... and {len(s['bad']) - 20} more (see --json)")
    for p in report["problems"]:
        print(f"problem: {p}")
    print("ok" if report["ok"] else f"{len(report['problems'])} problem(s) found")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["ok"] else 1


def exit_status(action: Callable[[], int]) -> int:
    """``action()``'s exit status; a ``UserError`` it raises is printed as ``error: ...`` on stderr
    (one paragraph, no traceback) and gives the error's ``exit_code`` (2 unless it says otherwise)."""
    try:
        return action()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
