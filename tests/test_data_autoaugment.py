"""DALI's AutoAugment operations against torchvision's, one operation and magnitude at a time.

The same uint8 images go through each operation of the ImageNet policy at a fixed
magnitude bin and sign, in a DALI pipeline on the CPU (our policy's augmentation) and
through torchvision's own ``_apply_op`` (PIL, nearest sampling, fill 128). Colour
operations must agree to within rounding (equalize: see its note); geometric ones are
compared by the share of pixels that differ, since a half-pixel difference in where
nearest sampling lands moves single pixels along edges.
"""

import numpy as np
import pytest

from test_data_helpers import smooth_image

H, W = 48, 64
BINS = [2, 9]


def policy_ops():
    import torchvision.transforms as T

    from resnest_train.data.dali import torchvision_imagenet_policy

    table = T.AutoAugment(T.AutoAugmentPolicy.IMAGENET).policies
    policy = torchvision_imagenet_policy("cpu")
    ops = {}
    for ours, theirs in zip(policy.sub_policies, table):
        for (aug, _, _), (name, _, _) in zip(ours, theirs):
            ops[name] = aug
    return ops


def images():
    rng = np.random.default_rng(0)
    imgs = [smooth_image(rng, H, W) for _ in range(3)]
    imgs.append((imgs[0] // 2 + 40).astype(np.uint8))  # low contrast: autocontrast/equalize have work to do
    return imgs


def run_dali(aug, imgs, magnitude_bin, negative, num_magnitude_bins=10):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.auto_aug.core._augmentation import signed_bin

    @pipeline_def(batch_size=len(imgs), num_threads=1, device_id=None, seed=0, enable_conditionals=True)
    def pipe():
        data = fn.external_source(source=lambda: imgs, batch=True, layout="HWC", dtype=types.UINT8)
        kwargs = {}
        params = aug.op.__code__.co_varnames[: aug.op.__code__.co_argcount]
        if "fill_value" in params:
            kwargs = dict(fill_value=128, interp_type=types.INTERP_NN)
        if aug.randomly_negate:
            sign = fn.random.coin_flip(probability=1.0 if negative else 0.0, dtype=types.INT32)
            mb = signed_bin(magnitude_bin, sign)
        else:
            mb = magnitude_bin
        return aug(data, magnitude_bin=mb, num_magnitude_bins=num_magnitude_bins, **kwargs)

    p = pipe()
    p.build()
    out = p.run()[0]
    return [np.array(out[i]) for i in range(len(imgs))]


def run_torchvision(name, imgs, magnitude_bin, negative, space=None):
    """torchvision's ``_apply_op`` at bin ``magnitude_bin`` of ``space`` (default: AutoAugment's table)."""
    import torchvision.transforms as T
    from PIL import Image
    from torchvision.transforms.autoaugment import _apply_op

    space = space or T.AutoAugment()._augmentation_space(10, (H, W))
    mags, signed = space[name]
    magnitude = float(mags[magnitude_bin]) if mags.ndim > 0 else 0.0
    if signed and negative:
        magnitude = -magnitude
    out = []
    for img in imgs:
        res = _apply_op(
            Image.fromarray(img), name, magnitude, interpolation=T.InterpolationMode.NEAREST, fill=[128, 128, 128]
        )
        out.append(np.asarray(res))
    return out


COLOUR = ["Posterize", "Solarize", "Equalize", "Invert", "AutoContrast", "Color", "Contrast", "Sharpness"]
GEOMETRIC = ["Rotate", "ShearX"]
SIGNED = {"Color", "Contrast", "Sharpness", "Rotate", "ShearX"}


def cases(names):
    return [(n, b, neg) for n in names for b in BINS for neg in ([False, True] if n in SIGNED else [False])]


def test_the_policy_uses_exactly_these_operations():
    ops = policy_ops()
    assert sorted(ops) == sorted(COLOUR + GEOMETRIC)
    assert {name for name, aug in ops.items() if aug.randomly_negate} == SIGNED


@pytest.mark.parametrize("name,magnitude_bin,negative", cases(COLOUR))
def test_colour_operations_match_torchvision(name, magnitude_bin, negative):
    aug = policy_ops()[name]
    imgs = images()
    ours = run_dali(aug, imgs, magnitude_bin, negative)
    theirs = run_torchvision(name, imgs, magnitude_bin, negative)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == np.uint8
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        if name == "Sharpness":
            # PIL leaves the 1-pixel border unfiltered; DALI filters it with a mirrored border
            diff = diff[1:-1, 1:-1]
        if name == "Equalize":
            # DALI maps each level through OpenCV's normalised inclusive histogram sum, PIL
            # through the exclusive one in steps: the same equalisation, shifted by up to half
            # a histogram bin, which is large only where few levels hold many pixels (the
            # low-contrast image: mean 6.8, max 22 levels; the others: max 4)
            assert diff.max() <= 24 and diff.mean() <= 8, (magnitude_bin, diff.max(), diff.mean())
        else:  # rounding: PIL truncates its blends and lookup tables, DALI rounds
            assert diff.max() <= 2 and diff.mean() <= 0.6, (name, magnitude_bin, negative, diff.max(), diff.mean())


@pytest.mark.parametrize("name,magnitude_bin,negative", cases(GEOMETRIC))
def test_geometric_operations_match_torchvision(name, magnitude_bin, negative):
    """Same direction for the same sign too (DALI's shear runs the other way; ours is flipped)."""
    imgs = images()
    ours = run_dali(policy_ops()[name], imgs, magnitude_bin, negative)
    theirs = run_torchvision(name, imgs, magnitude_bin, negative)
    for a, b, img in zip(ours, theirs, imgs):
        differ = (np.abs(a.astype(np.int16) - b.astype(np.int16)) > 8).any(axis=2)
        assert differ.mean() <= 0.05, (name, magnitude_bin, negative, differ.mean())
        assert (a != img).any(axis=2).mean() > 0.2  # it did move the picture
