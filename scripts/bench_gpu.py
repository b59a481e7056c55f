#!/usr/bin/env python
"""`resnest-benchmark gpu`: the GPU table (needs CUDA).
The code and its --help: resnest_train/cli/bench_gpu.py.

This file only lets a checkout run it as `python scripts/bench_gpu.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.bench_gpu import main

if __name__ == "__main__":
    sys.exit(main())
