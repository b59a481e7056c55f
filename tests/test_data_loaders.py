"""The loader contract, run for real: DALI on the CPU, torchvision, synthetic, on small generated JPEGs,
as a folder and as tar shards made from it (``layout``)."""

import concurrent.futures
import logging
import multiprocessing

import numpy as np
import pytest
import torch

from resnest_train.data import TrainLoader, ValLoader, build_loaders
from resnest_train.data.common import epoch_indices, train_steps
from test_data_helpers import cfg, make_dataset

BACKENDS = ["torchvision", "dali"]
# (backend, layout): the data-layout tests run over the folder and over tar shards of it
LAYOUTS = [(b, "folder") for b in BACKENDS + ["synthetic"]] + [(b, "shards") for b in BACKENDS]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 3 classes x 4 train (+ grayscale, CMYK and PNG-named-.JPEG in class 0) = 15 train, 3 x 3 val
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, train_per_class=4, val_per_class=3, size=(40, 48))
    return root


@pytest.fixture(scope="module")
def roots(data, tmp_path_factory):
    """{layout: data.root}: the folder ``data`` and tar shards made from it (4 images a shard)."""
    from resnest_train.data.shards import make_shards

    out = tmp_path_factory.mktemp("shards") / "out"
    make_shards(str(data), str(out), shard_size=4, progress=False)
    return {"folder": data, "shards": out}


@pytest.fixture(scope="module")
def bigval(tmp_path_factory):
    # val images larger than the crop, to compare the two backends' eval transforms
    root = tmp_path_factory.mktemp("big")
    make_dataset(root, train_per_class=2, val_per_class=4, size=(90, 120), specials=False, seed=3)
    return root


def epoch(loader, e, start=0):
    loader.set_epoch(e, start_step=start)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("backend,layout", LAYOUTS)
def test_batches_follow_the_contract(roots, backend, layout):
    c = cfg(roots[layout], backend=backend, augment="none")
    c.synthetic.train_images, c.synthetic.val_images, c.synthetic.num_classes = 15, 7, 3
    L = build_loaders(c, batch_size=4, device=torch.device("cpu"), seed=1)
    assert L.backend == backend
    assert isinstance(L.train, TrainLoader) and isinstance(L.val, ValLoader)
    assert not isinstance(L.val, TrainLoader)  # no epochs to set
    assert len(L.train) == 15 // 4 == 3
    batches = epoch(L.train, 0)
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert y.shape == (4,) and y.dtype == torch.int64 and 0 <= y.min() and y.max() < 3
        assert torch.isfinite(x).all()
    if backend != "synthetic":
        assert L.classes == ["ant", "bee", "cat"] and L.num_classes == 3
        pixels = torch.cat([x for x, _ in batches]) * STD + MEAN  # back to [0, 1]
        assert pixels.min() > -0.01 and pixels.max() < 1.01 and pixels.std() > 0.05
    val = [(x, y) for x, y in L.val]
    assert [x.shape[0] for x, _ in val] == ([4, 3] if backend == "synthetic" else [4, 4, 1])
    assert all(
        x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64 and y.shape == x.shape[:1]
        for x, y in val
    )
    assert len(L.val) == len(val)
    assert L.val_images == sum(x.shape[0] for x, _ in val)
    assert L.bad_images == 0


