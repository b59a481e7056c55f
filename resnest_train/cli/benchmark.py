"""`resnest-benchmark` (and `scripts/benchmark.py`): benchmarks, one section each; results belong in docs/benchmarks.md.

    python scripts/benchmark.py models [--batch 8 ...]     model fwd+bwd images/s, ours vs timm
    python scripts/benchmark.py data [--root DIR ...]      loader images/s, DALI vs torchvision
    python scripts/benchmark.py gpu [--batch 128 ...]      the GPU table (needs CUDA; scripts/gpu_check.sh)
    python scripts/benchmark.py overhead [--steps 20 ...]  train.py's images/s vs a bare loop of the same work

Each section is a module of its own (resnest_train/cli/bench_<section>.py); `SECTION --help` lists its options.
"""

import importlib
import sys

SECTIONS = ("models", "data", "gpu", "overhead")


def load_section(name: str):
    """The module of one section, ``resnest_train.cli.bench_<name>`` (imported only when asked for)."""
    return importlib.import_module(f"resnest_train.cli.bench_{name}")


def main(argv: list[str] | None = None) -> int:
    """Run ``SECTION [options]`` from ``argv`` (default ``sys.argv[1:]``); 2 without a known section."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SECTIONS:
        print(__doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return load_section(argv[0]).main(argv[1:]) or 0
