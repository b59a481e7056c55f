#!/usr/bin/env python
"""Benchmarks, one section each; results belong in docs/benchmarks.md.

    python scripts/benchmark.py models [--batch 8 ...]     model fwd+bwd images/s, ours vs timm
    python scripts/benchmark.py data [--root DIR ...]      loader images/s, DALI vs torchvision
    python scripts/benchmark.py gpu [--batch 128 ...]      the GPU table (needs CUDA; scripts/gpu_check.sh)
    python scripts/benchmark.py overhead [--steps 20 ...]  train.py's images/s vs a bare loop of the same work

Each section is a script of its own (scripts/bench_<section>.py); `SECTION --help` lists its options.
"""
import importlib.util
import os
import sys

SECTIONS = {"models": "bench_models.py", "data": "bench_data.py", "gpu": "bench_gpu.py",
            "overhead": "bench_overhead.py"}


def load_section(name):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), SECTIONS[name])
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv):
    if not argv or argv[0] not in SECTIONS:
        print(__doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return load_section(argv[0]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