@pytest.mark.slow
@pytest.mark.parametrize("backend,layout", LAYOUTS)
def test_mid_epoch_resume_is_bit_identical(roots, backend, layout):
    augment = "autoaugment" if backend == "dali" else "none"
    c = cfg(roots[layout], backend=backend, augment=augment, color_jitter=0.4, lighting=0.1, random_erasing=0.5)
    c.synthetic.train_images, c.synthetic.num_classes = 20, 3
    L = build_loaders(c, batch_size=3, device=torch.device("cpu"), seed=7)
    full = epoch(L.train, 2)
    again = epoch(L.train, 2)
    # a restarted process: new loaders, straight into the middle of epoch 2
    resumed = epoch(build_loaders(c, batch_size=3, device=torch.device("cpu"), seed=7).train, 2, start=2)
    other = epoch(L.train, 3)
    assert len(full) == len(L.train) and len(resumed) == len(full) - 2
    for (a, la), (b, lb) in zip(full, again):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for (a, la), (b, lb) in zip(full[2:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(full, other))


def _torchvision_epoch(root, workers: int) -> list:
    c = cfg(root, backend="torchvision", augment="autoaugment", color_jitter=0.4, lighting=0.1, workers=workers)
    return epoch(build_loaders(c, batch_size=4, seed=3).train, 1)


@pytest.mark.slow
def test_torchvision_workers_do_not_change_the_batches(data):
    # In a fresh (spawned) process: forking DataLoader workers in a process where DALI's threads
    # have run (earlier tests on this pytest worker) can hang on a lock one of them held.
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        serial = pool.submit(_torchvision_epoch, str(data), 0).result(timeout=300)
        parallel = pool.submit(_torchvision_epoch, str(data), 2).result(timeout=300)
    assert len(serial) == len(parallel) == 3
    for (a, la), (b, lb) in zip(serial, parallel):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_the_loader_protocol_names_what_is_missing():
    class NoEpochs:
        bad_images = 0

        def __len__(self):
            return 1

        def __iter__(self):
            return iter(())

    class NoCount:
        def __len__(self):
            return 1

        def __iter__(self):
            return iter(())

        def set_epoch(self, epoch, start_step=0):
            pass

    assert isinstance(NoEpochs(), ValLoader) and not isinstance(NoEpochs(), TrainLoader)
    assert not isinstance(NoCount(), ValLoader) and not isinstance(NoCount(), TrainLoader)


def test_torchvision_lighting_is_a_per_image_rgb_offset(data):
    base = epoch(build_loaders(cfg(data, backend="torchvision"), batch_size=5, seed=0).train, 0)
    lit = epoch(build_loaders(cfg(data, backend="torchvision", lighting=0.1), batch_size=5, seed=0).train, 0)
    d = (lit[0][0] - base[0][0]) * STD  # the offset in [0, 1] pixel units
    per_channel = d.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel), atol=1e-5)
    assert per_channel.abs().max() > 1e-4


def test_epoch_plan_is_shared_and_sharded_exactly():
    n, b = 103, 4
    for w in (1, 2, 3):
        steps = train_steps(n, b, w)
        parts = [epoch_indices(n, b, r, w, seed=5, epoch=2) for r in range(w)]
        assert all(len(p) == steps * b for p in parts)
        allidx = np.concatenate(parts)
        assert len(set(allidx.tolist())) == len(allidx) == w * steps * b  # disjoint, no repeats
    a, b2 = epoch_indices(n, 4, 0, 1, 5, 2), epoch_indices(n, 4, 0, 1, 5, 3)
    assert not np.array_equal(a, b2)


@pytest.mark.parametrize("backend", BACKENDS + ["synthetic"])
def test_a_batch_kept_by_the_caller_is_not_overwritten_by_later_ones(data, backend):
    """DALI hands its own output buffers to torch (no copy): a batch held on to must stay intact."""
    c = cfg(data, backend=backend, augment="none")
    c.synthetic.train_images, c.synthetic.val_images, c.synthetic.num_classes = 15, 7, 3
    L = build_loaders(c, batch_size=4, seed=8)
    cloned = epoch(L.train, 2)
    L.train.set_epoch(2)
    kept = list(L.train)  # no clones: every batch is still referenced while the later ones are made
    assert len(kept) == len(cloned) == 3
    for (x, y), (cx, cy) in zip(kept, cloned):
        assert torch.equal(x, cx) and torch.equal(y, cy)
    assert len({x.data_ptr() for x, _ in kept}) == 3


def test_both_backends_read_the_same_samples_in_the_same_order(data):
    labels = {}
    for backend in BACKENDS:
        L = build_loaders(cfg(data, backend=backend, augment="none"), batch_size=2, seed=11)
        labels[backend] = torch.cat([y for _, y in epoch(L.train, 4)])
    assert torch.equal(labels["torchvision"], labels["dali"])


