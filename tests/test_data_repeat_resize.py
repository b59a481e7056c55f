"""Repeated augmentation (data.repeated_aug) and progressive resizing (data.train_crop_schedule)
in the torchvision and DALI backends: the epoch plan against timm's RepeatAugSampler, the crop
sizes against FFCV's formula, the batches, exact mid-epoch resume and eval left alone."""

import os
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from helpers import event_files, metrics, scalars, scalars_in, train, train_preempted
from resnest_train.data import build_loaders
from resnest_train.data.common import epoch_indices, epoch_samples, train_crop_at, train_steps
from test_data_helpers import cfg, make_dataset

BACKENDS = ["torchvision", "dali"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 3 classes x 4 train + 3 specials in class 0 = 15 train images, 3 x 3 val
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, train_per_class=4, val_per_class=3, size=(40, 48))
    return root


def epoch(loader, e, start=0):
    loader.set_epoch(e, start_step=start)
    return [(x.clone(), y.clone()) for x, y in loader]


# ---------------------------------------------------------------------------------------
# Repeated augmentation
# ---------------------------------------------------------------------------------------


def test_repeated_plan_is_timms_repeat_aug_sampler_on_the_epochs_permutation():
    """Rank r's samples are timm's RepeatAugSampler (DeiT's RASampler) of rank r over the epoch's
    permutation, cut to the unchanged number of steps."""
    from timm.data.distributed_sampler import RepeatAugSampler

    n, b, seed, e = 103, 4, 5, 2
    perm = epoch_indices(n, 1, 0, 1, seed, e)  # the epoch's permutation: batch 1, one rank
    for w, repeats in ((3, 3), (4, 3), (2, 3), (3, 2)):
        steps = train_steps(n, b, w)
        for r in range(w):
            ref = RepeatAugSampler(
                range(n), num_replicas=w, rank=r, shuffle=False, num_repeats=repeats, selected_round=0
            )
            expected = perm[list(ref)[: steps * b]]
            idx, copies = epoch_samples(n, b, r, w, seed, e, repeats)
            assert np.array_equal(idx, expected), (w, repeats, r)
            assert len(idx) == steps * b and set(copies.tolist()) <= set(range(repeats))


def test_repeated_plan_three_copies_on_three_ranks_and_the_same_global_batches():
    n, seed, e, repeats = 103, 5, 2, 3
    plans = {}
    for w, b in ((3, 4), (1, 12), (6, 2)):  # the same global batch of 12
        steps = train_steps(n, b, w)
        assert steps == 8  # unchanged by repeated augmentation
        parts = [epoch_samples(n, b, r, w, seed, e, repeats) for r in range(w)]
        ranks = defaultdict(list)
        for r, (idx, copies) in enumerate(parts):
            for i, c in zip(idx.tolist(), copies.tolist()):
                ranks[i].append((r, c))
        # 8 steps x 12 = 96 slots = 32 images x 3 copies, copies 0, 1, 2 of each
        assert len(ranks) == 32 and all(sorted(c for _, c in v) == [0, 1, 2] for v in ranks.values())
        if w >= repeats:
            assert all(len({r for r, _ in v}) == 3 for v in ranks.values())  # on 3 different ranks
        plans[w] = [
            Counter(
                zip(
                    np.concatenate([p[0][k * b : (k + 1) * b] for p in parts]).tolist(),
                    np.concatenate([p[1][k * b : (k + 1) * b] for p in parts]).tolist(),
                )
            )
            for k in range(steps)
        ]
    assert plans[1] == plans[3] == plans[6]  # global batch k: the same (image, copy) pairs
    other = epoch_samples(n, 4, 0, 3, seed, e + 1, repeats)[0]
    assert not np.array_equal(other, epoch_samples(n, 4, 0, 3, seed, e, repeats)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [3, 1])
