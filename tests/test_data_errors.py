"""User mistakes and bad files: one clear DataError naming the path, or skipped and counted."""

import os
import shutil

import pytest
import torch

from resnest_train.data import build_loaders
from resnest_train.data.scan import check_image
from resnest_train.errors import DataError, UserError
from test_data_helpers import cfg, corrupt, make_dataset

BACKENDS = ["torchvision", "dali"]


def build(root, backend="torchvision", **kw):
    return build_loaders(cfg(root, backend=backend, augment="none", **kw), batch_size=2)


def run_all(loaders):
    loaders.train.set_epoch(0)
    n = sum(1 for _ in loaders.train)
    return n + sum(1 for _ in loaders.val)


def test_layout_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="data.root is not set"):
        build("")
    with pytest.raises(DataError, match=f"data.root={tmp_path / 'nope'} does not exist"):
        build(tmp_path / "nope")
    root = make_dataset(tmp_path / "ds", specials=False)
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match=f"{root / 'val'} is missing"):
        build(root)
    make_dataset(root, specials=False)
    os.makedirs(root / "train" / "dog")
    os.makedirs(root / "val" / "eel")
    with pytest.raises(DataError) as e:
        build(root)
    msg = str(e.value)
    assert "missing from val/: dog" in msg and "missing from train/: eel" in msg
    os.makedirs(root / "train" / "eel")
    os.makedirs(root / "val" / "dog")
    with pytest.raises(DataError, match="2 class folder.* hold no images .dog, eel"):
        build(root)
    assert issubclass(DataError, UserError)


def test_flat_val_folder_points_to_prepare_imagenet(tmp_path):
    root = make_dataset(tmp_path, specials=False)
    for cls in os.listdir(root / "val"):
        for f in os.listdir(root / "val" / cls):
            os.replace(root / "val" / cls / f, root / "val" / f)
        os.rmdir(root / "val" / cls)
    with pytest.raises(DataError, match="official flat layout.*prepare_imagenet.py"):
        build(root)


def test_check_image_tells_good_from_bad(tmp_path):
    root = make_dataset(tmp_path)
    good = [root / "train" / "ant" / n for n in ("z_gray.JPEG", "z_cmyk.JPEG", "z_png.JPEG", "ant_000.JPEG")]
    assert [check_image(str(p)) for p in good] == [None] * 4
    trailing = root / "train" / "ant" / "ant_001.JPEG"
    with open(trailing, "ab") as f:
        f.write(b"extra bytes after the end-of-image marker")
    assert check_image(str(trailing)) is None  # a full decode decides, and it decodes
    expect = {"empty": "empty file", "truncated": "truncated", "garbage": "not an image"}
    for i, (how, words) in enumerate(expect.items()):
        p = root / "train" / "bee" / f"bee_00{i}.JPEG"
        corrupt(p, how)
        assert words in check_image(str(p)) and check_image(str(p), full=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_bad_file_stops_with_its_path(tmp_path, backend, how):
    root = make_dataset(tmp_path, specials=False)
    bad = root / "train" / "bee" / "bee_002.JPEG"
    corrupt(bad, how)
    loaders = build(root, backend)
    with pytest.raises(DataError) as e:
        run_all(loaders)
    msg = str(e.value)
    assert str(bad) in msg and "data.skip_bad_images: true" in msg and "Traceback" not in msg
    assert len(msg.splitlines()) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_files_are_skipped_and_counted(tmp_path, backend):
    root = make_dataset(tmp_path)  # with grayscale, CMYK and PNG-named-.JPEG, which are fine
    for i, how in enumerate(["empty", "truncated", "garbage"]):
        corrupt(root / "train" / "cat" / f"cat_00{i}.JPEG", how)
    corrupt(root / "val" / "ant" / "ant_001.JPEG", "truncated")
    loaders = build(root, backend, skip_bad_images=True)
    assert loaders.bad_images == 4
    assert len(loaders.train) == (15 - 3) // 2 and loaders.val_images == 9 - 1
    assert run_all(loaders) == len(loaders.train) + len(loaders.val)
    caches = [f for f in os.listdir(root / "train") if f.startswith(".resnest_scan_") and f.endswith(".json")]
    assert len(caches) == 1
    # the second build reads the cached scan instead of checking every file again
    os.utime(root / "train" / "cat" / "cat_001.JPEG")
    from resnest_train.data import scan

    calls = []
    orig = scan.check_files
    scan.check_files = lambda *a, **k: calls.append(a) or orig(*a, **k)
    try:
        assert build(root, backend, skip_bad_images=True).bad_images == 4
    finally:
        scan.check_files = orig
    assert calls == []


def test_torchvision_skips_a_file_the_prescan_missed(tmp_path):
    root = make_dataset(tmp_path, specials=False)
    loaders = build(root, "torchvision", skip_bad_images=True)  # scan: all good
    # damaged after the scan, in a way the cheap checks cannot see: a valid JPEG head and tail
    p = root / "train" / "bee" / "bee_000.JPEG"
    data = bytearray(open(p, "rb").read())
    data[200 : len(data) - 2] = b"\xff\x01" * ((len(data) - 202) // 2) + b"\x00" * ((len(data) - 202) % 2)
    open(p, "wb").write(bytes(data))
    if check_image(str(p), full=True) is None:
        pytest.skip("this damage still decodes")
    assert run_all(loaders) == len(loaders.train) + len(loaders.val)
    assert loaders.bad_images == 1


def test_too_few_images_for_the_global_batch(tmp_path):
    root = make_dataset(tmp_path, specials=False)
    with pytest.raises(DataError, match="fewer than one global batch of 8 x 2 processes"):
        build_loaders(cfg(root), batch_size=8, rank=0, world_size=2)


def test_unknown_backend_and_dali_device(tmp_path, monkeypatch):
    root = make_dataset(tmp_path, specials=False)
    with pytest.raises(DataError, match="data.backend='pil' is not one of"):
        build(root, "pil")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    with pytest.raises(DataError, match="data.dali.device=gpu needs CUDA"):
        build(root, "dali", **{"dali.device": "gpu"})


def test_file_lists(tmp_path):
    root = make_dataset(tmp_path / "ds", specials=False)
    lines = {"train": [], "val": []}
    for split in lines:
        for label, cls in enumerate(sorted(os.listdir(root / split))):
            for f in sorted(os.listdir(root / split / cls)):
                lines[split].append(f"ds/{split}/{cls}/{f} {label}")
    for split in lines:
        (tmp_path / f"{split}.txt").write_text("\n".join(lines[split]) + "\n")
    for backend in BACKENDS:
        c = cfg(
            "",
            backend=backend,
            augment="none",
            train_list=str(tmp_path / "train.txt"),
            val_list=str(tmp_path / "val.txt"),
        )
        loaders = build_loaders(c, batch_size=2)
        assert loaders.num_classes == 3 and loaders.val_images == 9
        assert run_all(loaders) == 6 + 5
    (tmp_path / "bad.txt").write_text("ds/train/ant/ant_000.JPEG zero\n")
    with pytest.raises(DataError, match="bad.txt:1: expected 'relative/path label'"):
        build_loaders(cfg("", train_list=str(tmp_path / "bad.txt"), val_list=str(tmp_path / "val.txt")), 2)