@pytest.mark.parametrize("backend,layout", LAYOUTS)
def test_train_steps_equal_on_every_rank_and_val_shards_are_exact(roots, backend, layout):
    c = cfg(roots[layout], backend=backend, augment="none")
    c.synthetic.train_images, c.synthetic.val_images, c.synthetic.num_classes = 15, 9, 3
    whole = build_loaders(c, batch_size=2, rank=0, world_size=1)
    ref_x = torch.cat([x for x, _ in whole.val])
    ref_y = torch.cat([y for _, y in whole.val])
    assert len(ref_x) == whole.val_images == 9
    for w in (2, 3):
        xs, ys, steps = [], [], set()
        for r in range(w):
            L = build_loaders(c, batch_size=2, rank=r, world_size=w)
            steps.add(len(L.train))
            L.train.set_epoch(0)
            assert sum(1 for _ in L.train) == len(L.train)
            xs += [x for x, _ in L.val]
            ys += [y for _, y in L.val]
            assert L.val_images == 9
        assert steps == {15 // (2 * w)}
        if backend != "synthetic":  # ranks in order = the whole val set once, nothing padded
            assert torch.equal(torch.cat(xs), ref_x) and torch.equal(torch.cat(ys), ref_y)
        else:
            assert sum(len(x) for x in xs) == 9


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_cmyk_and_png_named_jpeg_decode_to_rgb(tmp_path, backend):
    from PIL import Image

    from test_data_helpers import smooth_image

    root = make_dataset(tmp_path, classes=("a", "b"), train_per_class=2, val_per_class=1, specials=False)
    rng = np.random.default_rng(0)
    d = tmp_path / "val" / "a"
    gray = smooth_image(rng, 40, 40)
    Image.fromarray(gray).convert("L").save(d / "gray.JPEG", quality=95)
    Image.fromarray(smooth_image(rng, 40, 40)).convert("CMYK").save(d / "cmyk.JPEG", quality=95)
    Image.fromarray(smooth_image(rng, 40, 40)).save(d / "png.JPEG", format="PNG")
    L = build_loaders(cfg(root, backend=backend, train_crop=32, eval_ratio=1.0), batch_size=4)
    x = torch.cat([x for x, _ in L.val])[:5]
    names = sorted(p.name for p in d.iterdir())  # a_000, cmyk, gray, png
    assert x.shape == (5, 3, 32, 32)
    px = (x * STD + MEAN) * 255
    g = px[names.index("gray.JPEG")]
    assert (g[0] - g[1]).abs().max() < 1.5 and (g[1] - g[2]).abs().max() < 1.5  # grey stays grey in RGB
    for name in ("cmyk.JPEG", "png.JPEG"):
        img = px[names.index(name)]
        assert img.std() > 5 and (img[0] - img[1]).abs().mean() > 1  # real colour content
    L.train.set_epoch(0)
    assert sum(1 for _ in L.train) == len(L.train)


def test_eval_transforms_of_both_backends_agree(bigval):
    """Same files through both eval pipelines. Tolerance: max 4 and mean 1 grey levels (of 255).

    The decoders agree bit for bit (both libjpeg-turbo); the sizes and crop offsets are
    matched exactly; what remains is the antialiased bilinear resize of PIL vs DALI.
    """
    out = {}
    for backend in BACKENDS:
        L = build_loaders(cfg(bigval, backend=backend, train_crop=64, eval_ratio=0.875), batch_size=5)
        out[backend] = torch.cat([x for x, _ in L.val])
    assert out["dali"].shape == out["torchvision"].shape == (12, 3, 64, 64)
    levels = (out["dali"] - out["torchvision"]).abs() * STD * 255
    assert levels.max() <= 4.0 and levels.mean() <= 1.0, (levels.max(), levels.mean())


@pytest.mark.parametrize("backend", BACKENDS + ["synthetic"])
def test_channels_last(data, backend):
    c = cfg(data, backend=backend, augment="none")
    c.synthetic.train_images, c.synthetic.val_images, c.synthetic.num_classes = 8, 4, 3
    plain = build_loaders(c, batch_size=4, seed=2)
    cl = build_loaders(c, batch_size=4, seed=2, channels_last=True)
    (a, _), (b, _) = epoch(plain.train, 0)[0], epoch(cl.train, 0)[0]
    assert b.is_contiguous(memory_format=torch.channels_last) and a.is_contiguous()
    assert torch.equal(a, b)
    va, vb = next(iter(plain.val))[0], next(iter(cl.val))[0]
    assert vb.is_contiguous(memory_format=torch.channels_last) and torch.equal(va, vb)


def test_dali_with_every_augmentation_and_an_abandoned_val_pass(data):
    c = cfg(data, backend="dali", augment="autoaugment", color_jitter=0.4, lighting=0.1)
    L = build_loaders(c, batch_size=4, seed=0)
    xs = epoch(L.train, 0)
    assert len(xs) == 3 and all(torch.isfinite(x).all() for x, _ in xs)
    first = [x for x, _ in L.val]
    it = iter(L.val)
    next(it)
    del it  # the trainer may stop early; the next pass must still start at the first image
    second = [x for x, _ in L.val]
    assert all(torch.equal(a, b) for a, b in zip(first, second)) and len(first) == len(second) == 3


def test_dali_gpu_pipeline_graph_builds_without_a_gpu(tmp_path):
    """The gpu variant's graph (mixed decoder, GPU operators) is defined and checked here;
    running it needs a GPU."""
    from resnest_train.data import dali as D

    list_file = tmp_path / "list.txt"
    list_file.write_text("a/x.jpg 0\n")
    common = dict(batch_size=2, num_threads=1, device_id=0, seed=1)
    pipes = [
        D.train_pipeline(
            file_list=str(list_file),
            file_root=str(tmp_path),
            device="gpu",
            crop=32,
            area=[0.08, 1.0],
            ratio=[0.75, 4 / 3],
            hflip=True,
            augment="autoaugment",
            aa_interp="nearest",
            jitter=0.4,
            lighting=0.1,
            mean=[0.5] * 3,
            std=[0.2] * 3,
            layout="CHW",
            hw_decoder_load=0.65,
            **common,
        ),
        D.val_pipeline(
            file_list=str(list_file),
            file_root=str(tmp_path),
            device="gpu",
            short=37,
            crop=32,
            mean=[0.5] * 3,
            std=[0.2] * 3,
            layout="HWC",
            hw_decoder_load=0.65,
            **common,
        ),
    ]
    for pipe in pipes:
        pipe._build_graph()  # DALI's graph construction; pipe.build() would need CUDA
        ops = {op._op.schema_name: op._op.device for op in pipe._ops}
        decoders = [d for name, d in ops.items() if name.startswith("decoders__")]
        assert decoders == ["mixed"]
        assert ops["Resize"] == "gpu" and ops["CropMirrorNormalize"] == "gpu"
        assert ops["readers__File"] == "cpu"


def test_dali_autoaugment_policy_is_torchvisions():
    import torchvision.transforms as T

    from resnest_train.data.dali import _posterize_mask, torchvision_imagenet_policy

    policy = torchvision_imagenet_policy()
    table = T.AutoAugment(T.AutoAugmentPolicy.IMAGENET).policies
    assert len(policy.sub_policies) == len(table) == 25 and policy.num_magnitude_bins == 10
    for ours, theirs in zip(policy.sub_policies, table):
        assert [(p, m) for _, p, m in ours] == [(p, m) for _, p, m in theirs]
    for bits in range(9):  # the magnitude of torchvision's Posterize: the high bits it keeps
        assert int(_posterize_mask(bits)) == (0xFF << (8 - bits)) & 0xFF


def test_skip_log_line_and_count(tmp_path, caplog):
    from test_data_helpers import corrupt

    root = make_dataset(tmp_path, specials=False)
    corrupt(tmp_path / "train" / "bee" / "bee_001.JPEG", "truncated")
    with caplog.at_level(logging.WARNING, logger="resnest_train.data"):
        L = build_loaders(cfg(root, backend="torchvision", skip_bad_images=True), batch_size=2)
    assert L.bad_images == 1
    lines = [r.getMessage() for r in caplog.records if "skip" in r.getMessage()]
    assert len(lines) == 1 and "1 unreadable image(s): 1 of 12 train, 0 of 9 val" in lines[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_ranks_than_val_images(tmp_path, backend):
    root = make_dataset(tmp_path, classes=("a", "b"), train_per_class=6, val_per_class=1, specials=False)
    seen = []
    for r in range(3):  # 2 val images over 3 ranks: one rank gets none
        L = build_loaders(cfg(root, backend=backend, augment="none"), batch_size=1, rank=r, world_size=3)
        seen.append(sum(x.shape[0] for x, _ in L.val))
        assert L.val_images == 2 and len(L.train) == 4
    assert sorted(seen) == [0, 1, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_autoaugment_interpolation_is_a_setting_of_both_backends(data, backend):
    from resnest_train.errors import DataError

    xs = {}
    for interp in ("nearest", "bilinear"):
        c = cfg(data, backend=backend, augment="autoaugment", autoaugment_interpolation=interp)
        xs[interp] = torch.cat([x for x, _ in epoch(build_loaders(c, batch_size=4, seed=3).train, 0)])
    # same seed, same draws: only the images that drew a rotate or shear differ
    differ = (xs["nearest"] - xs["bilinear"]).abs().flatten(1).amax(1) > 0
    assert 0 < int(differ.sum()) < len(differ)
    with pytest.raises(DataError, match="autoaugment_interpolation='bicubic' is not one of nearest, bilinear"):
        build_loaders(
            cfg(data, backend=backend, augment="autoaugment", autoaugment_interpolation="bicubic"), batch_size=4
        )


def test_dali_gpu_runner_orders_outputs_on_torchs_stream(monkeypatch):
    """Issue 16, item 4: a GPU pipeline runs with torch's current stream; a CPU one host-synchronously."""
    pytest.importorskip("nvidia.dali")
    from resnest_train.data import dali

    class Pipe:
        def build(self):
            pass

        def run(self, *args):
            self.args = args
            return "outputs"

    torch_stream = object()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: torch_stream)
    gpu, cpu = Pipe(), Pipe()
    assert dali._Runner(gpu, "gpu", torch.device("cuda", 0), False).run() == "outputs"
    assert gpu.args == (torch_stream,)
    dali._Runner(cpu, "cpu", torch.device("cpu"), False).run()
    assert cpu.args == ()
