"""Evaluate a trained ResNeSt: top-1, top-5 and loss on a val set, as the trainer measures them.

    python scripts/evaluate.py runs/r50                                   # the run's last.pth, its val set
    python scripts/evaluate.py runs/r50 --best --ema --json r50.json      # best.pth, its EMA weights
    python scripts/evaluate.py runs/r50 data.root=/data/imagenet --crops 224,256,288,320
    python scripts/evaluate.py resnest50.pth model.name=resnest50 data.root=/data/imagenet --real real.json
    torchrun --nproc_per_node 8 scripts/evaluate.py runs/r50 --per-class  # every image once over the ranks

CHECKPOINT is a resnest-train checkpoint (its run's config gives the model and the data
settings), a bare state_dict in the official layout (give model.name=..., or --config), or
a run directory (its checkpoints/last.pth; --best: best.pth); --config configs/resnest101.yaml
gives a bare state_dict its model's crop and ratio. section.key=value overrides
change the config as in train.py (data.root, data.backend, train.batch_size, device ...).
The loaders, weight loading and reduction are the trainer's, so a run's own checkpoint gives
its metrics.jsonl values to the last digit (with the run's train.batch_size and process
count; others change the loss in its last digits). A val set given as data.val_list alone
needs no training split. Prints a line per crop and a markdown table; --json writes every
number, per class too. More: docs/after_training.md.
"""

import argparse
import sys

from resnest_train.cli import exit_status


def crop_list(text: str) -> list:
    try:
        crops = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected crops in pixels separated by commas, e.g. 224,256, got {text!r}"
        ) from None
    if not crops:
        raise argparse.ArgumentTypeError("expected at least one crop, e.g. 224,256")
    return crops


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT_OR_RUN_DIR",
        help="a resnest-train checkpoint, a bare state_dict, or a run directory",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides, e.g. data.root=/data/imagenet data.backend=torchvision",
    )
    p.add_argument("--config", default="", help="YAML config for a bare state_dict (model and data settings)")
    p.add_argument("--ema", action="store_true", help="the checkpoint's EMA weights instead of its model weights")
    p.add_argument("--best", action="store_true", help="with a run directory: checkpoints/best.pth, not last.pth")
    p.add_argument("--crop", type=int, help="eval crop in pixels (data.eval_crop); default: the config's")
    p.add_argument("--ratio", type=float, help="crop / resize ratio (data.eval_ratio); default: the config's")
    p.add_argument(
        "--crops",
        type=crop_list,
        default=[],
        metavar="N,N,...",
        help="a resolution sweep: one row per eval crop, each resized at the same ratio",
    )
    p.add_argument(
        "--per-class", action="store_true", help="per-class top-1 and the most confused (true, predicted) pairs"
    )
    p.add_argument(
        "--real",
        default="",
        metavar="FILE",
        help="ReaL accuracy from a relabel file: ImageNet-ReaL's real.json (one label list per val "
        "image) or a JSON object {file: [labels]}",
    )
    p.add_argument("--json", default="", metavar="FILE", help="write the report (every number) as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from resnest_train.evaluate import Request, run

    overrides = list(args.overrides)
    if args.crop is not None:
        if args.crops:
            print(
                "error: --crop and --crops exclude each other: --crops lists every crop to evaluate.", file=sys.stderr
            )
            return 2
        overrides.append(f"data.eval_crop={args.crop}")
    if args.ratio is not None:
        overrides.append(f"data.eval_ratio={args.ratio}")
    request = Request(
        path=args.checkpoint,
        overrides=overrides,
        config_file=args.config,
        use_ema=args.ema,
        best=args.best,
        crops=args.crops,
        per_class=args.per_class,
        relabel=args.real,
        json_path=args.json,
    )

    def action() -> int:
        run(request)
        return 0

    return exit_status(action)


if __name__ == "__main__":
    sys.exit(main())