def test_loaders_show_each_image_three_times_augmented_differently(data, backend, world):
    c = cfg(data, backend=backend, autoaugment=False, repeated_aug=3)
    b = 2 * (3 // world)  # the same global batch of 6 for both worlds: 15 // 6 = 2 steps
    images, ranks = defaultdict(list), defaultdict(set)
    for r in range(world):
        L = build_loaders(c, batch_size=b, rank=r, world_size=world, seed=4)
        assert len(L.train) == 2  # as without repeated augmentation
        idx, _ = epoch_samples(15, b, r, world, 4, 1, 3)
        batches = epoch(L.train, 1)
        x = torch.cat([x for x, _ in batches])
        y = torch.cat([y for _, y in batches])
        split_labels = L.train.split.labels if backend == "dali" else L.train.dl.dataset.split.labels
        assert y.tolist() == [int(split_labels[i]) for i in idx]  # the loader reads the plan's samples
        for i, img in zip(idx.tolist(), x):
            images[i].append(img)
            ranks[i].add(r)
    assert len(images) == 4 and all(len(v) == 3 for v in images.values())  # 12 slots: 4 images x 3 copies
    if world == 3:
        assert all(len(v) == 3 for v in ranks.values())
    for copies in images.values():  # every pair of copies differs
        for a in range(3):
            for z in range(a + 1, 3):
                assert (copies[a] - copies[z]).abs().max() > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_aug_resumes_mid_epoch_exactly_and_leaves_eval_alone(data, backend):
    c = cfg(data, backend=backend, autoaugment=False, color_jitter=0.4, lighting=0.1, repeated_aug=3)
    plain = cfg(data, backend=backend, autoaugment=False)
    L = build_loaders(c, batch_size=1, rank=1, world_size=3, seed=2)
    full = epoch(L.train, 3)
    assert len(full) == 5
    resumed = epoch(build_loaders(c, batch_size=1, rank=1, world_size=3, seed=2).train, 3, start=2)
    assert len(resumed) == 3
    for (a, la), (b, lb) in zip(full[2:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)
    seen = 0
    for r in range(3):  # each val image once over the ranks, the same tensors as without repeats
        val = [(x, y) for x, y in build_loaders(c, batch_size=2, rank=r, world_size=3).val]
        ref = [(x, y) for x, y in build_loaders(plain, batch_size=2, rank=r, world_size=3).val]
        assert len(val) == len(ref) and all(
            torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(val, ref)
        )
        seen += sum(len(y) for _, y in val)
    assert seen == 9


# ---------------------------------------------------------------------------------------
# Progressive resizing
# ---------------------------------------------------------------------------------------


def ffcv_resolution(epoch, min_res, max_res, end_ramp, start_ramp, step=32):
    """ffcv-imagenet train_imagenet.py ``get_resolution``, its 32 as ``step``."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / step)) * step


def schedule_cfg(train_crop, start_crop, start_ramp, end_ramp, step, **kw):
    c = cfg("/nowhere", train_crop=train_crop, **kw)
    s = c.train_crop_schedule
    s.start_crop, s.start_ramp, s.end_ramp, s.step = start_crop, start_ramp, end_ramp, step
    return c


def test_crop_sizes_follow_ffcvs_formula():
    # FFCV's ResNet-50 88-epoch config: 160 -> 192 px between epochs 65 and 76
    c = schedule_cfg(192, 160, 65, 76, 32)
    assert [train_crop_at(c, e) for e in range(64, 79)] == [160] * 7 + [192] * 8  # 71: 177.45 px, nearer 192
    c = schedule_cfg(224, 128, 2, 8, 32)  # 128 + 16 px per epoch from epoch 2; halves round to even multiples
    assert [train_crop_at(c, e) for e in range(10)] == [128, 128, 128, 128, 160, 192, 192, 192, 224, 224]
    for args in ((224, 96, 0, 16, 16), (256, 64, 2, 90, 8), (128, 128, 5, 5, 32), (416, 160, 10, 40, 32)):
        c = schedule_cfg(*args)
        final, start, s0, s1, step = args
        assert all(train_crop_at(c, e) == ffcv_resolution(e, start, final, s1, s0, step) for e in range(100)), args
    assert {train_crop_at(schedule_cfg(224, 0, 0, 5, 32), e) for e in range(10)} == {224}  # off


@pytest.mark.parametrize("backend", BACKENDS + ["synthetic"])
def test_train_batches_have_the_epochs_crop_and_eval_keeps_its_own(data, backend):
    c = cfg(data, backend=backend, autoaugment=False, color_jitter=0.4, train_crop=64, eval_crop=48)
    c.synthetic.train_images, c.synthetic.val_images, c.synthetic.num_classes = 15, 7, 3
    s = c.train_crop_schedule
    s.start_crop, s.start_ramp, s.end_ramp, s.step = 32, 0, 2, 16
    L = build_loaders(c, batch_size=4, seed=1)
    for e, size in ((0, 32), (1, 48), (2, 64), (5, 64), (1, 48)):
        batches = epoch(L.train, e)
        assert len(batches) == 3 and {tuple(x.shape) for x, _ in batches} == {(4, 3, size, size)}, e
        assert {tuple(x.shape[1:]) for x, _ in L.val} == {(3, 48, 48)}
    # resumed mid-schedule in a new process: the same batches as the uninterrupted epoch 1
    full = epoch(L.train, 1)
    resumed = epoch(build_loaders(c, batch_size=4, seed=1).train, 1, start=1)
    for (a, la), (b, lb) in zip(full[1:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)


# ---------------------------------------------------------------------------------------
# End to end: train.py stopped mid-schedule and resumed repeats the uninterrupted run
# ---------------------------------------------------------------------------------------

SCHEDULED = [
    "model.name=resnest14",
    "device=cpu",
    "data.backend=torchvision",
    "data.workers=0",
    "data.train_crop=64",
    "data.eval_crop=48",
    "data.train_crop_schedule.start_crop=32",
    "data.train_crop_schedule.end_ramp=2",
    "data.train_crop_schedule.step=16",
    "data.repeated_aug=2",
    "train.batch_size=4",
    "train.epochs=3",
    "optim.warmup_epochs=1",
    "output.log_every=1",
    "output.progress=lines",
    "output.image_grid=false",
    "output.save_every_epochs=0",
]


@pytest.mark.slow
def test_train_py_resumed_mid_schedule_repeats_the_uninterrupted_run(tmp_path):
    root = make_dataset(tmp_path / "ds", train_per_class=4, val_per_class=2, size=(40, 48), specials=False)
    args = [*SCHEDULED, f"data.root={root}"]
    full = str(tmp_path / "full")
    train(*args, f"output.dir={full}")
    assert [r["train_crop"] for r in metrics(full)] == [32, 48, 64]  # 12 images, 3 steps per epoch

    out = str(tmp_path / "preempted")
    train_preempted(
        *args, f"output.dir={out}", at="epoch 2/3 step 1/3", timeout=120
    )  # in the middle of the 48 px epoch
    stopped = torch.load(os.path.join(out, "checkpoints", "last.pth"), weights_only=True)
    assert stopped["epoch"] == 1 and 1 <= stopped["step_in_epoch"] < 3

    train(*args, f"output.dir={out}")
    full_loss = scalars(os.path.join(full, "tb"), "train/loss")
    loss = scalars_in(event_files(out)[1:], "train/loss")  # the resumed process's steps
    assert sorted(loss) == list(range(stopped["step"] + 1, 10))
    assert loss == {s: full_loss[s] for s in loss}
    assert [r["val_loss"] for r in metrics(out)] == [r["val_loss"] for r in metrics(full)]
