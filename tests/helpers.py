"""Shared by the tests: run train.py for real, read what a run leaves behind."""

import glob
import os
import subprocess
import sys

import pytest

from resnest_train.rundir import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")

# A tiny but real run: resnest14 on 32 px synthetic images, 2 x 4 steps, every step logged; on
# the CPU also on a machine with a GPU (tests/test_gpu_path.py checks that with CUDA faked).
TINY = [
    "model.name=resnest14",
    "device=cpu",
    "data.backend=synthetic",
    "data.train_crop=32",
    "data.synthetic.train_images=64",
    "data.synthetic.val_images=24",
    "data.synthetic.num_classes=5",
    "train.batch_size=8",
    "train.epochs=2",
    "optim.warmup_epochs=1",
    "output.log_every=1",
    "output.progress=lines",
    "output.save_every_epochs=1",
    "output.keep_last=1",
]


def slow_except(values, fast):
    """`values` for ``pytest.mark.parametrize`` with every value not in `fast` marked slow:
    ``make test-fast`` checks the small models, ``make test`` every one. A tuple value is one
    case of several arguments."""
    return [
        v if v in fast else pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=pytest.mark.slow) for v in values
    ]


def env():
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def train(*args, check=True, timeout=600):
    result = subprocess.run(
        [sys.executable, TRAIN, *args], capture_output=True, text=True, cwd=ROOT, env=env(), timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train.py exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def train_preempted(*args, at, timeout=300):
    """train.py with ``args``, sent SIGTERM (a scheduler's preemption) when it prints a line that
    starts with ``at`` (e.g. ``"epoch 1/2 step 3/8"``); asserts it exits 143. Returns its output."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env()
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(at):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=timeout) == 143, "".join(lines)
    return "".join(lines)


def metrics(run_dir):
    """The run's metrics.jsonl records; fails if the file is missing."""
    run = RunDir(run_dir)
    assert os.path.isfile(run.metrics), f"{run.metrics} is missing"
    return run.read_metrics()


def run_state(run_dir):
    """The run's run_state.json; fails if the file is missing."""
    run = RunDir(run_dir)
    assert os.path.isfile(run.run_state), f"{run.run_state} is missing"
    return run.read_run_state()


def last_checkpoint(run_dir):
    """The path of the run's checkpoints/last.pth."""
    return RunDir(run_dir).last_checkpoint


def scalars(path, tag):
    """{step: value} of one TensorBoard scalar, read with TensorBoard's own event reader.

    `path` is the tb folder or one events file; later values of a step win.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(path, size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return {}
    return {e.step: e.value for e in acc.Scalars(tag)}


def event_files(run_dir):
    """The run's TensorBoard event files, oldest first (their names start with the creation time)."""
    files = glob.glob(os.path.join(RunDir(run_dir).tensorboard, "events.out.tfevents.*"))
    return sorted(files, key=lambda f: float(os.path.basename(f).split(".")[3]))


def scalars_in(files, tag):
    merged = {}
    for path in files:
        merged.update(scalars(path, tag))
    return merged


# ---------------------------------------------------------------------------------------
# A pretrained model for the after-training tests (evaluate, export, fine-tune)
# ---------------------------------------------------------------------------------------

SHAPES = ("bar", "cross", "disc", "square", "triangle")
COLOURS = {"green": (40, 200, 40), "red": (220, 40, 40)}


def _polygon(shape, cx, cy, r, angle):
    import math

    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "cross":
        w = 0.3
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
    else:  # bar
        pts = [(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)]
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def shape_image(shape, colour, size, rng):
    """One filled shape (random place, size, turn; colour jittered) on a flat grey with pixel noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (int(rng.uniform(60, 190)),) * 3)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    fill = tuple(int(np.clip(c + rng.uniform(-30, 30), 0, 255)) for c in colour)
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(0, 6.3)), fill=fill)
    pixels = np.asarray(img, np.float32) + rng.normal(0, 20, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_shapes(root, train_per_class, val_per_class, seed, by_colour, size=32):
    """An ImageNet-layout set of PNG shapes, quick to learn (a CNN gets most of it in ~100 steps).

    by_colour: 10 classes, each shape in red and in green (``red_disc``, ...); else 5 classes,
    one per shape, in both colours (a coarser task whose classes the 10-class set does not have).
    """
    import numpy as np

    classes = (
        [(f"{c}_{s}", [c]) for c in COLOURS for s in SHAPES] if by_colour else [(s, list(COLOURS)) for s in SHAPES]
    )
    for split_id, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for k, (name, colours) in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, split_id, k, i])
                shape = name.rsplit("_", 1)[-1]
                shape_image(shape, COLOURS[colours[i % len(colours)]], size, rng).save(
                    os.path.join(folder, f"{split}_{k:02d}_{i:04d}.png")
                )
    return root


# resnest14 made 4x cheaper (stem and bottleneck width 16): 100 steps of batch 16 on the
# 10-class shapes reach ~60% val top-1 in ~20 s on a loaded 2-core machine.
NARROW = ["model.name=resnest14", "model.stem_width=16", "model.bottleneck_width=16"]
SHAPES_RUN = NARROW + [
    "device=cpu",
    "data.backend=torchvision",
    "data.workers=0",
    "data.train_crop=32",
    "data.eval_ratio=1.0",
    "data.rrc_scale=[1.0,1.0]",
    "data.rrc_ratio=[1.0,1.0]",
    "data.augment=none",
    "train.mixup_alpha=0",
    "output.progress=lines",
    "output.log_every=20",
    "output.loggers=[]",
    "output.save_every_epochs=0",
]
PRETRAIN = SHAPES_RUN + [
    "train.batch_size=16",
    "train.epochs=5",
    "optim.base_lr=0.32",
    "optim.warmup_epochs=0.5",
    "train.ema=true",
    "train.ema_decay=0.9",
]
