"""`resnest-benchmark overhead`: train.py's training images/s against a bare loop of the same work.

    python scripts/bench_overhead.py [--model resnest14] [--img-size 64] [--batch 32] [--steps 20] ...
    python scripts/benchmark.py overhead ...   (same arguments)

"train.py" is the real loop, run in this process: `engine.run` on the config that the
overrides give (synthetic data, 1 epoch of `--steps` steps, TensorBoard on), its speed read
from the `images_per_sec` of metrics.jsonl (the epoch's training steps, first to last; the
evaluation after it is not counted). The bare loop builds the same model (same seed), the
same synthetic loader, SGD with the same parameter groups at a fixed LR, and runs the same
step: mixup/cutmix and label smoothing as configured, the same autocast, backward,
optimizer.step, zero_grad; nothing else. Timed the same way, over all its steps. The two
alternate pair by pair, in ABBA order (so machine drift hits both alike); the result is their medians and
the median of the per-pair ratios. `--profile FILE` also writes a cProfile of one more
train.py run (what `python -m pstats FILE` reads), to see where the difference goes.
"""

import argparse
import contextlib
import cProfile
import json
import os
import statistics
import tempfile
import time

import torch

from resnest_train import engine
from resnest_train.config_loader import load_config
from resnest_train.data import build_loaders
from resnest_train.optim import build_optimizer, peak_lr
from resnest_train.trainer import autocast, build_mixup, soft_target_loss


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnest14")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--pairs", type=int, default=5, help="alternating (train.py, bare loop) pairs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", default="", help="write a cProfile of one more train.py run here")
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")
    parser.add_argument("overrides", nargs="*", help="more config overrides, key=value (as train.py takes)")


def config(args, out_dir: str):
    """The run's config: the overrides that make both loops do the same work."""
    return load_config(
        None,
        [
            f"model.name={args.model}",
            f"device={args.device}",
            "data.backend=synthetic",
            f"data.train_crop={args.img_size}",
            f"data.synthetic.train_images={args.batch * args.steps}",
            f"data.synthetic.val_images={args.batch}",
            "data.synthetic.num_classes=1000",
            f"train.batch_size={args.batch}",
            "train.epochs=1",
            "optim.warmup_epochs=0",
            "output.progress=lines",
            "output.save_every_epochs=0",
            f"output.dir={out_dir}",
            *args.overrides,
        ],
    )


def train_py(args) -> float:
    """images/s of train.py's loop (engine.run in this process), from its metrics.jsonl."""
    with tempfile.TemporaryDirectory() as out:
        cfg = config(args, out)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            code = engine.run(cfg)
        if code != 0:
            raise SystemExit(f"train.py's loop exited {code}")
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return json.loads(f.readline())["images_per_sec"]


def bare_loop(args) -> float:
    """images/s of the bare loop: the same model, data, optimizer, loss and autocast, nothing else."""
    with tempfile.TemporaryDirectory() as out:
        cfg = config(args, out)
    device = torch.device(args.device)
    engine.configure_backends(cfg.train, device)
    torch.manual_seed(cfg.train.seed)
    loaders = build_loaders(
        cfg.data,
        batch_size=cfg.train.batch_size,
        device=device,
        seed=cfg.train.seed,
        channels_last=cfg.train.channels_last,
    )
    model = engine.build_model(cfg, loaders.num_classes).to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim, lr=peak_lr(cfg.optim.base_lr, args.batch))
    mixup = build_mixup(cfg.train, loaders.num_classes)
    model.train()
    loaders.train.set_epoch(0)
    t0 = time.perf_counter()
    for images, labels in loaders.train:
        if mixup is not None:
            images, targets = mixup(images, labels)
        with autocast(cfg.train.amp, device):
            logits = model(images)
        if mixup is not None:
            loss = soft_target_loss(logits, targets)
        else:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=cfg.train.label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    loss.item()  # the device has finished the last step
    return len(loaders.train) * args.batch / (time.perf_counter() - t0)


def measure(args) -> dict:
    ours, bare = [], []
    for i in range(args.pairs):  # ABBA order: neither loop always runs first
        if i % 2:
            bare.append(bare_loop(args))
        ours.append(train_py(args))
        if not i % 2:
            bare.append(bare_loop(args))
    ratios = [a / b for a, b in zip(ours, bare)]
    result = {
        "model": args.model,
        "img_size": args.img_size,
        "batch": args.batch,
        "steps": args.steps,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "overrides": args.overrides,
        "train_py_images_per_sec": statistics.median(ours),
        "bare_images_per_sec": statistics.median(bare),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "train_py_runs": ours,
        "bare_runs": bare,
    }
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(train_py, args)
        profiler.dump_stats(args.profile)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.WARNING)
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.model} {args.img_size}px batch {args.batch}, {args.steps} steps, {args.device}, "
            f"{result['threads']} threads, {args.pairs} pairs"
        )
        print(f"train.py   {result['train_py_images_per_sec']:8.1f} images/s (median)")
        print(f"bare loop  {result['bare_images_per_sec']:8.1f} images/s (median)")
        spread = f"{result['ratio_min']:.3f}-{result['ratio_max']:.3f}"
        print(f"ratio      {result['ratio']:.3f} (median of pairs; {spread})")
    return 0
