"""The data layer end to end through train.py: DALI on the CPU, real files, bad files."""

import os

import pytest

from helpers import metrics, train
from test_data_helpers import corrupt, make_dataset

pytestmark = [pytest.mark.slow]  # train.py on real JPEGs

TINY = [
    "model.name=resnest14",
    "data.train_crop=32",
    "data.eval_ratio=0.8",
    "data.workers=0",
    "data.dali.threads=2",
    "train.batch_size=4",
    "train.epochs=1",
    "optim.warmup_epochs=0",
    "output.progress=lines",
    "output.log_every=1",
    "output.loggers=[]",
    "output.image_grid=false",
]


@pytest.fixture
def data(tmp_path):
    # grayscale, CMYK and a PNG named .JPEG in the train set, as in real ImageNet
    return make_dataset(tmp_path / "ds", train_per_class=4, val_per_class=3, size=(40, 48))


def test_train_py_runs_on_real_files_with_dali(tmp_path, data):
    backend = "dali"
    out = tmp_path / "run"
    r = train(
        "--config",
        "configs/quickstart.yaml",
        f"data.root={data}",
        f"data.backend={backend}",
        f"output.dir={out}",
        *TINY,
    )
    m = metrics(out)
    assert len(m) == 1 and m[0]["val_images"] == 9
    assert backend in r.stdout + r.stderr


@pytest.mark.parametrize("policy,backend", [("randaugment", "dali"), ("trivialaugment", "torchvision")])
def test_train_py_runs_each_augmentation_policy_with_random_erasing(tmp_path, data, policy, backend):
    """One short run per new policy (AutoAugment: the runs above), each backend once, erasing on."""
    import math

    import yaml

    out = tmp_path / "run"
    train(
        "--config",
        "configs/quickstart.yaml",
        f"data.root={data}",
        f"data.backend={backend}",
        f"data.augment={policy}",
        "data.randaugment_num_ops=3",
        "data.random_erasing=0.25",
        f"output.dir={out}",
        *TINY,
    )
    m = metrics(out)
    assert len(m) == 1 and m[0]["val_images"] == 9 and math.isfinite(m[0]["train_loss"])
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert (saved["augment"], saved["randaugment_num_ops"], saved["random_erasing"]) == (policy, 3, 0.25)


def test_train_py_names_an_unreadable_file_or_skips_it(tmp_path, data):
    bad = data / "train" / "bee" / "bee_002.JPEG"
    corrupt(bad, "truncated")
    out = tmp_path / "run"
    r = train(
        "--config",
        "configs/quickstart.yaml",
        f"data.root={data}",
        "data.backend=dali",
        f"output.dir={out}",
        "data.augment=none",
        *TINY,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert str(bad) in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(out / "checkpoints" / "last.pth")
    r = train(
        "--config",
        "configs/quickstart.yaml",
        f"data.root={data}",
        "data.backend=dali",
        "data.skip_bad_images=true",
        "data.augment=none",
        f"output.dir={tmp_path / 'run2'}",
        *TINY,
    )
    assert "1 unreadable" in r.stdout + r.stderr
    assert metrics(tmp_path / "run2")[0]["val_images"] == 9


def test_train_py_trains_on_tar_shards_as_on_the_folder(tmp_path, data):
    """Shards made from the folder train through train.py in both backends; with torchvision the
    run equals the folder's run (same samples, same augmentation draws), loss for loss."""
    from resnest_train.data.shards import make_shards

    shards = tmp_path / "shards"
    make_shards(str(data), str(shards), shard_size=5, progress=False)
    runs = {}
    for name, root, backend in [
        ("folder", data, "torchvision"),
        ("shards", shards, "torchvision"),
        ("shards_dali", shards, "dali"),
    ]:
        out = tmp_path / name
        train(
            "--config",
            "configs/quickstart.yaml",
            f"data.root={root}",
            f"data.backend={backend}",
            f"output.dir={out}",
            *TINY,
        )
        runs[name] = [
            {k: r[k] for k in ("epoch", "train_loss", "val_loss", "val_top1", "val_images")} for r in metrics(out)
        ]
    assert runs["shards"] == runs["folder"]
    assert [r["val_images"] for r in runs["shards_dali"]] == [9]
    assert runs["shards_dali"][0]["train_loss"] > 0
