"""The run directory (resnest_train/rundir.py): its names, readers and writers, and the one atomic write."""

import os

import pytest
import torch

from resnest_train import checkpoint
from resnest_train.rundir import RunDir, atomic_write, read_json, write_json


def test_layout_names():
    run = RunDir("out")
    assert (run.config, run.metrics, run.run_state, run.tensorboard) == (
        "out/config.yaml",
        "out/metrics.jsonl",
        "out/run_state.json",
        "out/tb",
    )
    assert (run.last_checkpoint, run.best_checkpoint, run.epoch_checkpoint(7)) == (
        "out/checkpoints/last.pth",
        "out/checkpoints/best.pth",
        "out/checkpoints/epoch_0007.pth",
    )


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(str(path), b"old")
    atomic_write(str(path), "new text")
    assert path.read_bytes() == b"new text"

    def broken(f):
        f.write(b"half of it")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(path), broken)
    assert path.read_bytes() == b"new text" and os.listdir(path.parent) == ["f.bin"]


def test_checkpoints_go_through_the_atomic_write(tmp_path):
    path = str(tmp_path / "c.pth")
    checkpoint.atomic_save({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))


def test_metrics_skip_a_line_cut_short_and_trim_to_the_checkpoint(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    assert run.read_metrics() == [] and run.read_run_state() == {}
    for e in (1, 2, 3):
        run.append_metrics({"epoch": e, "train_loss": 3.0 - e})
    with open(run.metrics, "a") as f:
        f.write('{"epoch": 4, "train_lo')  # a crash mid-line
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    run.trim_metrics(2)
    assert run.read_metrics() == [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.0}]


def test_run_state_and_json_round_trip(tmp_path):
    run = RunDir(str(tmp_path))
    run.write_run_state(state="finished", epoch=2, epochs=2, best_top1=41.5)
    saved = run.read_run_state()
    assert {k: saved[k] for k in ("state", "epoch", "epochs", "best_top1")} == {
        "state": "finished",
        "epoch": 2,
        "epochs": 2,
        "best_top1": 41.5,
    }
    write_json(str(tmp_path / "x.json"), {"a": [1, 2]}, indent=1)
    assert read_json(str(tmp_path / "x.json")) == {"a": [1, 2]}
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_json(str(tmp_path / "list.json")) is None and read_json(str(tmp_path / "missing.json")) is None


def test_periodic_checkpoints_rotate_and_resume_candidates_order(tmp_path):
    out = str(tmp_path)
    run = RunDir(out)
    for epoch in (1, 2, 3):
        checkpoint.save_periodic({"epoch": epoch}, out, epoch, keep_last=2)
    assert [os.path.basename(p) for p in run.epoch_checkpoints()] == ["epoch_0002.pth", "epoch_0003.pth"]
    checkpoint.atomic_save({}, run.last_checkpoint)
    checkpoint.atomic_save({}, run.best_checkpoint)
    assert checkpoint.resume_candidates(out) == [
        run.last_checkpoint,
        run.epoch_checkpoint(3),
        run.epoch_checkpoint(2),
        run.best_checkpoint,
    ]
