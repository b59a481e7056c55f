#!/usr/bin/env python
"""`resnest-sweep`: run a sweep (check, run, summarise).
The code and its --help: resnest_train/cli/sweep.py.

This file only lets a checkout run it as `python scripts/sweep.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
