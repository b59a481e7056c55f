"""Real-world files that once broke a backend (issue 9): both backends must read them alike.

The rule both backends follow (``resnest_train.data.decode.load_rgb``): the photo as a
person sees it (EXIF orientation applied), 16-bit samples scaled to 8 bits as
``round(v * 255 / 65535)``, float samples as [0, 1], alpha dropped, every other mode
converted to RGB by PIL. A file DALI's decoder cannot read that way is flagged by the DALI
scan (``--check``, and skip mode, which skips it); one DALI cannot read at all stops a run
without skip mode with its name.
"""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from resnest_train.data import build_loaders
from resnest_train.data.layout import load_splits
from resnest_train.data.scan import check_image, find_bad_images
from resnest_train.errors import DataError
from test_data_helpers import cfg, make_dataset, smooth_image
from test_data_prepare import script

BACKENDS = ["torchvision", "dali"]
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)


def val_tensors(root, backend, **kw):
    """The eval-path tensors of every val image, in split order (deterministic)."""
    loaders = build_loaders(cfg(root, backend=backend, augment="none", eval_ratio=1.0, **kw), batch_size=4)
    return torch.cat([x for x, _ in loaders.val]), loaders


def run_epoch(loaders):
    loaders.train.set_epoch(0)
    steps = sum(1 for _ in loaders.train)
    return steps, sum(x.shape[0] for x, _ in loaders.val)


# --- item 2: a GIF saved with a .jpg name ----------------------------------------------------


@pytest.fixture()
def gif_root(tmp_path):
    root = make_dataset(tmp_path / "ds", specials=False)  # 3 classes x (4 train + 3 val)
    rgb = smooth_image(np.random.default_rng(1), 40, 48)
    Image.fromarray(rgb).convert("P").save(root / "train" / "bee" / "bee_gif.jpg", format="GIF")
    return root


def test_gif_named_jpg_stops_dali_with_its_path(gif_root):
    gif = gif_root / "train" / "bee" / "bee_gif.jpg"
    loaders = build_loaders(cfg(gif_root, backend="dali", augment="none"), batch_size=13)  # one batch: all
    with pytest.raises(DataError) as e:
        run_epoch(loaders)
    msg = str(e.value)
    assert f"Cannot read the image {gif} (a GIF image (mode P), which DALI's image decoder cannot read" in msg, msg
    assert "convert it to JPEG or PNG" in msg and "data.skip_bad_images: true" in msg
    assert len(msg.splitlines()) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_gif_named_jpg_is_decoded_or_skipped_by_what_the_backend_reads(gif_root, backend):
    gif = str(gif_root / "train" / "bee" / "bee_gif.jpg")
    assert check_image(gif, backend="torchvision") is None and check_image(gif, full=True) is None
    assert "GIF image" in check_image(gif, backend="dali")
    loaders = build_loaders(cfg(gif_root, backend=backend, augment="none", skip_bad_images=True), batch_size=2)
    expect_bad = 1 if backend == "dali" else 0
    assert loaders.bad_images == expect_bad and len(loaders.train) == (13 - expect_bad) // 2
    assert run_epoch(loaders) == (len(loaders.train), 9)
    if backend == "torchvision":  # PIL reads it: it trains without skip mode too
        assert run_epoch(build_loaders(cfg(gif_root, backend=backend, augment="none"), batch_size=13)) == (1, 9)


