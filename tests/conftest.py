import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A tiny real JPEG dataset in ImageNet layout: 4 classes x (16 train + 6 val), 32 px."""
    from resnest_train.data.demo import make_demo_dataset
    root = str(tmp_path_factory.mktemp("demo"))
    make_demo_dataset(root, classes=4, train_per_class=16, val_per_class=6, size=32, seed=0)
    return root
