"""Issue 16, items 3, 9 and 10 checked on the CPU: transfers (labels made on the device or
pinned, uint8 crops from a CPU DALI pipeline), one validation pass for model and EMA, and
the asynchronous, atomic, timed checkpoint save."""

import os
import threading

import pytest
import torch

from helpers import TINY, metrics, scalars, train
from resnest_train import checkpoint
from resnest_train.data import build_loaders
from resnest_train.errors import UserError
from test_data_helpers import cfg, make_dataset

CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, train_per_class=4, val_per_class=3, size=(40, 48))
    return root


# ---------------------------------------------------------------------------------------
# Labels reach the device without a per-step copy from pageable memory
# ---------------------------------------------------------------------------------------


def test_synthetic_labels_are_made_on_the_device_with_the_same_values(monkeypatch):
    from resnest_train.data import synthetic

    c = cfg("/unused", backend="synthetic")
    c.synthetic.train_images, c.synthetic.val_images, c.synthetic.num_classes = 64, 20, 7
    loaders = build_loaders(c, batch_size=8, seed=3)
    moves = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: moves.append(a or k) or real_to(self, *a, **k))
    loaders.train.set_epoch(2, start_step=1)
    batches = list(loaders.train) + list(loaders.val)
    # Before: every batch's labels were made on the CPU and moved with labels.to(device).
    assert moves == []
    # The (seed, epoch, rank, step) contract: on the CPU the same labels as a CPU generator gives.
    s = synthetic.stream_seed(3, 2, 0, 1)
    expected = torch.randint(0, 7, (8,), generator=torch.Generator().manual_seed(s))
    assert torch.equal(batches[0][1], expected) and batches[0][1].dtype == torch.int64


def test_dali_cpu_to_cuda_moves_every_output_from_pinned_memory(data, monkeypatch):
    """A CPU pipeline feeding a CUDA trainer: images (uint8), labels and lighting offsets are
    copied into pinned memory and moved with non_blocking=True (CUDA faked: pinning and the
    moves are recorded)."""
    pytest.importorskip("nvidia.dali")
    from resnest_train.data import dali

    pinned, moves = set(), []

    def fake_pinned(src):
        out = src.clone()
        pinned.add(out.data_ptr())
        return out

    def fake_to(self, device=None, *args, non_blocking=False, **kw):
        if isinstance(device, torch.device) and device.type == "cuda":
            moves.append((self.data_ptr() in pinned, non_blocking, self.dtype))
            return self
        return real_to(self, device, *args, non_blocking=non_blocking, **kw)

    real_to = torch.Tensor.to
    monkeypatch.setattr(dali, "_pinned", fake_pinned)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)  # a move to CUDA is recorded and stays on the CPU
    loaders = build_loaders(cfg(data, backend="dali", lighting=0.1), batch_size=4, seed=0)
    loader = loaders.train
    assert loader.uint8 is False  # a CPU trainer keeps DALI's float32 output
    loader.uint8, loader.device = dali.ship_uint8("cpu", CUDA), CUDA  # what build() decides for a CUDA trainer
    assert loader.uint8 is True
    runners, _ = loader.build_pipelines(0)
    moves.clear()  # the normaliser's constants, moved once
    x, y = runners[0].to_torch(runners[0].run())
    # Before: the labels went to the GPU from pageable memory, and the images as float32.
    assert sorted(moves, key=str) == sorted(
        [(True, True, torch.uint8), (True, True, torch.int32), (True, True, torch.float32)], key=str
    )
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and y.dtype == torch.int64


def _batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _uint8_build(c, channels_last):
    from resnest_train.data import dali
    from resnest_train.data.layout import load_splits

    _, tr, va = load_splits(c)
    return dali.build(c, tr, va, 4, 0, 1, torch.device("cpu"), 0, channels_last, uint8=True)


def test_dali_uint8_crops_normalised_by_torch_equal_the_float_pipeline(data):
    """uint8 shipping (CPU pipeline, CUDA trainer) gives the float32 pipeline's batches: every
    DALI step before normalisation already rounds to uint8, so only float32 rounding differs."""
    pytest.importorskip("nvidia.dali")
    for channels_last in (False, True):
        c = cfg(data, backend="dali", augment="autoaugment", color_jitter=0.4)
        floats = build_loaders(c, batch_size=4, seed=0, channels_last=channels_last)
        uint8_train, uint8_val = _uint8_build(c, channels_last)
        assert uint8_train.uint8 and not floats.train.uint8
        for a, b in (
            (_batches(floats.train), _batches(uint8_train)),
            ([(x, y) for x, y in floats.val], [(x, y) for x, y in uint8_val]),
        ):
            assert len(a) == len(b) > 0
            for (xa, ya), (xb, yb) in zip(a, b):
                assert xb.dtype == torch.float32 and xb.shape == xa.shape and torch.equal(ya, yb)
                assert (xa - xb).abs().max().item() < 1e-5
                assert xb.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_dali_uint8_crops_keep_the_per_sample_lighting(data):
    """With lighting the pipeline ships each sample's mean (lighting folded in) next to the
    uint8 crop, and torch applies (x - mean) / (255 std) with it."""
    pytest.importorskip("nvidia.dali")
    c = cfg(data, backend="dali", lighting=0.1)
    loader, _ = _uint8_build(c, False)
    runners, _ = loader.build_pipelines(0)
    outputs = runners[0].run()
    raw, labels, mean255 = (torch.from_dlpack(o.as_tensor()) for o in outputs)
    x, y = runners[0].to_torch(outputs)
    assert raw.dtype == torch.uint8 and raw.shape == (4, 32, 32, 3) and mean255.shape == (4, 3)
    expected = (raw.permute(0, 3, 1, 2).float() - mean255.view(4, 3, 1, 1)) / (
        255 * torch.tensor(c.std).view(1, 3, 1, 1)
    )
    assert (x - expected).abs().max().item() < 1e-5 and torch.equal(y, labels.reshape(-1).long())
    offsets = torch.tensor(c.mean) - mean255 / 255  # each sample's PCA lighting offset, RGB in [0, 1]
    assert offsets.abs().min().item() > 0 and offsets.abs().max().item() < 0.2
    assert len({tuple(o) for o in offsets.tolist()}) == 4