def test_check_judges_by_the_backend_in_use(gif_root, capsys):
    gif = gif_root / "train" / "bee" / "bee_gif.jpg"
    mod = script()
    assert mod.main(["--check", str(gif_root), "--backend", "torchvision", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
    assert mod.main(["--check", str(gif_root), "--backend", "dali", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "train: 13 images in 3 classes (4-5 per class), 1 unreadable" in out
    assert f"unreadable: {gif}: a GIF image (mode P), which DALI's image decoder cannot read" in out
    # skip mode of each backend finds its own backend's list: no second scan
    from resnest_train.data import scan

    orig, calls = scan.check_files, []
    scan.check_files = lambda *a, **k: calls.append(a) or orig(*a, **k)
    try:
        bad = {
            b: build_loaders(cfg(gif_root, backend=b, skip_bad_images=True), batch_size=2).bad_images for b in BACKENDS
        }
    finally:
        scan.check_files = orig
    assert bad == {"torchvision": 0, "dali": 1} and calls == []


# --- item 3: EXIF orientation ------------------------------------------------------------------


def red_blue(w=96, h=48):
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return a


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_applied_in_both_backends(tmp_path, fmt):
    """A 96x48 image, left half red, right half blue, EXIF Orientation 6 (rotate 90 deg clockwise):
    a person sees it 48 wide and 96 tall, red on top. At a 48 px crop there is no resize."""
    root = make_dataset(tmp_path, classes=("a", "b"), train_per_class=2, val_per_class=1, specials=False)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(red_blue()).save(
        tmp_path / "val" / "a" / "z_exif6.img.jpg",
        format=fmt,
        exif=exif,
        **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}),
    )
    out = {b: val_tensors(root, b, train_crop=48)[0][1] for b in BACKENDS}  # val/a: a_000, z_exif6
    assert (out["dali"] - out["torchvision"]).abs().max() < 0.02
    px = (out["torchvision"] * STD[0] + MEAN[0]) * 255  # the centre 48x48 of the upright 48x96 photo
    assert (px[:, :20].mean((1, 2)) - torch.tensor([255.0, 0, 0])).abs().max() < 3  # red on top
    assert (px[:, 28:].mean((1, 2)) - torch.tensor([0, 0, 255.0])).abs().max() < 3  # blue below


def test_exif_orientation_on_the_train_path(tmp_path):
    """The crop of the whole upright photo (area 1, aspect 1:2) through both training pipelines."""
    root = make_dataset(tmp_path, classes=("a", "b"), train_per_class=0, val_per_class=1, specials=False)
    exif = Image.Exif()
    exif[0x0112] = 6
    for cls in ("a", "b"):
        for i in range(2):
            Image.fromarray(red_blue()).save(tmp_path / "train" / cls / f"{i}.jpg", exif=exif, quality=95)
    out = {}
    for b in BACKENDS:
        c = cfg(
            root,
            backend=b,
            augment="none",
            hflip=False,
            color_jitter=0.0,
            lighting=0.0,
            rrc_scale=[1.0, 1.0],
            rrc_ratio=[0.5, 0.5],
            train_crop=32,
        )
        loaders = build_loaders(c, batch_size=4)
        loaders.train.set_epoch(0)
        out[b] = next(iter(loaders.train))[0]
    px = (out["torchvision"] * STD + MEAN) * 255
    assert (px[:, :, :12].mean((0, 2, 3)) - torch.tensor([255.0, 0, 0])).abs().max() < 3  # red on top
    assert (px[:, :, 20:].mean((0, 2, 3)) - torch.tensor([0, 0, 255.0])).abs().max() < 3
    assert (out["dali"] - out["torchvision"]).abs()[:, :, :12].max() < 0.02
    assert (out["dali"] - out["torchvision"]).abs()[:, :, 20:].max() < 0.02


# --- item 4: every image mode PIL produces ----------------------------------------------------


def mode_images(size=32):
    """{file name: PIL image} for every mode PIL makes from files, in every format PIL writes it."""
    rng = np.random.default_rng(4)
    rgb = smooth_image(rng, size, size)
    ramp16 = np.linspace(0, 65535, size * size).reshape(size, size).astype(np.uint16)
    alpha = rng.integers(0, 256, (size, size), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(32)
    pal.info["transparency"] = 5
    images = {
        "I;16": Image.fromarray(ramp16),
        "I": Image.fromarray(ramp16.astype(np.int32)),
        "F": Image.fromarray(np.linspace(-0.25, 1.25, size * size, dtype=np.float32).reshape(size, size)),
        "LA": Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"),
        "P+transparency": pal,
        "P": Image.fromarray(rgb).quantize(32),
        "RGBA": Image.fromarray(np.dstack([rgb, alpha])),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "1": Image.fromarray(rgb[..., 1] > 128),
        "L": Image.fromarray(rgb[..., 2]),
        "RGB": Image.fromarray(rgb),
    }
    # (GIF by a .jpg name: the loaders list image extensions only, and judge files by their bytes)
    formats = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif", "BMP": "bmp", "WEBP": "webp", "PPM": "pnm", "GIF": "jpg"}
    out = {}
    for mode, im in images.items():
        for fmt, ext in formats.items():
            kw = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
            if mode == "P+transparency" and fmt in ("PNG", "GIF", "WEBP"):
                kw["transparency"] = 5
            name = f"{mode.replace(';', '_').replace('+', '_')}.{fmt}.{ext}"
            try:
                im.save(os.devnull, format=fmt, **kw)
            except (OSError, ValueError, KeyError):
                continue  # PIL cannot write this mode in this format
            out[name] = (mode, fmt, im, kw)
    return out


# What DALI 2.4's CPU decoder cannot read the way the rule does: flagged by the DALI scan.
DALI_CANNOT = {
    "GIF": "cannot read",
    ("1", "TIFF"): "cannot read",
    ("I", "TIFF"): "cannot read",
    ("LA", "TIFF"): "differently",
    ("F", "PPM"): "cannot read",
}
REQUIRED = ["I;16", "I", "F", "LA", "P+transparency", "RGBA", "CMYK", "1", "L", "P", "RGB"]


def test_every_image_mode_gives_the_same_tensor_in_both_backends(tmp_path):
    # 32 px images at a 32 px crop: no resize, the tensors are the decoded pixels
    root = make_dataset(tmp_path, classes=("a", "b"), train_per_class=2, val_per_class=1, size=(32, 32), specials=False)
    files = mode_images()
    for name, (_, fmt, im, kw) in files.items():
        im.save(tmp_path / "val" / "a" / name, format=fmt, **kw)
    names = sorted(os.listdir(tmp_path / "val" / "a"))  # a_000.JPEG first, then the mode files
    tv, _ = val_tensors(root, "torchvision")  # no skip mode: PIL reads every file
    dali, loaders = val_tensors(root, "dali", skip_bad_images=True)
    _, _, val = load_splits(cfg(root))
    flagged, _ = find_bad_images(val, backend="dali")
    flagged = {os.path.basename(f): reason for f, reason in flagged.items()}
    expect = {}
    for name, (mode, fmt, _, _) in files.items():
        why = DALI_CANNOT.get(fmt) or DALI_CANNOT.get((mode, fmt))
        if why:
            expect[name] = why
    assert sorted(flagged) == sorted(expect), flagged
    assert all(expect[n] in r and "convert it to JPEG or PNG" in r for n, r in flagged.items()), flagged
    assert loaders.bad_images == len(flagged) and len(tv) == len(names) + 1 and len(dali) == len(tv) - len(flagged)
    kept = [i for i, n in enumerate(names) if n not in flagged]  # val/b's image comes after these
    diff = (dali[: len(kept)] - tv[kept]).abs().flatten(1).amax(1)
    worst = {names[i]: round(float(d), 4) for i, d in zip(kept, diff) if d >= 0.02}
    assert not worst, worst
    read_alike = {files[n][0] for n in names if n in files and n not in flagged}
    assert read_alike >= set(REQUIRED)
    # the 16-bit ramp reads as a mid-grey ramp, not white (mean 0.5 in [0, 1] pixels)
    ramp = (tv[names.index("I_16.PNG.png")] * STD[0] + MEAN[0]).mean()
    assert abs(float(ramp) - 0.5) < 0.01


# --- item 10: a file name that is not UTF-8 ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("skip", [False, True])
def test_file_names_that_are_not_utf8_train_in_both_backends(tmp_path, backend, skip):
    root = make_dataset(tmp_path / "ds", specials=False)
    rgb = smooth_image(np.random.default_rng(2), 40, 48)
    for split, cls in (("train", "bee"), ("val", "ant")):
        folder = os.fsencode(root / split / cls)
        for name in (b"caf\xe9.jpg", b"with space.jpg"):
            Image.fromarray(rgb).save(os.path.join(folder, name), format="JPEG", quality=90)
    loaders = build_loaders(cfg(root, backend=backend, augment="none", skip_bad_images=skip), batch_size=3)
    assert loaders.bad_images == 0 and len(loaders.train) == 14 // 3
    assert run_epoch(loaders) == (4, 11)
    x, _ = val_tensors(root, backend, skip_bad_images=skip, train_crop=40)  # 40 px short sides: no resize
    ref, _ = val_tensors(root, "torchvision", train_crop=40)
    assert len(x) == 11 and (x - ref).abs().max() < 0.02  # the same files, the same pixels


def test_check_lists_a_bad_file_whose_name_is_not_utf8(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", specials=False)
    with open(os.path.join(os.fsencode(root / "train" / "bee"), b"caf\xe9.jpg"), "wb") as f:
        f.write(b"not an image")
    assert script().main(["--check", str(root), "--backend", "torchvision", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "bee/caf\\udce9.jpg: not an image" in out and "train: 13 images" in out


def test_a_file_name_dali_lists_cannot_hold(tmp_path):
    root = make_dataset(tmp_path / "ds", specials=False)
    bad = root / "train" / "bee" / "line\nbreak.jpg"
    Image.fromarray(smooth_image(np.random.default_rng(2), 40, 48)).save(bad, format="JPEG")
    with pytest.raises(DataError) as e:
        run_epoch(build_loaders(cfg(root, backend="dali", augment="none"), batch_size=2))
    msg = str(e.value)
    assert "line\\nbreak.jpg" in msg and "line break" in msg and "rename" in msg and "skip_bad_images" in msg
    loaders = build_loaders(cfg(root, backend="dali", augment="none", skip_bad_images=True), batch_size=2)
    assert loaders.bad_images == 1 and run_epoch(loaders) == (6, 9)
    loaders = build_loaders(cfg(root, backend="torchvision", augment="none"), batch_size=2)
    assert run_epoch(loaders) == (6, 9)


# --- item 11: text files with a UTF-8 byte-order mark ----------------------------------------


def test_label_and_list_files_with_a_byte_order_mark(tmp_path):
    from test_data_prepare import SYNSETS, TRUTH, expected, flat_val, layout

    mod = script()
    val = tmp_path / "val"
    names = flat_val(val)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(
        "ImageId,PredictionString\r\n"
        + "".join(f"{os.path.splitext(n)[0]},{w} 1 2 3 4\r\n" for n, w in zip(names, TRUTH)),
        encoding="utf-8-sig",
    )
    assert csv.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert mod.main(["--val-dir", str(val), "--labels", str(csv), "--mode", "copy", "--out", str(tmp_path / "k")]) == 0
    assert layout(tmp_path / "k") == expected(names)
    gt, synsets = tmp_path / "gt.txt", tmp_path / "synsets.txt"
    gt.write_text("".join(f"{SYNSETS.index(w) + 1}\n" for w in TRUTH), encoding="utf-8-sig")
    synsets.write_text("".join(f"{w} x\n" for w in SYNSETS), encoding="utf-8-sig")
    assert (
        mod.main(
            [
                "--val-dir",
                str(val),
                "--labels",
                str(gt),
                "--synsets",
                str(synsets),
                "--id-order",
                "sorted",
                "--mode",
                "copy",
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    assert layout(tmp_path / "d") == expected(names)
    # data.train_list / val_list written by a Windows tool
    root = make_dataset(tmp_path / "ds", specials=False)
    for split in ("train", "val"):
        lines = [
            f"ds/{split}/{c}/{f} {i}"
            for i, c in enumerate(("ant", "bee", "cat"))
            for f in sorted(os.listdir(root / split / c))
        ]
        (tmp_path / f"{split}.txt").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")
    with open(tmp_path / "train.txt", "ab") as f:  # and a name that is not UTF-8
        f.write(b"ds/train/bee/caf\xe9.jpg 1\r\n")
    Image.fromarray(smooth_image(np.random.default_rng(2), 40, 48)).save(
        os.path.join(os.fsencode(root / "train" / "bee"), b"caf\xe9.jpg"), format="JPEG"
    )
    for backend in BACKENDS:
        loaders = build_loaders(
            cfg(
                "",
                backend=backend,
                augment="none",
                train_list=str(tmp_path / "train.txt"),
                val_list=str(tmp_path / "val.txt"),
            ),
            batch_size=2,
        )
        assert loaders.val_images == 9 and len(loaders.train) == 6
        assert run_epoch(loaders) == (6, 9)
