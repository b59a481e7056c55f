"""Loader throughput: training images/s of each backend over a folder of JPEGs.

    python scripts/benchmark.py data                       # generated ImageNet-sized JPEGs, 2 workers
    python scripts/bench_data.py --root /data/imagenet --workers 8 --batch 128 --device cuda
    python scripts/benchmark.py data --format folder,shards   # the same files as a folder and as tar shards

Each backend reads the same files with the same number of worker processes (torchvision
DataLoader) or threads (DALI), runs the training transforms (RandomResizedCrop at --crop,
flip, mean/std; AutoAugment off and on) and delivers float batches on --device. A repeat is
one epoch. The headline rate is the steady one: images/s over the batches after each
worker / pipeline has made two (2 x --workers batches), when every loader has its workers
busy and nothing banked (timing from the first batch would hand the DataLoader the batches
its other workers finished meanwhile); on ImageNet an epoch is thousands of batches, so the
steady rate is what a run sees. The whole-epoch rate (from asking for the epoch to its last
batch, start-up included) and the first-batch latency are reported too.
--format shards reads tar shards (data.format: shards): --root's own when it is a shard set, else
shards made from the folder into a temporary folder (--shard-size); folder,shards measures both,
interleaved, and reports shards / folder per backend.
Medians over --repeats. Without --root, ImageNet-like JPEGs (500x375, quality 90, ~100 KB
with a photo-like spectrum) are generated into a temporary folder: --unique distinct
images, hard-linked up to --images files.
"""

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np


