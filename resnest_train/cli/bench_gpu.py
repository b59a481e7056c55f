"""The GPU table: training images/s of ResNeSt-50 in each precision, layout and execution mode,
beside timm's resnest50d and resnet50d; the DALI GPU loader; end-to-end train.py; a checkpoint save.

    python scripts/bench_gpu.py [--batch 128] [--steps 20] [--skip dali,e2e,save]
    python scripts/benchmark.py gpu ...   (same arguments)

Needs a CUDA GPU (exits 2 with a message otherwise). Every row is timed the same way: warm-up
steps, then ``--steps`` steps between two ``torch.cuda.synchronize`` calls, repeated
``--repeats`` times, median reported. A training step is forward, cross-entropy, backward,
SGD (Nesterov momentum) and zero_grad, on synthetic data already on the GPU. "per-step sync"
adds a ``loss.item()`` every step, the host sync the trainer avoids (issue 16, item 6).
Each row's numbers are printed as soon as they exist, then the whole table as markdown.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from resnest_train.models import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout: configs/

# (label, source, model name, amp, channels_last, compiled, per-step sync)
MODEL_ROWS = [
    ("ours", "ours", "resnest50", "none", False, False, False),
    ("ours", "ours", "resnest50", "none", True, False, False),
    ("ours", "ours", "resnest50", "bf16", False, False, False),
    ("ours", "ours", "resnest50", "bf16", True, False, False),
    ("ours", "ours", "resnest50", "bf16", True, False, True),
    ("ours", "ours", "resnest50", "bf16", True, True, False),
    ("timm", "timm", "resnest50d", "none", False, False, False),
    ("timm", "timm", "resnest50d", "bf16", False, False, False),
    ("timm", "timm", "resnest50d", "bf16", True, False, False),
    ("timm", "timm", "resnet50d", "bf16", False, False, False),
    ("timm", "timm", "resnet50d", "bf16", True, False, False),
]


def build_model(source: str, name: str) -> torch.nn.Module:
    """A 1000-class model named ``name``: ours (``source="ours"``, ``create_model``) or timm's."""
    if source == "ours":
        return create_model(name, num_classes=1000)
    import timm

    return timm.create_model(name, num_classes=1000)


