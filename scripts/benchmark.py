#!/usr/bin/env python
"""`resnest-benchmark`: the benchmarks: models, data, gpu, overhead.
The code and its --help: resnest_train/cli/benchmark.py.

This file only lets a checkout run it as `python scripts/benchmark.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
