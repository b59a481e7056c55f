#!/usr/bin/env python
"""`resnest-evaluate`: evaluate a checkpoint or run directory.
The code and its --help: resnest_train/cli/evaluate.py.

This file only lets a checkout run it as `python scripts/evaluate.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
