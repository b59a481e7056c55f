"""Tar shards (issue 15): making and checking them, and the loader contracts over them in both backends."""

import json
import logging
import os

import numpy as np
import pytest
import torch

from resnest_train.cli.make_shards import main as make_shards_main
from resnest_train.data import build_loaders
from resnest_train.data.layout import check_layout, scan_split
from resnest_train.data.shards import MANIFEST, load_shard_splits, make_shards, parse_index
from resnest_train.errors import DataError
from test_data_helpers import cfg, corrupt, make_dataset

BACKENDS = ["torchvision", "dali"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 3 classes x 7 train (+ grayscale, CMYK, PNG named .JPEG in class 0) = 24 train, 3 x 3 val
    root = tmp_path_factory.mktemp("folder")
    return make_dataset(root, train_per_class=7, val_per_class=3, size=(40, 48))


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "out"
    make_shards(str(folder), str(out), shard_size=5, progress=False)
    return out


def epoch(loader, e, start=0):
    loader.set_epoch(e, start_step=start)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_shards_are_balanced_shuffled_and_hold_the_folders_bytes(folder, shards):
    m = json.loads((shards / MANIFEST).read_text())
    _, _, classes = check_layout(str(folder))
    assert m["classes"] == classes == ["ant", "bee", "cat"]
    train = m["splits"]["train"]
    assert train["images"] == 24 and train["per_class"] == [10, 7, 7]
    assert [s["images"] for s in train["shards"]] == [5, 5, 5, 5, 4]  # ceil(24 / 5) shards, sizes within one
    folder_split = scan_split(str(folder / "train"), "train", classes)
    for s in train["shards"]:  # every shard holds each class 24 / 5 times, within one
        members = parse_index(str(shards / "train" / s["index"]))
        labels = [int(folder_split.labels[int(mem[0][3].split("_")[0])]) for mem in members]
        counts = np.bincount(labels, minlength=3)
        assert counts.max() - counts.min() <= 1 and counts[0] in (2, 3)
    first = [int(mem[0][3][:9]) for mem in parse_index(str(shards / "train" / "shard-000000.idx"))]
    assert first != sorted(first)  # shuffled
    val_first = [int(mem[0][3][:9]) for mem in parse_index(str(shards / "val" / "shard-000000.idx"))]
    assert val_first == list(range(5))  # val keeps the folder's order
    classes2, split, val = load_shard_splits(str(shards))
    assert classes2 == classes and len(split) == 24 and len(val) == 9
    assert np.array_equal(split.labels, folder_split.labels)
    for i in range(len(split)):  # exact random access: sample i is the folder's file i, byte for byte
        assert split.open(i) == open(folder_split.path(i), "rb").read()
    assert split.files[0].endswith(":000000000_ant_000.jpg") and "z_png" in split.files[9]


def test_a_process_keeps_at_most_max_open_tars_open(folder, shards, monkeypatch):
    """ImageNet's 1,282 train tars would pass the usual limit of 1,024 open files per process."""
    from resnest_train.data import shards as shards_module

    monkeypatch.setattr(shards_module, "MAX_OPEN_TARS", 2)
    _, train, _ = load_shard_splits(str(shards))
    classes = check_layout(str(folder))[2]
    folder_split = scan_split(str(folder / "train"), "train", classes)
    before = len(os.listdir("/proc/self/fd"))
    order = np.random.default_rng(0).permutation(len(train))
    for i in np.concatenate([order, order]):  # every one of the 5 tars, several times, in random order
        assert train.open(int(i)) == open(folder_split.path(int(i)), "rb").read()
        assert len(train._fds) <= 2
    assert len(os.listdir("/proc/self/fd")) - before == len(train._fds) == 2
    train.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_index_files_are_dalis_wds2idx_and_the_bytes_are_reproducible(folder, shards, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")  # DALI's tool, installed with the nvidia-dali wheel
    for tar in ("shard-000000.tar", "shard-000004.tar"):
        theirs = tmp_path / "theirs.idx"
        with wds2idx.IndexCreator(str(shards / "train" / tar), str(theirs), verbose=False) as ic:
            ic.create_index()
        assert theirs.read_text() == (shards / "train" / tar.replace(".tar", ".idx")).read_text()
    again = make_shards(str(folder), str(tmp_path / "again"), shard_size=5, progress=False)
    first = json.loads((shards / MANIFEST).read_text())
    assert [s["sha256"] for s in again["splits"]["train"]["shards"]] == [
        s["sha256"] for s in first["splits"]["train"]["shards"]
    ]


def test_check_passes_and_names_a_changed_shard(folder, tmp_path, capsys):
    out = tmp_path / "sh"
    assert make_shards_main([str(folder), str(out), "--shard-size", "10", "--no-progress"]) == 0
    assert make_shards_main(["--check", str(out), "--no-progress", "--backend", "torchvision"]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
    tar = out / "train" / "shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # one byte of the first image
    tar.write_bytes(bytes(data))
    assert make_shards_main(["--check", str(out), "--no-progress", "--backend", "torchvision"]) == 1
    text = capsys.readouterr().out
    assert f"problem: {tar}: checksum differs from the manifest" in text
    # a folder that is not empty is refused with a message, not a traceback
    assert make_shards_main([str(folder), str(out), "--no-progress"]) == 2
    assert f"error: {out} is not empty" in capsys.readouterr().err


def test_data_format_finds_the_manifest_and_names_the_fix(folder, shards):
    from resnest_train.preflight import CHOICES

    assert CHOICES["data.format"] == ("auto", "folder", "shards")
    L = build_loaders(cfg(shards, backend="torchvision", augment="none"), batch_size=4)
    assert L.classes == ["ant", "bee", "cat"] and L.val_images == 9 and len(L.train) == 6
    with pytest.raises(DataError, match=r"data.format=shards but data.root=.* holds no manifest.json"):
        build_loaders(cfg(folder, backend="torchvision", format="shards"), batch_size=4)
    with pytest.raises(DataError, match=r"data.format='tar' is not one of auto, folder, shards"):
        build_loaders(cfg(folder, backend="torchvision", format="tar"), batch_size=4)


def test_a_truncated_shard_copy_is_named(folder, tmp_path):
    out = tmp_path / "sh"
    make_shards(str(folder), str(out), shard_size=10, progress=False)
    tar = out / "val" / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[:2048])
    with pytest.raises(DataError, match=rf"The shard {tar} has 2048 bytes, the manifest says \d+: it is truncated"):
        load_shard_splits(str(out))


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_give_the_folders_samples_batch_for_batch(folder, shards, backend):
    """Same seed, same samples in every batch as the folder; torchvision's crops are the folder's bit for
    bit, DALI's draws differ (its graph starts with external sources instead of the file reader)."""
    c = dict(backend=backend, augment="trivialaugment", random_erasing=0.5)
    a = build_loaders(cfg(folder, **c), batch_size=4, seed=5)
    b = build_loaders(cfg(shards, **c), batch_size=4, seed=5)
    assert a.classes == b.classes
    fa, fb = epoch(a.train, 1), epoch(b.train, 1)
    assert len(fa) == len(fb) == 6
    for (xa, ya), (xb, yb) in zip(fa, fb):
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb) == (backend == "torchvision")
    va, vb = list(a.val), list(b.val)
    assert len(va) == len(vb) == 3
    for (xa, ya), (xb, yb) in zip(va, vb):  # eval is deterministic: identical in both backends
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_global_batches_do_not_depend_on_the_world_size(shards, backend):
    c = cfg(shards, backend=backend, augment="none")
    one = torch.cat([y for _, y in epoch(build_loaders(c, batch_size=4, seed=2).train, 3)])
    ranks = [
        [y for _, y in epoch(build_loaders(c, batch_size=2, rank=r, world_size=2, seed=2).train, 3)] for r in range(2)
    ]
    two = torch.cat([torch.cat([ranks[0][k], ranks[1][k]]) for k in range(len(ranks[0]))])
    assert len(one) == len(two) == 24 and torch.equal(one, two)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_keep_the_issue_14_options(folder, shards, backend):
    """repeated_aug, train_crop_schedule and random_erasing over shards: the folder's samples and sizes."""
    c = dict(backend=backend, augment="none", repeated_aug=2, random_erasing=0.5)
    sched = {"train_crop_schedule.start_crop": 24, "train_crop_schedule.start_ramp": 0}
    sched.update({"train_crop_schedule.end_ramp": 2, "train_crop_schedule.step": 4})
    a = build_loaders(cfg(folder, **c, **sched), batch_size=4, seed=1)
    b = build_loaders(cfg(shards, **c, **sched), batch_size=4, seed=1)
    for e, size in ((0, 24), (1, 28), (2, 32)):
        fa, fb = epoch(a.train, e), epoch(b.train, e)
        assert all(x.shape[-1] == size for x, _ in fb)
        assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(fa, fb))
        assert any((x == 0).any() for x, _ in fb)  # a rectangle was erased (set to 0)
        if backend == "torchvision":
            assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(fa, fb))


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("badfolder")
    make_dataset(root, train_per_class=4, val_per_class=2, specials=False)
    corrupt(root / "train" / "bee" / "bee_001.JPEG", "truncated")
    out = tmp_path_factory.mktemp("badshards") / "out"
    make_shards(str(root), str(out), shard_size=5, progress=False)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreadable_member_is_named_by_shard_and_member(bad_shards, backend):
    _, split, _ = load_shard_splits(str(bad_shards))
    i = next(i for i, f in enumerate(split.files) if "bee_001" in f)
    L = build_loaders(cfg(bad_shards, backend=backend, augment="none"), batch_size=12)
    with pytest.raises(DataError) as e:
        epoch(L.train, 0)
    assert f"Cannot read the image {split.path(i)} (" in str(e.value)
    assert str(bad_shards / "train" / "shard-0000") in str(e.value) and ".tar:000000005_bee_001.jpg" in str(e.value)
    assert "data.skip_bad_images: true" in str(e.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_bad_images_skips_an_unreadable_member(bad_shards, backend, caplog):
    with caplog.at_level(logging.WARNING, logger="resnest_train.data"):
        L = build_loaders(cfg(bad_shards, backend=backend, augment="none", skip_bad_images=True), batch_size=11)
    assert L.bad_images == 1 and len(L.train) == 1  # 11 of 12 images left: one full batch
    assert any("1 unreadable image(s): 1 of 12 train, 0 of 6 val" in r.getMessage() for r in caplog.records)
    ((x, y),) = epoch(L.train, 0)
    assert x.shape[0] == 11 and torch.isfinite(x).all()
    assert any(f.startswith(".resnest_scan_") for f in os.listdir(bad_shards / "train"))
