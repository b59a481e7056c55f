#!/usr/bin/env python
"""`resnest-export`: export a checkpoint to ONNX, TorchScript or safetensors.
The code and its --help: resnest_train/cli/export.py.

This file only lets a checkout run it as `python scripts/export.py`; the package must be
installed (`make install`, or `pip install -e .`).
"""

import sys

from resnest_train.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