def photo_like(rng, w=500, h=375):
    """An RGB image with a roughly 1/f spectrum and sensor noise: JPEG-codes like a photo (~100 KB)."""
    from PIL import Image

    img = np.zeros((h, w, 3), np.float32)
    for s, amp in ((4, 50), (16, 35), (64, 30), (250, 40)):
        low = rng.normal(0, 1, (max(2, h * s // w), s, 3)).astype(np.float32)
        low = ((low - low.min()) / (np.ptp(low) + 1e-6) * 255).astype(np.uint8)
        img += (np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.float32) / 255 - 0.5) * 2 * amp
    img += 120 + rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_jpegs(root, images, classes=8, quality=90, seed=0, unique=None):
    """ImageNet layout under ``root`` (train/ and a one-image-per-class val/).

    The first ``unique`` train files are distinct images; the rest hard-link to them (the
    decoders do the same work; generating a photo takes longer than loading it).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    unique = images if unique is None else max(1, min(unique, images))
    sizes = []
    for split, n in (("train", images), ("val", classes)):
        for c in range(classes):
            os.makedirs(os.path.join(root, split, f"n{c:08d}"), exist_ok=True)
        paths = [os.path.join(root, split, f"n{i % classes:08d}", f"img_{i:06d}.JPEG") for i in range(n)]
        for i, path in enumerate(paths):
            if split == "train" and i >= unique:
                os.link(paths[i % unique], path)
                continue
            w, h = (500, 375) if i % 4 else (375, 500)
            buf = io.BytesIO()
            Image.fromarray(photo_like(rng, w, h)).save(buf, "JPEG", quality=quality)
            sizes.append(buf.tell())
            with open(path, "wb") as f:
                f.write(buf.getvalue())
    return sum(sizes) / len(sizes)


def cpu_seconds():
    """CPU time (user + system) of this process, all its threads, and its live child processes."""
    t = os.times()
    total = t.user + t.system
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class _Reference:
    """The classic torchvision recipe, for comparison: ImageFolder + ToTensor/Normalize in the workers."""

    def __init__(self, root, args, autoaugment):
        import torch
        import torchvision.transforms as T
        from torchvision.datasets import ImageFolder

        ops = [T.RandomResizedCrop(args.crop), T.RandomHorizontalFlip()]
        if autoaugment:
            ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
        ops += [T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
        ds = ImageFolder(os.path.join(root, "train"), T.Compose(ops))
        self.device = torch.device(args.device)
        self.dl = torch.utils.data.DataLoader(
            ds,
            batch_size=args.batch,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            pin_memory=self.device.type == "cuda",
        )
        self.train = self

    def set_epoch(self, epoch, start_step=0):
        pass

    def __iter__(self):
        for x, y in self.dl:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def build(root, backend, args, autoaugment):
    """The loaders of one backend for the benchmark (``data.backend`` name, or ``torchvision-reference``)."""
    import torch

    if backend == "torchvision-reference":
        return _Reference(root, args, autoaugment)
    from resnest_train.config import DataConfig
    from resnest_train.data import build_loaders

    augment = "autoaugment" if autoaugment else "none"
    cfg = DataConfig(root=root, backend=backend, workers=args.workers, train_crop=args.crop, augment=augment)
    cfg.dali.threads = args.workers
    cfg.dali.device = args.dali_device
    return build_loaders(cfg, batch_size=args.batch, device=torch.device(args.device), seed=0)


def one_epoch(loaders, epoch, device, warm):
    """Times of one epoch: steady images/s (after ``warm`` batches), whole-epoch images/s,
    seconds to the first batch, CPU seconds per image in the steady part."""
    import torch

    t0 = time.perf_counter()
    loaders.train.set_epoch(epoch)
    sizes, times, cpu = [], [], None
    for x, _ in loaders.train:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        sizes.append(x.shape[0])
        times.append(time.perf_counter())
        if len(sizes) == warm:
            cpu = cpu_seconds()
    cpu_end = cpu_seconds()
    steady = sum(sizes[warm:])
    return (
        steady / (times[-1] - times[warm - 1]),
        sum(sizes) / (times[-1] - t0),
        times[0] - t0,
        (cpu_end - cpu) / steady,
    )


def measure_all(roots, backends, args, autoaugment):
    """Epochs of the backends interleaved (so a busy machine slows all alike); medians per backend.
    ``roots``: {format: data.root}; a backend over shards is reported as ``BACKEND/shards``."""
    loaders = {}
    for fmt, root in roots.items():
        for b in backends:
            if fmt == "folder" or b != "torchvision-reference":  # the reference reads folders only
                loaders[b if fmt == "folder" else f"{b}/shards"] = build(root, b, args, autoaugment)
    backends = list(loaders)
    steps = len(loaders[backends[0]].train)
    if steps < 2:
        raise SystemExit(
            f"bench_data: an epoch of {steps} batch(es) has no steady part; give more --images or a smaller --batch."
        )
    warm = max(1, min(2 * args.workers, steps // 2))  # every worker / pipeline has made two batches
    runs = {b: [] for b in backends}
    for rep in range(args.repeats + 1):  # epoch 0 warms the page cache and starts the workers
        for b in backends:
            r = one_epoch(loaders[b], rep, args.device, warm)
            if rep > 0:
                runs[b].append(r)
    out = {}
    for b in backends:
        rates, whole, lat, cpu = zip(*runs[b])
        out[b] = {
            "images_per_sec": round(statistics.median(rates), 1),
            "runs": [round(r, 1) for r in rates],
            "epoch_images_per_sec": round(statistics.median(whole), 1),
            "first_batch_s": round(statistics.median(lat), 3),
            "cpu_ms_per_image": round(1000 * statistics.median(cpu), 2),
            "steps": steps,
            "warm_batches": warm,
        }
    loaders.clear()
    return out


def add_arguments(p):
    """Add this benchmark's options to ``p`` (an argparse parser)."""
    p.add_argument("--root", help="dataset in ImageNet layout (default: generate JPEGs into a temp folder)")
    p.add_argument("--images", type=int, default=2560, help="train files to generate without --root")
    p.add_argument("--unique", type=int, default=640, help="of which distinct images (the rest are hard links)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers = DALI threads")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per setting (median reported)")
    p.add_argument(
        "--backends",
        default="torchvision,dali,torchvision-reference",
        help="torchvision and dali are this project's backends; torchvision-reference is the "
        "classic ImageFolder + ToTensor/Normalize DataLoader",
    )
    p.add_argument("--autoaugment", default="off,on", help="off, on or off,on")
    p.add_argument("--device", default="cpu", help="where batches are delivered (cpu or cuda)")
    p.add_argument("--dali-device", default="cpu", help="DALI operators: cpu or gpu (mixed decode)")
    p.add_argument("--format", default="folder", help="folder, shards or folder,shards (data.format)")
    p.add_argument("--shard-size", type=int, default=256, help="images per shard made for --format shards")


def run(args):
    """Measure every backend with AutoAugment off and/or on; returns the result dict printed as JSON."""
    import logging
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    logging.getLogger("resnest_train.data").setLevel(logging.ERROR)
    tmp, tmp_dirs = None, []
    root = args.root
    result = {
        "workers": args.workers,
        "batch": args.batch,
        "crop": args.crop,
        "device": args.device,
        "dali_device": args.dali_device,
        "format": args.format,
        "cpu_count": os.cpu_count(),
        "results": {},
    }
    try:
        if not root:
            tmp = tempfile.mkdtemp(prefix="bench_data_")
            root = tmp
            t = time.time()
            avg = make_jpegs(root, args.images, unique=args.unique)
            result["generated"] = {
                "images": args.images,
                "unique": min(args.unique, args.images),
                "size": "500x375 / 375x500",
                "quality": 90,
                "avg_kb": round(avg / 1e3, 1),
            }
            print(
                f"generated {args.images} JPEGs ({result['generated']['unique']} distinct, avg "
                f"{avg / 1e3:.0f} KB) in {time.time() - t:.1f} s",
                file=sys.stderr,
            )
        result["root"] = args.root or "(generated)"
        roots = shard_roots(root, args.format.split(","), args, tmp_dirs)
        backends = args.backends.split(",")
        for aa in args.autoaugment.split(","):
            row = measure_all(roots, backends, args, aa == "on")
            for backend in [b for b in row if b in backends or b.endswith("/shards")]:
                r = row[backend]
                print(
                    f"autoaugment {aa:3s} {backend:12s} {r['images_per_sec']:8.1f} images/s steady "
                    f"(runs {r['runs']}; whole epoch {r['epoch_images_per_sec']}, first batch "
                    f"{r['first_batch_s']} s, {r['cpu_ms_per_image']} CPU ms/image)",
                    file=sys.stderr,
                )
            if "dali" in row and "torchvision" in row:
                row["dali_vs_torchvision"] = round(
                    row["dali"]["images_per_sec"] / row["torchvision"]["images_per_sec"], 2
                )
                row["dali_vs_torchvision_whole_epoch"] = round(
                    row["dali"]["epoch_images_per_sec"] / row["torchvision"]["epoch_images_per_sec"], 2
                )
                row["cpu_ratio_torchvision_vs_dali"] = round(
                    row["torchvision"]["cpu_ms_per_image"] / row["dali"]["cpu_ms_per_image"], 2
                )
                print(
                    f"autoaugment {aa:3s} DALI / torchvision = {row['dali_vs_torchvision']:.2f}x images/s "
                    f"steady ({row['dali_vs_torchvision_whole_epoch']:.2f}x over whole epochs), "
                    f"{row['cpu_ratio_torchvision_vs_dali']:.2f}x less CPU per image",
                    file=sys.stderr,
                )
            if "dali" in row and "torchvision-reference" in row:
                row["dali_vs_reference"] = round(
                    row["dali"]["images_per_sec"] / row["torchvision-reference"]["images_per_sec"], 2
                )
                print(
                    f"autoaugment {aa:3s} DALI / classic torchvision DataLoader = "
                    f"{row['dali_vs_reference']:.2f}x images/s",
                    file=sys.stderr,
                )
            for backend in backends:
                if f"{backend}/shards" in row and backend in row:
                    ratio = row[f"{backend}/shards"]["images_per_sec"] / row[backend]["images_per_sec"]
                    row[f"{backend}_shards_vs_folder"] = round(ratio, 2)
                    print(f"autoaugment {aa:3s} {backend} shards / folder = {ratio:.2f}x images/s", file=sys.stderr)
            result["results"][f"autoaugment_{aa}"] = row
    finally:
        for d in [tmp] + tmp_dirs:
            if d:
                shutil.rmtree(d, ignore_errors=True)
    return result


def shard_roots(root, formats, args, tmp_dirs):
    """{format: data.root} for ``--format``: the folder ``root`` and/or its shards (``root`` itself when
    it is a shard set, else shards made into a temporary folder, appended to ``tmp_dirs``)."""
    from resnest_train.data.shards import is_shards, make_shards

    unknown = set(formats) - {"folder", "shards"}
    if unknown:
        raise SystemExit(f"bench_data: --format takes folder, shards or folder,shards, not {','.join(unknown)}")
    if is_shards(root):
        if "folder" in formats:
            raise SystemExit(f"bench_data: --root {root} is a shard set; give the folder for --format folder,shards")
        return {"shards": root}
    roots = {"folder": root} if "folder" in formats else {}
    if "shards" in formats:
        tmp_dirs.append(tempfile.mkdtemp(prefix="bench_shards_"))
        t = time.time()
        make_shards(root, os.path.join(tmp_dirs[-1], "shards"), args.shard_size, progress=False)
        print(f"made shards of {args.shard_size} images in {time.time() - t:.1f} s", file=sys.stderr)
        roots["shards"] = os.path.join(tmp_dirs[-1], "shards")
    return roots


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``): print the results as JSON; returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    res = run(args)
    import json

    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0
