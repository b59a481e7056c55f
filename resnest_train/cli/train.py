"""`resnest-train` (and `train.py`): train a ResNeSt from a YAML config, the same under `python` and `torchrun`.

    resnest-train --config configs/quickstart.yaml train.epochs=2 data.root=data/demo
    python train.py --config configs/quickstart.yaml train.epochs=2 data.root=data/demo
    torchrun --nproc_per_node 8 train.py --config configs/resnest50.yaml data.root=/data/imagenet

Loading the config runs the pre-flight check (resnest_train/preflight.py): every key's type
and range, the rules across keys, and that the model builds; scripts/sweep.py runs the same.
"""

import argparse
import sys

from resnest_train.cli import exit_status
from resnest_train.config_loader import config_to_yaml, load_config


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line: --config, --print-config, --dry-run and section.key=value overrides."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (may inherit others with 'base:')")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="print world size, global batch, peak LR, steps, model size; then exit"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="override config keys; values are parsed as YAML"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 after training (or printing), 143 after a stop signal (the run saved and can resume), 2 for a
    mistake in the config or data (``UserError``: one paragraph on stderr, no traceback).
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def action() -> int:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(config_to_yaml(cfg), end="")
            return 0
        from resnest_train.engine import run

        return run(cfg, dry_run=args.dry_run)

    return exit_status(action)
