"""A small, deterministic, learnable image set in ImageNet layout, for the quick start.

    python -m resnest_train.data.demo --out data/demo        # 10 classes, 2,000 train / 500 val, 64 px
    python -m resnest_train.data.demo --out data/demo5 --classes 5 --first-class 10   # 5 other classes

Each class is one (shape, texture, colour) combination. Every colour is shared by two
classes and most shapes by two or three, so no single cue gives the answer: a model has to
combine shape, texture and colour. Each image puts the class object at a random position,
scale and rotation, with colour jitter, on a random background with clutter (smaller shapes
of every kind and random lines), plus pixel noise, saved as a real JPEG at a random quality.
Accuracy on it means something and is not trivially 100%.

The same arguments give the same bytes. A finished set leaves ``.demo_complete.json``; a
later call with the same arguments returns at once without writing anything.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import shutil
import sys
import time

import numpy as np

MARKER = ".demo_complete.json"
VERSION = 1

SHAPES = ("disc", "square", "triangle", "star", "cross", "ring")
TEXTURES = ("solid", "stripes", "dots", "checker")
COLOURS = {"red": 0.0, "yellow": 0.15, "green": 0.33, "cyan": 0.5, "blue": 0.62, "purple": 0.8}

# The first ten classes: each colour twice, shapes and textures shared across colours.
DESIGNED = [
    ("disc", "solid", "red"),
    ("square", "stripes", "red"),
    ("disc", "stripes", "blue"),
    ("triangle", "solid", "blue"),
    ("square", "dots", "green"),
    ("triangle", "stripes", "green"),
    ("star", "solid", "yellow"),
    ("disc", "dots", "yellow"),
    ("cross", "solid", "purple"),
    ("star", "checker", "purple"),
]


def class_table(n: int) -> list[tuple[str, str, str]]:
    """The first ``n`` (shape, texture, colour) classes of the demo set: the designed ones first, in a fixed order."""
    table = list(DESIGNED)
    for colour in COLOURS:
        for shape in SHAPES:
            for texture in TEXTURES:
                if (shape, texture, colour) not in table:
                    table.append((shape, texture, colour))
    if not 1 <= n <= len(table):
        raise ValueError(f"classes must be between 1 and {len(table)}")
    return table[:n]


def class_name(i: int, spec) -> str:
    """The folder name of class ``i`` with ``spec`` = (shape, texture, colour): ``07_red_disc_stripes``."""
    shape, texture, colour = spec
    return f"{i:02d}_{colour}_{shape}_{texture}"


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif shape == "star":
        pts = [
            ((1.0 if k % 2 == 0 else 0.42) * math.cos(a), (1.0 if k % 2 == 0 else 0.42) * math.sin(a))
            for k, a in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)
        ]
    elif shape == "cross":
        w = 0.33
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    else:
        raise ValueError(shape)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _draw_shape(draw, shape, cx, cy, r, angle, fill):
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        draw.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


def _rgb(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)), dtype=np.float32) * 255


def _texture(kind, size, rng, c1, c2, scale=None):
    scale = scale or size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "solid":
        m = np.zeros((size, size), np.float32)
    elif kind == "stripes":
        a = rng.uniform(0, math.pi)
        period = rng.uniform(0.09, 0.14) * scale
        m = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif kind == "dots":
        period = rng.uniform(0.1, 0.14) * scale
        ox, oy = rng.uniform(0, period, 2)
        dx = ((xx + ox) % period) - period / 2
        dy = ((yy + oy) % period) - period / 2
        m = (dx * dx + dy * dy < (0.28 * period) ** 2).astype(np.float32)
    elif kind == "checker":
        period = rng.uniform(0.12, 0.18) * scale
        a = rng.uniform(0, math.pi / 2)
        u, v = xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)
        m = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:
        raise ValueError(kind)
    return c1[None, None, :] * (1 - m[..., None]) + c2[None, None, :] * m[..., None]


def _paste(canvas, shape, texture, cx, cy, r, angle, c1, c2, rng, alpha=1.0):
    """Draw one textured shape onto ``canvas`` (only its bounding box is computed)."""
    from PIL import Image, ImageDraw

    b = int(math.ceil(2 * r)) + 4
    x0, y0 = int(cx - b / 2), int(cy - b / 2)
    mask = Image.new("L", (b, b), 0)
    _draw_shape(ImageDraw.Draw(mask), shape, cx - x0, cy - y0, r, angle, int(round(255 * alpha)))
    layer = Image.fromarray(_texture(texture, b, rng, c1, c2, canvas.size[0]).astype(np.uint8))
    canvas.paste(layer, (x0, y0), mask)


def render(spec, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 image of class ``spec``, drawn at 2x and downsampled."""
    from PIL import Image, ImageDraw

    shape, texture, colour = spec
    S = 2 * size
    # background: a tilted two-colour gradient
    h0 = rng.uniform()
    c_a, c_b = (
        _rgb(h0, rng.uniform(0, 0.45), rng.uniform(0.3, 0.9)),
        _rgb(h0 + rng.uniform(-0.3, 0.3), rng.uniform(0, 0.45), rng.uniform(0.3, 0.9)),
    )
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    a = rng.uniform(0, 2 * math.pi)
    t = np.clip((xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a) + 0.5, 0, 1)[..., None]
    canvas = Image.fromarray((c_a * (1 - t) + c_b * t).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    # clutter: lines and smaller shapes of every kind in random colours
    for _ in range(rng.integers(2, 6)):
        p = rng.uniform(0, S, 4)
        draw.line(
            list(p),
            fill=tuple(int(v) for v in _rgb(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 1))),
            width=int(rng.integers(1, 5)),
        )
    for _ in range(rng.integers(3, 7)):
        col = _rgb(rng.uniform(), rng.uniform(0.3, 1), rng.uniform(0.3, 1))
        _paste(
            canvas,
            SHAPES[rng.integers(len(SHAPES))],
            TEXTURES[rng.integers(len(TEXTURES))],
            *rng.uniform(0, S, 2),
            rng.uniform(0.06, 0.2) * S,
            rng.uniform(0, 2 * math.pi),
            col,
            col * rng.uniform(0.4, 0.8),
            rng,
            alpha=0.8,
        )
    # the class object
    r = rng.uniform(0.17, 0.36) * S
    cx, cy = rng.uniform(r * 0.8, S - r * 0.8, 2)
    hue = COLOURS[colour] + rng.uniform(-0.045, 0.045)
    c1 = _rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    c2 = c1 * rng.uniform(0.3, 0.55) if rng.uniform() < 0.5 else 255 - (255 - c1) * rng.uniform(0.25, 0.5)
    _paste(canvas, shape, texture, cx, cy, r, rng.uniform(0, 2 * math.pi), c1, c2, rng)
    img = np.asarray(canvas.resize((size, size), Image.BILINEAR, reducing_gap=None)).astype(np.float32)
    # global photometric jitter and sensor noise
    img = (img - 128) * rng.uniform(0.75, 1.2) + 128 + rng.uniform(-20, 20)
    img += rng.normal(0, rng.uniform(4, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _params(classes, train_per_class, val_per_class, size, seed, first_class=0):
    params = {
        "version": VERSION,
        "classes": classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
    }
    if first_class:  # only then: sets made before first_class existed stay complete
        params["first_class"] = first_class
    return params


def is_complete(out_dir: str, params: dict) -> bool:
    """Whether ``out_dir`` already holds the demo set made with ``params`` (its marker file says so)."""
    try:
        with open(os.path.join(out_dir, MARKER)) as f:
            return json.load(f).get("params") == params
    except (OSError, ValueError):
        return False


def make_demo_dataset(
    out_dir: str,
    classes: int = 10,
    train_per_class: int = 200,
    val_per_class: int = 50,
    size: int = 64,
    seed: int = 0,
    force: bool = False,
    verbose: bool = False,
    first_class: int = 0,
) -> dict:
    """Write the demo set to ``out_dir`` (train/ and val/ class folders of JPEGs).

    The set holds ``classes`` classes of the class table from ``first_class`` on: a set with
    another ``first_class`` shares no class with the default one (a transfer-learning target).

    Returns ``{"path", "generated", "train_images", "val_images", "classes", "seconds"}``;
    ``generated`` is False when a complete set with the same arguments was already there.
    """
    from PIL import Image

    params = _params(classes, train_per_class, val_per_class, size, seed, first_class)
    if first_class < 0:
        raise ValueError("first_class must be >= 0")
    table = class_table(first_class + classes)[first_class:]
    names = [class_name(first_class + i, spec) for i, spec in enumerate(table)]
    result = {
        "path": out_dir,
        "generated": False,
        "train_images": classes * train_per_class,
        "val_images": classes * val_per_class,
        "classes": names,
        "seconds": 0.0,
    }
    if not force and is_complete(out_dir, params):
        return result
    start = time.monotonic()
    marker = os.path.join(out_dir, MARKER)
    if os.path.exists(marker):
        os.remove(marker)
    for split in ("train", "val"):  # start clean: a set made with other arguments may be there
        d = os.path.join(out_dir, split)
        if os.path.isdir(d):
            for entry in os.listdir(d):
                if entry[:2].isdigit() and entry[2:3] == "_":  # only our own class folders
                    shutil.rmtree(os.path.join(d, entry))
    for split_id, (split, per) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for ci, (spec, name) in enumerate(zip(table, names), start=first_class):
            d = os.path.join(out_dir, split, name)
            os.makedirs(d, exist_ok=True)
            for i in range(per):
                rng = np.random.default_rng([seed, split_id, ci, i])
                img = render(spec, size, rng)
                quality = int(rng.integers(80, 96))
                Image.fromarray(img).save(os.path.join(d, f"{split}_{ci:02d}_{i:05d}.jpg"), quality=quality)
        if verbose:
            print(f"  {split}: {per * classes} images", file=sys.stderr)
    with open(marker, "w") as f:
        json.dump({"params": params, "classes": names}, f, indent=1)
    result.update(generated=True, seconds=round(time.monotonic() - start, 2))
    return result


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``): make the demo set; returns 0."""
    p = argparse.ArgumentParser(
        prog="python -m resnest_train.data.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--first-class",
        type=int,
        default=0,
        help="start at this class of the table (10: five classes the default set does not have)",
    )
    p.add_argument("--force", action="store_true", help="regenerate even if a complete set is there")
    a = p.parse_args(argv)
    try:
        r = make_demo_dataset(
            a.out,
            a.classes,
            a.train_per_class,
            a.val_per_class,
            a.size,
            a.seed,
            a.force,
            verbose=True,
            first_class=a.first_class,
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if r["generated"]:
        print(
            f"demo data: wrote {r['train_images']} train + {r['val_images']} val images "
            f"({len(r['classes'])} classes, {a.size} px) to {a.out} in {r['seconds']:.1f} s"
        )
    else:
        print(
            f"demo data: {a.out} already holds the complete set ({r['train_images']} train + "
            f"{r['val_images']} val images); nothing to do"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
