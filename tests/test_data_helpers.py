"""Small generated datasets for the data tests (imported by the other test_data_* modules)."""

import os

import numpy as np
from PIL import Image


def smooth_image(rng, h, w):
    """An RGB uint8 image with some structure (JPEG-friendly), not pure noise."""
    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_dataset(
    root, classes=("ant", "bee", "cat"), train_per_class=4, val_per_class=3, size=(40, 48), seed=0, specials=True
):
    """ImageNet layout with JPEGs; `specials` adds a grayscale JPEG, a CMYK JPEG and a PNG named .JPEG."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for cls in classes:
            d = os.path.join(root, split, cls)
            os.makedirs(d, exist_ok=True)
            for i in range(per):
                hh, ww = (h, w) if i % 2 == 0 else (w, h)
                Image.fromarray(smooth_image(rng, hh, ww)).save(os.path.join(d, f"{cls}_{i:03d}.JPEG"), quality=90)
    if specials:
        d = os.path.join(root, "train", classes[0])
        Image.fromarray(smooth_image(rng, h, w)).convert("L").save(os.path.join(d, "z_gray.JPEG"), quality=90)
        Image.fromarray(smooth_image(rng, h, w)).convert("CMYK").save(os.path.join(d, "z_cmyk.JPEG"), quality=90)
        Image.fromarray(smooth_image(rng, h, w)).save(os.path.join(d, "z_png.JPEG"), format="PNG")
    return root


def corrupt(path, how):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        if how == "empty":
            pass
        elif how == "truncated":
            f.write(data[: len(data) // 2])
        elif how == "garbage":
            f.write(b"this is not an image at all " * 20)
        else:
            raise ValueError(how)


def cfg(root, **kw):
    from resnest_train.config import DataConfig

    c = DataConfig(root=str(root))
    c.workers = 0
    c.train_crop = 32
    c.dali.threads = 2
    c.dali.device = "cpu"
    for k, v in kw.items():
        if "." in k:
            a, b = k.split(".")
            setattr(getattr(c, a), b, v)
        else:
            setattr(c, k, v)
    return c


def test_helpers_make_a_dataset(tmp_path):
    make_dataset(tmp_path)
    assert len(os.listdir(tmp_path / "train" / "ant")) == 7
    assert len(os.listdir(tmp_path / "val" / "cat")) == 3
