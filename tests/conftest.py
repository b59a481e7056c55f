import pytest

# pyproject.toml's pytest `pythonpath` puts the checkout first on sys.path, so the package under
# test is this checkout's; tests/helpers.py passes the same to the processes the tests start.


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A tiny real JPEG dataset in ImageNet layout: 4 classes x (16 train + 6 val), 32 px."""
    from resnest_train.data.demo import make_demo_dataset

    root = str(tmp_path_factory.mktemp("demo"))
    make_demo_dataset(root, classes=4, train_per_class=16, val_per_class=6, size=32, seed=0)
    return root
