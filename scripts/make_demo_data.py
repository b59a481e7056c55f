#!/usr/bin/env python
"""`resnest-make-demo-data`: make the quick-start demo dataset (resnest_train/data/demo.py).

    python scripts/make_demo_data.py --out data/demo

The package must be installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.data.demo import main

if __name__ == "__main__":
    sys.exit(main())
