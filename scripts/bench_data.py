#!/usr/bin/env python
"""`resnest-benchmark data`: loader images/s, DALI vs torchvision.
The code and its --help: resnest_train/cli/bench_data.py.

This file only lets a checkout run it as `python scripts/bench_data.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.bench_data import main

if __name__ == "__main__":
    sys.exit(main())
