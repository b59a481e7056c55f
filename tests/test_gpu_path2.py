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
    assert sorted(moves, key=str) == sorted([(True, True, torch.uint8), (True, True, torch.int32),
                                             (True, True, torch.float32)], key=str)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and y.dtype == torch.int64


def _batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _uint8_build(c, channels_last):
    from resnest_train.data import dali
    from resnest_train.data.imagenet import load_splits
    _, tr, va = load_splits(c)
    return dali.build(c, tr, va, 4, 0, 1, torch.device("cpu"), 0, channels_last, uint8=True)


def test_dali_uint8_crops_normalised_by_torch_equal_the_float_pipeline(data):
    """uint8 shipping (CPU pipeline, CUDA trainer) gives the float32 pipeline's batches: every
    DALI step before normalisation already rounds to uint8, so only float32 rounding differs."""
    pytest.importorskip("nvidia.dali")
    for channels_last in (False, True):
        c = cfg(data, backend="dali", autoaugment=True, color_jitter=0.4)
        floats = build_loaders(c, batch_size=4, seed=0, channels_last=channels_last)
        uint8_train, uint8_val = _uint8_build(c, channels_last)
        assert uint8_train.uint8 and not floats.train.uint8
        for a, b in ((_batches(floats.train), _batches(uint8_train)),
                     ([(x, y) for x, y in floats.val], [(x, y) for x, y in uint8_val])):
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
    train, _ = _uint8_build(c, False)
    runners, _ = train.build_pipelines(0)
    outputs = runners[0].run()
    raw, labels, mean255 = (torch.from_dlpack(o.as_tensor()) for o in outputs)
    x, y = runners[0].to_torch(outputs)
    assert raw.dtype == torch.uint8 and raw.shape == (4, 32, 32, 3) and mean255.shape == (4, 3)
    expected = (raw.permute(0, 3, 1, 2).float() - mean255.view(4, 3, 1, 1)) \
        / (255 * torch.tensor(c.std).view(1, 3, 1, 1))
    assert (x - expected).abs().max().item() < 1e-5 and torch.equal(y, labels.reshape(-1).long())
    offsets = torch.tensor(c.mean) - mean255 / 255  # each sample's PCA lighting offset, RGB in [0, 1]
    assert offsets.abs().min().item() > 0 and offsets.abs().max().item() < 0.2
    assert len({tuple(o) for o in offsets.tolist()}) == 4
