#!/usr/bin/env python
"""`resnest-benchmark overhead`: train.py's images/s against a bare loop of the same work.
The code and its --help: resnest_train/cli/bench_overhead.py.

This file only lets a checkout run it as `python scripts/bench_overhead.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.bench_overhead import main

if __name__ == "__main__":
    sys.exit(main())
