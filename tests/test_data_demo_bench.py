"""The demo-data generator and the loader benchmark, on small settings."""

import argparse
import hashlib
import os
import subprocess
import sys

import pytest

from resnest_train.data.demo import MARKER, make_demo_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(classes=4, train_per_class=5, val_per_class=2, size=32, seed=3)


def digest(root):
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f != MARKER:
                h.update(os.path.relpath(os.path.join(d, f), root).encode())
                h.update(open(os.path.join(d, f), "rb").read())
    return h.hexdigest()


def test_demo_is_deterministic_complete_and_not_regenerated(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra = make_demo_dataset(str(a), **SMALL)
    assert ra["generated"] and ra["train_images"] == 20 and ra["val_images"] == 8
    make_demo_dataset(str(b), **SMALL)
    assert digest(a) == digest(b)  # same arguments, same bytes
    assert digest(a) != digest(make_demo_dataset(str(tmp_path / "c"), **dict(SMALL, seed=4))["path"])
    classes = sorted(os.listdir(a / "train"))
    assert classes == sorted(os.listdir(a / "val")) == ra["classes"] and len(classes) == 4
    first = a / "train" / classes[0] / sorted(os.listdir(a / "train" / classes[0]))[0]
    assert open(first, "rb").read(3) == b"\xff\xd8\xff"  # real JPEG files
    mtime = os.path.getmtime(first)
    assert make_demo_dataset(str(a), **SMALL)["generated"] is False  # complete: nothing rewritten
    assert os.path.getmtime(first) == mtime
    os.remove(a / MARKER)  # an interrupted run: made again
    assert make_demo_dataset(str(a), **SMALL)["generated"] is True and digest(a) == digest(b)


def test_demo_classes_differ_in_colour_shape_and_texture(tmp_path):
    from resnest_train.data.demo import class_table

    table = class_table(10)
    assert len(set(table)) == 10
    for i in range(3):  # no single cue names the class: each value is shared by 2+ classes
        values = [spec[i] for spec in table]
        assert all(values.count(v) >= 2 for v in values if v not in ("cross", "checker")), i


@pytest.mark.slow
def test_demo_cli_and_wrapper(tmp_path):
    args = ["--classes", "2", "--train-per-class", "2", "--val-per-class", "1", "--size", "24"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-m", "resnest_train.data.demo", "--out", str(tmp_path / "d"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0 and "wrote 4 train + 2 val images" in r.stdout
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--out", str(tmp_path / "d"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0 and "nothing to do" in r.stdout


def test_bench_data_runs_and_reports_both_backends():
    from resnest_train.cli import bench_data as bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--images", "16", "--batch", "4", "--crop", "32", "--repeats", "1", "--autoaugment", "off"])
    res = bench.run(args)
    row = res["results"]["autoaugment_off"]
    assert row["dali"]["images_per_sec"] > 0 and row["torchvision"]["images_per_sec"] > 0
    assert row["dali_vs_torchvision"] > 0 and res["generated"]["avg_kb"] > 30
    assert res["generated"]["unique"] == 16 and row["dali"]["steps"] == 4 and row["dali"]["warm_batches"] == 2
    assert row["dali"]["epoch_images_per_sec"] > 0 and row["dali_vs_torchvision_whole_epoch"] > 0


@pytest.mark.slow
def test_bench_data_compares_folder_and_shards():
    from resnest_train.cli import bench_data as bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    argv = ["--images", "16", "--batch", "4", "--crop", "32", "--repeats", "1", "--autoaugment", "off"]
    args = p.parse_args(argv + ["--backends", "torchvision,dali", "--format", "folder,shards", "--shard-size", "5"])
    row = bench.run(args)["results"]["autoaugment_off"]
    for backend in ("torchvision", "dali"):
        assert row[f"{backend}/shards"]["images_per_sec"] > 0 and row[f"{backend}/shards"]["steps"] == 4
        assert row[f"{backend}_shards_vs_folder"] > 0
