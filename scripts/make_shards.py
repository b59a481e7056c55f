#!/usr/bin/env python
"""`resnest-make-shards`: write an ImageNet folder as WebDataset tar shards; check shards.
The code and its --help: resnest_train/cli/make_shards.py.

This file only lets a checkout run it as `python scripts/make_shards.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
