#!/usr/bin/env python
"""Benchmarks, one section each; results belong in docs/benchmarks.md.

    python scripts/benchmark.py models [--batch 16 ...]   model fwd+bwd images/s, ours vs timm
    python scripts/benchmark.py data [--root DIR ...]      loader images/s, DALI vs torchvision
"""
import argparse
import importlib.util
import os
import sys

SECTIONS = {"models": "bench_models.py", "data": "bench_data.py"}


def load_section(name):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), SECTIONS[name])
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True)
    for name in SECTIONS:
        module = load_section(name)
        section_parser = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(section_parser)
        section_parser.set_defaults(run=module.run)
    args = parser.parse_args()
    args.run(args)  # each section prints its results (and takes its own --json)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
