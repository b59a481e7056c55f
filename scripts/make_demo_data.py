#!/usr/bin/env python
"""Make the quick-start demo dataset (a thin wrapper over ``python -m resnest_train.data.demo``).

    python scripts/make_demo_data.py --out data/demo
"""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from resnest_train.data.demo import main
    sys.exit(main())