def time_training(
    model,
    batch: int,
    img_size: int,
    amp: str,
    channels_last: bool,
    compiled: bool,
    per_step_sync: bool,
    steps: int,
    warmup: int,
    repeats: int,
) -> float:
    """Median training images/s of `model` on synthetic data on the current GPU."""
    device = torch.device("cuda")
    model = model.to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, img_size, img_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    net = torch.compile(model) if compiled else model

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if per_step_sync:
            loss.item()

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        rates.append(steps * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def model_rows(args) -> list[dict]:
    """Training images/s of each model row (precision x layout x mode), median of ``--repeats``."""
    rows = []
    for label, source, name, amp, cl, compiled, sync in MODEL_ROWS:
        torch.manual_seed(0)
        model = build_model(source, name)
        warmup = args.warmup + (3 if compiled else 0)
        ips = time_training(model, args.batch, args.img_size, amp, cl, compiled, sync, args.steps, warmup, args.repeats)
        row = {
            "section": "model",
            "source": label,
            "model": name,
            "amp": amp,
            "layout": "channels_last" if cl else "NCHW",
            "mode": "compiled" if compiled else "eager",
            "per_step_sync": sync,
            "images_per_sec": round(ips, 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch._dynamo.reset()
    return rows


def dali_rows(args) -> list[dict]:
    """DALI GPU (mixed decode) training-loader images/s on generated ImageNet-sized JPEGs."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        print("DALI is not installed here: its rows are skipped.", flush=True)
        return []
    from resnest_train.config import DataConfig
    from resnest_train.data import build_loaders

    from . import bench_data

    rows = []
    with tempfile.TemporaryDirectory() as root:
        bench_data.make_jpegs(root, images=args.dali_images, unique=min(args.dali_images, 640))
        for autoaugment in (False, True):
            augment = "autoaugment" if autoaugment else "none"
            cfg = DataConfig(root=root, backend="dali", train_crop=224, augment=augment)
            cfg.dali.device = "gpu"
            cfg.dali.threads = 8
            loaders = build_loaders(cfg, batch_size=args.batch, device=torch.device("cuda"), channels_last=True)
            rates = []
            for epoch in range(args.repeats + 1):
                loaders.train.set_epoch(epoch)
                it = iter(loaders.train)
                next(it)  # the first batch pays for the pipeline start
                torch.cuda.synchronize()
                t0, n = time.perf_counter(), 0
                for images, _ in it:
                    n += images.shape[0]
                torch.cuda.synchronize()
                if epoch:
                    rates.append(n / (time.perf_counter() - t0))
            row = {"section": "dali", "autoaugment": autoaugment, "images_per_sec": round(statistics.median(rates), 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def e2e_row(args) -> list[dict]:
    """train.py itself: ResNeSt-50, bf16, channels_last, synthetic data, 200 steps; data-wait share."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--config",
            os.path.join(ROOT, "configs", "resnest50.yaml"),
            "data.backend=synthetic",
            f"data.synthetic.train_images={args.batch * args.e2e_steps}",
            "data.synthetic.val_images=256",
            f"train.batch_size={args.batch}",
            "train.epochs=1",
            "train.amp=bf16",
            "train.channels_last=true",
            "device=cuda",
            "output.log_every=50",
            "output.image_grid=false",
            "output.progress=lines",
            f"output.dir={out}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=args.e2e_timeout)
        if result.returncode != 0:
            print(f"train.py exited {result.returncode}:\n{result.stderr[-3000:]}", flush=True)
            return [{"section": "e2e", "error": result.returncode}]
        with open(os.path.join(out, "metrics.jsonl")) as f:
            record = json.loads(f.readline())
        acc = EventAccumulator(os.path.join(out, "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        data_s = [e.value for e in acc.Scalars("train/data_time_s")][1:]  # the first window holds the start-up
        ips = [e.value for e in acc.Scalars("train/images_per_sec")][1:]
        step_s = statistics.median(args.batch / v for v in ips) if ips else float("nan")
        row = {
            "section": "e2e",
            "steps": args.e2e_steps,
            "images_per_sec_epoch": round(record["images_per_sec"], 1),
            "images_per_sec_steady": round(args.batch / step_s, 1) if ips else None,
            "data_wait_share": round(statistics.median(data_s) / step_s, 4) if data_s else None,
        }
        print(json.dumps(row), flush=True)
        return [row]


def save_row(args) -> list[dict]:
    """Seconds to write a ResNeSt-269 checkpoint (model + SGD momentum + EMA) with atomic_save."""
    from resnest_train import checkpoint

    model = create_model("resnest269", num_classes=1000).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.randn(2, 3, 64, 64, device="cuda")).sum().backward()
    opt.step()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema, "epoch": 1}
    with tempfile.TemporaryDirectory(dir=args.save_dir) as out:
        path = os.path.join(out, "last.pth")
        t0 = time.perf_counter()
        checkpoint.atomic_save(state, path)
        seconds = time.perf_counter() - t0
        row = {
            "section": "save",
            "model": "resnest269",
            "seconds": round(seconds, 2),
            "gib": round(os.path.getsize(path) / 2**30, 2),
            "folder": args.save_dir or tempfile.gettempdir(),
        }
    print(json.dumps(row), flush=True)
    return [row]


def markdown(rows: list[dict]) -> str:
    """The rows as the markdown table of docs/benchmarks.md, one section per kind of row."""
    lines = [
        "| model | source | amp | layout | mode | per-step sync | images/s | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["section"] == "model":
            lines.append(
                f"| {r['model']} | {r['source']} | {r['amp']} | {r['layout']} | {r['mode']} | "
                f"{'yes' if r['per_step_sync'] else 'no'} | {r['images_per_sec']} | {r['peak_mem_gib']} |"
            )
    for r in rows:
        if r["section"] == "dali":
            lines.append(
                f"\nDALI GPU loader, AutoAugment {'on' if r['autoaugment'] else 'off'}: {r['images_per_sec']} images/s"
            )
        elif r["section"] == "e2e" and "error" not in r:
            lines.append(
                f"\ntrain.py end to end ({r['steps']} steps, ResNeSt-50 bf16 channels_last, synthetic): "
                f"{r['images_per_sec_epoch']} images/s over the epoch, {r['images_per_sec_steady']} steady, "
                f"data wait {100 * r['data_wait_share']:.1f}% of a step"
            )
        elif r["section"] == "save":
            lines.append(f"\nSaving a ResNeSt-269 checkpoint ({r['gib']} GiB) to {r['folder']}: {r['seconds']} s")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this benchmark's options to ``p`` (an argparse parser)."""
    p.add_argument("--batch", type=int, default=128, help="per-GPU batch (the recipe's)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (+3 when compiled)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dali-images", type=int, default=2560)
    p.add_argument("--e2e-steps", type=int, default=200)
    p.add_argument("--e2e-timeout", type=int, default=300)
    p.add_argument("--save-dir", default=None, help="folder for the checkpoint-save timing (default: the temp dir)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: model, dali, e2e, save")
    p.add_argument("--json", help="also write all rows here")


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); 2 without a CUDA GPU, else 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench_gpu needs a CUDA GPU; none is visible to PyTorch here.", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    skip = set(filter(None, args.skip.split(",")))
    print(
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}, {args.img_size} px",
        flush=True,
    )
    rows = []
    for name, section in (("model", model_rows), ("dali", dali_rows), ("e2e", e2e_row), ("save", save_row)):
        if name not in skip:
            rows += section(args)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
