"""build_loaders(..., val_only=True), what evaluating a checkpoint uses: a folder with val/ alone,
a val list alone or val shards alone give the same val batches and classes as the full set,
and the train split is neither read nor required."""

import shutil

import pytest
import torch

from resnest_train.data import build_loaders
from resnest_train.data.layout import load_splits
from resnest_train.data.shards import make_shards
from resnest_train.errors import DataError
from test_data_helpers import cfg, make_dataset

BACKENDS = ["torchvision", "dali"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("full"), val_per_class=3, specials=False)


def val_batches(loaders):
    xs, ys = zip(*[(x.clone(), y.clone()) for x, y in loaders.val])
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_val_folder_alone_gives_the_full_sets_val_batches(full, tmp_path, backend):
    val_root = tmp_path / "val_root"
    shutil.copytree(full / "val", val_root / "val")  # no train/ at all
    ref = build_loaders(cfg(full, backend=backend, eval_ratio=1.0), batch_size=4)
    got = build_loaders(cfg(val_root, backend=backend, eval_ratio=1.0), batch_size=4, val_only=True)
    assert got.train is None and got.classes == ref.classes == ["ant", "bee", "cat"]
    assert got.val_images == ref.val_images == 9
    (x, y), (x_ref, y_ref) = val_batches(got), val_batches(ref)
    assert torch.equal(y, y_ref) and torch.equal(x, x_ref)


def test_without_val_only_the_train_folder_is_still_required(full, tmp_path):
    shutil.copytree(full / "val", tmp_path / "val")
    with pytest.raises(DataError, match=r"train is missing: data.root=.* must hold train/<class>/\* and val/"):
        load_splits(cfg(tmp_path))
    (tmp_path / "val2").mkdir()
    with pytest.raises(DataError, match=r"val is missing: data.root=.* must hold val/<class>/\*\. "):
        load_splits(cfg(tmp_path / "val2"), val_only=True)


def test_a_val_list_alone_is_enough_only_for_val_only(full, tmp_path):
    lines = [f"val/{c}/{c}_{i:03d}.JPEG {k}" for k, c in enumerate(["ant", "bee", "cat"]) for i in range(3)]
    (full / "val.txt").write_text("\n".join(lines) + "\n")
    listed = cfg("", val_list=str(full / "val.txt"))
    classes, train, val = load_splits(listed, val_only=True)
    assert train is None and classes == ["0", "1", "2"] and val.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    with pytest.raises(DataError, match="data.train_list and data.val_list go together"):
        load_splits(listed)
    with pytest.raises(DataError, match="Evaluating needs data.val_list only"):
        load_splits(cfg("", train_list=str(full / "val.txt")), val_only=True)


def test_val_shards_alone_are_enough(full, tmp_path):
    out = tmp_path / "shards"
    make_shards(str(full), str(out), shard_size=4, progress=False)
    ref = build_loaders(cfg(out, backend="torchvision", eval_ratio=1.0), batch_size=4)
    shutil.rmtree(out / "train")
    got = build_loaders(cfg(out, backend="torchvision", eval_ratio=1.0), batch_size=4, val_only=True)
    assert got.train is None and got.classes == ref.classes and got.val_images == 9
    (x, y), (x_ref, y_ref) = val_batches(got), val_batches(ref)
    assert torch.equal(y, y_ref) and torch.equal(x, x_ref)
    with pytest.raises(DataError):  # training needs the train shards
        build_loaders(cfg(out, backend="torchvision"), batch_size=4)
