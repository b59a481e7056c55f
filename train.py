#!/usr/bin/env python
"""Train a ResNeSt from a YAML config (`resnest-train`); works the same under `python` and `torchrun`.

    python train.py --config configs/quickstart.yaml train.epochs=2 data.root=data/demo
    torchrun --nproc_per_node 8 train.py --config configs/resnest50.yaml data.root=/data/imagenet

The command line and its --help: resnest_train/cli/train.py. Run from the checkout, this file
imports the package next to it.
"""

import sys

from resnest_train.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