# ---------------------------------------------------------------------------------------
# With EMA, one pass over the validation set evaluates both models
# ---------------------------------------------------------------------------------------


def test_evaluating_model_and_ema_in_one_pass_equals_two_passes(monkeypatch):
    from resnest_train.config_loader import load_config
    from resnest_train.engine import build_model
    from resnest_train.loop import evaluate
    from resnest_train.trainer import build_ema

    c = load_config(None, TINY + ["data.synthetic.val_images=20"])
    loaders = build_loaders(c.data, batch_size=8, seed=0)
    torch.manual_seed(0)
    model, other = build_model(c, 5), build_model(c, 5)
    ema = build_ema(model, 0.9)
    ema.module.load_state_dict(other.state_dict())  # an EMA whose numbers differ from the model's
    separate = [evaluate(m, loaders.val, torch.device("cpu"), "none") for m in (model, ema.module)]
    passes = []
    real_iter = type(loaders.val).__iter__
    monkeypatch.setattr(type(loaders.val), "__iter__", lambda self: passes.append(1) or real_iter(self))
    together = evaluate([model, ema.module], loaders.val, torch.device("cpu"), "none")
    assert together == separate and separate[0] != separate[1]
    assert len(passes) == 1 and together[0]["images"] == 20


# ---------------------------------------------------------------------------------------
# Checkpoints: written in the background, atomic, of the state at save time, timed
# ---------------------------------------------------------------------------------------


def test_background_save_holds_the_state_at_save_time(tmp_path):
    weights = torch.arange(6.0)
    state = {"model": {"w": weights}, "step": 3}
    release = threading.Event()
    path = str(tmp_path / "last.pth")

    def writes(obj):
        release.wait(10)  # the write starts only after training has changed the weights
        checkpoint.atomic_save(obj, path)
        return [path]

    saver = checkpoint.AsyncSaver()
    saver.save(state, writes, step=3)
    weights.mul_(-1)  # the next optimizer step, in place, while the writer holds its copy
    state["step"] = 4
    release.set()
    saver.wait()
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["model"]["w"], torch.arange(6.0)) and saved["step"] == 3
    [report] = saver.done()
    assert report.paths == [path] and report.bytes == os.path.getsize(path) and report.seconds >= 0
    assert [f for f in os.listdir(tmp_path)] == ["last.pth"]  # no temp file left


def test_a_failed_background_write_raises_in_the_training_thread(tmp_path):
    path = str(tmp_path / "last.pth")
    checkpoint.atomic_save({"step": 1}, path)

    def full_disk(obj):
        raise OSError(28, "No space left on device")

    saver = checkpoint.AsyncSaver()
    saver.save({"step": 2}, full_disk, step=2)
    with pytest.raises(
        UserError,
        match=r"Writing a checkpoint failed \(OSError: \[Errno 28\] No space left on "
        r"device\); training stopped.*intact.*Free disk space",
    ):
        saver.wait()
    assert torch.load(path, weights_only=True) == {"step": 1}
    saver.save({"step": 3}, full_disk, step=3)
    with pytest.raises(UserError):  # the next save raises it too, before starting another
        saver.save({"step": 4}, lambda obj: [], step=4)


@pytest.mark.slow
def test_a_run_logs_each_checkpoint_write_and_its_size(tmp_path):
    out = tmp_path / "run"
    result = train(*TINY, "train.ema=true", "output.save_every_steps=6", f"output.dir={out}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("checkpoint ")]
    # 8 steps per epoch: mid-epoch saves at steps 6 and 12, epoch ends at 8 and 16 (last, best, epoch_NNNN)
    assert [line.split(" written at step ")[1].split(":")[0] for line in lines] == ["6", "8", "12", "16"], lines
    assert "last.pth, best.pth, epoch_0001.pth" in lines[1] and " MB in " in lines[1]
    size_mb = os.path.getsize(out / "checkpoints" / "last.pth") / 1e6
    files = lines[-1].split("checkpoint ")[1].split(" written")[0].split(", ")  # last.pth, epoch_0002.pth (+ best)
    assert abs(float(lines[-1].split(": ")[1].split(" MB")[0]) - len(files) * size_mb) < 0.01 * size_mb + 0.1
    records = metrics(out)
    # epoch 2's record: the newest write finished by then, the step-12 last.pth
    assert records[1]["checkpoint_save_s"] > 0 and records[1]["checkpoint_mb"] == pytest.approx(size_mb, rel=0.01)
    assert sorted(scalars(str(out / "tb"), "checkpoint/save_s")) == [6, 8, 12, 16]
    assert "val_top1_ema" in records[1]


@pytest.mark.slow
def test_overhead_benchmark_compares_train_py_with_a_bare_loop():
    import json
    import subprocess
    import sys

    from helpers import ROOT, env

    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "benchmark.py"),
            "overhead",
            "--steps",
            "2",
            "--pairs",
            "1",
            "--img-size",
            "32",
            "--batch",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["train_py_images_per_sec"] > 0 and r["bare_images_per_sec"] > 0
    assert r["ratio"] == pytest.approx(r["train_py_images_per_sec"] / r["bare_images_per_sec"])
