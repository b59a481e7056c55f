#!/usr/bin/env python
"""`resnest-prepare-imagenet`: sort the official val folder into classes; check a dataset.
The code and its --help: resnest_train/cli/prepare_imagenet.py.

This file only lets a checkout run it as `python scripts/prepare_imagenet.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.prepare_imagenet import main

if __name__ == "__main__":
    sys.exit(main())
