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


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """10 classes of 32 px PNG shapes (shape x colour): 32 train + 10 val images each."""
    from helpers import make_shapes

    return make_shapes(str(tmp_path_factory.mktemp("shapes")), 32, 10, seed=0, by_colour=True)


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory, shapes_root):
    """A finished train.py run on ``shapes_root`` (helpers.PRETRAIN: 5 epochs, 100 steps, with an
    EMA): the trained model the evaluate, export and fine-tune tests start from."""
    from helpers import PRETRAIN, train

    out = str(tmp_path_factory.mktemp("pretrained"))
    train(*PRETRAIN, f"data.root={shapes_root}", f"output.dir={out}")
    return out


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items):
    """Under ``pytest -n N --dist loadgroup`` (``make test``): the multi-process tests (``dist``:
    torchrun, launch.sh, parallel sweeps, SIGTERM timing) run one at a time on one worker, so no two
    of them share this machine's cores or a rendezvous port; the tests of ``pretrained_run`` share
    one worker, so that session fixture trains once. Without xdist the marks do nothing."""
    for item in items:
        if item.get_closest_marker("dist"):
            item.add_marker(pytest.mark.xdist_group("dist"))
        elif "pretrained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("pretrained"))
