"""data.random_erasing: torchvision's RandomErasing after normalisation, in both backends.

The torchvision backend draws torchvision's own rectangle (``RandomErasing.get_params``) in the
sample's seeded stream and must give exactly what ``T.RandomErasing`` gives on the normalised
image. DALI draws the rectangle in its graph by the same rule: its rectangles must follow
torchvision's distribution, and the erased pixels must be 0 after normalisation in both
DALI paths (float pipeline with ``fn.erase``; uint8 crops erased by torch).
"""

import numpy as np
import pytest
import torch

from resnest_train.data import build_loaders
from test_data_helpers import cfg, make_dataset

pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, train_per_class=4, val_per_class=2, size=(40, 48), specials=False)
    return root


def epoch(loader, e=0):
    loader.set_epoch(e)
    return torch.cat([x.clone() for x, _ in loader])


def erased_rectangle(img):
    """(top, left, h, w) of the pixels that are 0 in every channel of a normalised ``[3, H, W]``
    image, or None; asserts they form one full rectangle (a real pixel is never exactly the mean)."""
    zero = (img == 0).all(0)
    if not zero.any():
        return None
    rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
    top, left = int(rows[0]), int(cols[0])
    h, w = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    assert zero[top : top + h, left : left + w].all() and int(zero.sum()) == h * w
    return top, left, h, w


def test_torchvision_backend_erases_what_torchvisions_random_erasing_does(data):
    """Same seed per sample, same draws: the batch equals T.RandomErasing on the normalised image."""
    import torchvision.transforms as T

    from resnest_train.data.common import epoch_indices, lighting_offset, sample_seed
    from resnest_train.data.decode import load_rgb
    from resnest_train.data.layout import load_splits
    from resnest_train.data.torchvision_backend import _Normalizer, _to_hwc, train_transform

    c = cfg(data, backend="torchvision", augment="trivialaugment", lighting=0.1, random_erasing=0.5)
    ours = epoch(build_loaders(c, batch_size=4, seed=3).train, 2)

    _, train, _ = load_splits(c)
    transform, norm = train_transform(c), _Normalizer(c, torch.device("cpu"), False)
    erasing = T.RandomErasing(p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)
    theirs = []
    for i in epoch_indices(len(train), 4, 0, 1, 3, 2):
        torch.manual_seed(sample_seed(3, 2, int(i)))
        img = _to_hwc(transform(load_rgb(train.path(int(i)))))
        off = torch.from_numpy(lighting_offset(lambda: torch.randn(3).numpy(), 0.1))
        x, _ = norm(img[None], torch.zeros(1), off[None], torch.zeros(1, 4, dtype=torch.int64))
        theirs.append(erasing(x[0]))
    theirs = torch.stack(theirs)
    assert torch.equal(ours, theirs)
    rects = [erased_rectangle(x) for x in ours]
    assert 3 <= sum(r is not None for r in rects) <= 9  # p = 0.5 of 12 images


@pytest.mark.parametrize("backend,uint8", [("torchvision", False), ("dali", False), ("dali", True)])
def test_erased_pixels_are_zero_after_normalisation(data, backend, uint8):
    from resnest_train.data import dali
    from resnest_train.data.layout import load_splits

    c = cfg(data, backend=backend, augment="none", lighting=0.1, random_erasing=1.0)
    if uint8:  # what a CPU pipeline feeding a CUDA trainer ships: uint8 crops, erased by torch
        _, tr, va = load_splits(c)
        loader, _ = dali.build(c, tr, va, 4, 0, 1, torch.device("cpu"), 0, False, uint8=True)
        assert loader.uint8
    else:
        loader = build_loaders(c, batch_size=4, seed=0).train
    x = epoch(loader)
    assert x.shape == (12, 3, 32, 32)
    for img in x:
        top, left, h, w = erased_rectangle(img)  # every image: p = 1
        # 2-33% of the 32 x 32 area, give or take the rounding of h and w (half a pixel each)
        assert 0.02 * 1024 - 0.5 * (h + w) <= h * w <= 0.33 * 1024 + 0.5 * (h + w) + 1 and h < 32 and w < 32


def test_dali_float_and_uint8_paths_erase_the_same_rectangles(data):
    """Both paths draw the rectangle with the same operators: the same batches up to float32 rounding."""
    from resnest_train.data import dali
    from resnest_train.data.layout import load_splits

    c = cfg(data, backend="dali", augment="none", random_erasing=0.5)
    floats = epoch(build_loaders(c, batch_size=4, seed=0).train)
    _, tr, va = load_splits(c)
    uint8 = epoch(dali.build(c, tr, va, 4, 0, 1, torch.device("cpu"), 0, False, uint8=True)[0])
    assert (floats - uint8).abs().max().item() < 1e-5
    erased = [erased_rectangle(x) for x in floats]
    assert erased == [erased_rectangle(x) for x in uint8] and 0 < sum(r is not None for r in erased) < 12


def dali_rectangles(p, size, n):
    """``n`` draws of ``dali.erasing_region(p, size)``: int ``[n, 4]`` (top, left, h, w)."""
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def

    from resnest_train.data.dali import erasing_region

    batch = 500

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=11)
    def pipe():
        anchor, shape = erasing_region(p, size)
        return fn.cat(anchor, shape)

    pipe = pipe()
    pipe.build()
    out = [np.array(pipe.run()[0].as_array()) for _ in range(n // batch)]
    return np.concatenate(out).astype(np.int64)


def torchvision_rectangles(p, size, n):
    from resnest_train.data.common import erasing_rectangle

    torch.manual_seed(0)
    return torch.stack([erasing_rectangle(p, size, size) for _ in range(n)]).numpy()


def ks_distance(a, b):
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def test_dali_rectangles_follow_torchvisions_rule():
    """Over 4000 draws each at 224 px and p = 0.4: how often, how large, what shape, where."""
    n, size, p = 4000, 224, 0.4
    ours, theirs = dali_rectangles(p, size, n), torchvision_rectangles(p, size, n)
    erased = {}
    for name, r in (("dali", ours), ("torchvision", theirs)):
        on = r[:, 2] > 0
        assert abs(on.mean() - p) < 4 * np.sqrt(p * (1 - p) / n), (name, on.mean())
        top, left, h, w = r[on].T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
        area, aspect = h * w / size**2, h / w
        assert area.min() > 0.019 and area.max() < 0.335 and aspect.min() > 0.29 and aspect.max() < 3.4, name
        erased[name] = dict(
            area=area, log_aspect=np.log(aspect), top=top / np.maximum(size - h, 1), left=left / np.maximum(size - w, 1)
        )
    # the same distributions: KS distance below the 0.1% critical value of two samples of ~1600 (0.069)
    for key in ("area", "log_aspect", "top", "left"):
        assert ks_distance(erased["dali"][key], erased["torchvision"][key]) < 0.069, key
    # and the area is not some other distribution that happens to fit the range: uniform in [0.02, 0.33]
    assert abs(erased["dali"]["area"].mean() - 0.175) < 0.01
