"""scripts/prepare_imagenet.py: val folder sorting from both label formats, and --check."""

import os
import subprocess
import sys

import pytest
from PIL import Image

from test_data_helpers import corrupt, make_dataset, smooth_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "prepare_imagenet.py")
SYNSETS = ["n01440764", "n01443537", "n01484850"]  # sorted order
DEVKIT_ORDER = ["n01484850", "n01440764", "n01443537"]  # a meta.mat-like order (not sorted)
TRUTH = [SYNSETS[i] for i in (2, 0, 1, 1, 0, 2)]  # the synset of val images 1..6


def script():
    """The module behind scripts/prepare_imagenet.py (and resnest-prepare-imagenet)."""
    from resnest_train.cli import prepare_imagenet

    return prepare_imagenet


def flat_val(d):
    import numpy as np

    os.makedirs(d)
    rng = np.random.default_rng(0)
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]
    for n in names:
        Image.fromarray(smooth_image(rng, 20, 24)).save(d / n)
    return names


def layout(d):
    return {c: sorted(os.listdir(d / c)) for c in sorted(os.listdir(d)) if os.path.isdir(d / c)}


def expected(names):
    out = {}
    for n, w in zip(names, TRUTH):
        out.setdefault(w, []).append(n)
    return out


def test_kaggle_csv_moves_dry_runs_and_symlinks(tmp_path, capsys):
    val = tmp_path / "val"
    names = flat_val(val)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(
        "ImageId,PredictionString\n"
        + "".join(
            f"{os.path.splitext(n)[0]},{w} 10 20 30 40 {w} 1 2 3 4\n" for n, w in reversed(list(zip(names, TRUTH)))
        )
    )
    mod = script()
    assert mod.main(["--val-dir", str(val), "--labels", str(csv), "--dry-run"]) == 0
    assert "would have moved 6 images into 3 class folders" in capsys.readouterr().out
    assert sorted(os.listdir(val)) == names  # nothing changed
    out = tmp_path / "linked"
    assert mod.main(["--val-dir", str(val), "--labels", str(csv), "--mode", "symlink", "--out", str(out)]) == 0
    assert layout(out) == expected(names) and os.path.islink(out / TRUTH[0] / names[0])
    assert mod.main(["--val-dir", str(val), "--labels", str(csv)]) == 0
    assert layout(val) == expected(names)


def test_devkit_ground_truth_with_its_own_synset_order(tmp_path, capsys):
    val = tmp_path / "val"
    names = flat_val(val)
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{DEVKIT_ORDER.index(w) + 1}\n" for w in TRUTH))
    sorted_map = tmp_path / "LOC_synset_mapping.txt"
    sorted_map.write_text("".join(f"{w} some name, other name\n" for w in SYNSETS))
    devkit_map = tmp_path / "devkit_synsets.txt"
    devkit_map.write_text("".join(f"{w} a description\n" for w in DEVKIT_ORDER))
    mod = script()
    # a sorted mapping would silently mislabel devkit ids: refused with the reason
    assert mod.main(["--val-dir", str(val), "--labels", str(gt), "--synsets", str(sorted_map)]) == 2
    err = capsys.readouterr().err
    assert "sorted by synset id" in err and "meta.mat" in err
    assert mod.main(["--val-dir", str(val), "--labels", str(gt), "--synsets", str(devkit_map)]) == 0
    assert layout(val) == expected(names)


def test_devkit_ids_in_sorted_order_when_asked(tmp_path):
    val = tmp_path / "val"
    names = flat_val(val)
    gt = tmp_path / "gt.txt"
    gt.write_text("".join(f"{SYNSETS.index(w) + 1}\n" for w in TRUTH))
    m = tmp_path / "map.txt"
    m.write_text("".join(f"{w} x\n" for w in SYNSETS))
    assert (
        script().main(
            ["--val-dir", str(val), "--labels", str(gt), "--synsets", str(m), "--id-order", "sorted", "--mode", "copy"]
        )
        == 0
    )
    assert layout(val) == expected(names)


@pytest.mark.slow
def test_check_reports_counts_bad_files_and_missing_classes(tmp_path):
    root = make_dataset(tmp_path / "ds")  # includes grayscale, CMYK and PNG-named .JPEG: all fine
    corrupt(root / "train" / "bee" / "bee_001.JPEG", "truncated")
    corrupt(root / "val" / "cat" / "cat_000.JPEG", "empty")
    os.makedirs(root / "train" / "dog")
    Image.new("RGB", (8, 8)).save(root / "train" / "dog" / "d.JPEG")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, SCRIPT, "--check", str(root), "--workers", "2", "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    out = r.stdout
    assert "train: 16 images in 4 classes (1-7 per class), 1 unreadable" in out
    assert "val: 9 images in 3 classes (3-3 per class), 1 unreadable" in out
    assert f"unreadable: {root / 'train' / 'bee' / 'bee_001.JPEG'}" in out
    assert "classes missing from val: dog" in out
    assert "checking" not in out and "train: 16/16 100% [" in r.stderr  # progress lines go to stderr
    # the check leaves its list where data.skip_bad_images looks first: no second scan
    import shutil

    shutil.rmtree(root / "train" / "dog")
    r = subprocess.run(
        [sys.executable, SCRIPT, "--check", str(root), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1 and "2 problem(s) found" in r.stdout  # the two unreadable files
    from resnest_train.data import build_loaders, scan
    from test_data_helpers import cfg

    orig, calls = scan.check_files, []
    scan.check_files = lambda *a, **k: calls.append(a) or orig(*a, **k)
    try:
        loaders = build_loaders(cfg(root, skip_bad_images=True), batch_size=2)
    finally:
        scan.check_files = orig
    assert loaders.bad_images == 2 and calls == []


@pytest.mark.slow
def test_check_of_a_clean_dataset_passes(tmp_path):
    root = make_dataset(tmp_path / "ds", specials=False)
    r = subprocess.run(
        [sys.executable, SCRIPT, "--check", str(root), "--quick", "--no-progress"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok") and r.stderr == ""
