#!/usr/bin/env python
"""`resnest-benchmark models`: model images/s, ours vs timm.
The code and its --help: resnest_train/cli/bench_models.py.

This file only lets a checkout run it as `python scripts/bench_models.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.bench_models import main

if __name__ == "__main__":
    sys.exit(main())
