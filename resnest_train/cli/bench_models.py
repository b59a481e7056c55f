"""CPU/GPU throughput of our ResNeSt against timm's on the same weights, input and threads.

    python scripts/bench_models.py [--model resnest50] [--batch 16] [--img-size 224] ...
    python scripts/benchmark.py models ...   (same arguments)

Train step = forward + backward (+ zeroing grads), eval step = forward under no_grad.
The two models alternate repeat by repeat so drift in machine speed hits both alike;
reported numbers are medians over repeats, each repeat timing `--steps` steps.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from resnest_train.models import create_model

# Our name -> timm's name for the same architecture and state_dict layout.
TIMM_NAMES = {
    "resnet50d": "resnet50d",
    "resnest14": "resnest14d",
    "resnest26": "resnest26d",
    "resnest50": "resnest50d",
    "resnest101": "resnest101e",
    "resnest200": "resnest200e",
    "resnest269": "resnest269e",
    "resnest50_fast_4s2x40d": "resnest50d_4s2x40d",
    "resnest50_fast_1s4x24d": "resnest50d_1s4x24d",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this benchmark's options to ``parser`` (an argparse parser)."""
    parser.add_argument(
        "--model",
        default="resnest50",
        choices=sorted(TIMM_NAMES),
        help="our model name; compared with timm's equivalent",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each repeat")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels-last", action="store_true", help="both models and input NHWC")
    parser.add_argument("--modes", default="train,eval", help="comma list of train, eval")
    parser.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="wall clock, or this process's CPU time (robust to other load on a "
        "shared machine; use with --threads 1, CPU only)",
    )
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(model: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    if mode == "train":
        model.train()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
    else:
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model(x)

    return step


def _time(step: Callable[[], None], steps: int, warmup: int, device: torch.device, clock: Callable[[], float]) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    t = clock()
    for _ in range(steps):
        step()
    _sync(device)
    return clock() - t


def run(args: argparse.Namespace) -> dict:
    """Time ours against timm's model on the same weights and input; returns images/s per mode (medians)."""
    import timm

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.timer == "cpu" and device.type != "cpu":
        raise SystemExit("--timer cpu measures CPU time: use it with --device cpu")
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    torch.manual_seed(0)
    ref = timm.create_model(TIMM_NAMES[args.model])
    ours = create_model(args.model)
    ours.load_state_dict(ref.state_dict(), strict=True)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    ref.to(device, memory_format=fmt)
    ours.to(device, memory_format=fmt)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    x = x.contiguous(memory_format=fmt)

    result = dict(
        model=args.model,
        timm_model=TIMM_NAMES[args.model],
        device=str(device),
        torch=torch.__version__,
        timm=timm.__version__,
        threads=torch.get_num_threads(),
        batch=args.batch,
        img_size=args.img_size,
        steps=args.steps,
        repeats=args.repeats,
        channels_last=bool(args.channels_last),
        timer=args.timer,
    )
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in ("train", "eval"):
            raise SystemExit(f"--modes: unknown mode {mode!r}; use train and/or eval")
        steps = {"ours": _step_fn(ours, x, mode), "timm": _step_fn(ref, x, mode)}
        times = {"ours": [], "timm": []}
        for r in range(args.repeats):
            order = ("ours", "timm") if r % 2 == 0 else ("timm", "ours")
            for name in order:
                times[name].append(_time(steps[name], args.steps, args.warmup, device, clock))
        ips = {k: args.batch * args.steps / statistics.median(v) for k, v in times.items()}
        result[mode] = dict(
            ours_img_s=round(ips["ours"], 2),
            timm_img_s=round(ips["timm"], 2),
            ratio=round(ips["ours"] / ips["timm"], 3),
            ours_s=[round(t, 3) for t in times["ours"]],
            timm_s=[round(t, 3) for t in times["timm"]],
        )
    return result


def format_result(result: dict) -> str:
    """The result of ``run`` as a few lines of text: images/s of ours and timm's and their ratio."""
    lines = [
        f"{result['model']} vs timm {result['timm_model']} | device {result['device']} | "
        f"threads {result['threads']} | batch {result['batch']} | {result['img_size']}px | "
        f"channels_last {result['channels_last']} | {result['timer']} time | "
        f"median of {result['repeats']} repeats x {result['steps']} steps"
    ]
    for mode in ("train", "eval"):
        if mode in result:
            r = result[mode]
            lines.append(
                f"  {mode:5s}: ours {r['ours_img_s']:8.2f} img/s   timm {r['timm_img_s']:8.2f} img/s"
                f"   ratio ours/timm {r['ratio']:.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``): print the result; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result) if args.json else format_result(result))
    return 0
