"""Print the model table: python -m resnest_train.models [--model NAME] [--img-size N] [--json]"""

import argparse
import json
import sys

import torch

from .info import model_info
from .resnest import ModelError, create_model, get_model_spec, list_models


def model_rows(names: list[str], img_size: int | None = None) -> list[dict]:
    """One dict per model: spec, params and GMACs at img_size (None: its default crop).

    Models are built on the meta device: nothing is allocated or computed."""
    rows = []
    for name in names:
        spec = get_model_spec(name)
        size = img_size or spec["default_crop"]
        with torch.device("meta"):
            info = model_info(create_model(name), size)
        rows.append(
            dict(
                name=name,
                layers=list(spec["layers"]),
                radix=spec["radix"],
                cardinality=spec["cardinality"],
                width=spec["bottleneck_width"],
                params_m=round(info["params"] / 1e6, 2),
                gmacs=round(info["gmacs"], 2),
                img_size=size,
                default_crop=spec["default_crop"],
            )
        )
    return rows


def format_table(rows: list[dict], img_size: int | None = None) -> str:
    """The rows as the markdown table of README's model section (params in M, GMACs). ResNeSt's
    width is its bottleneck width (``64d``); RegNetY's the stage widths, its cardinality
    ``w/16`` the width over the group width; MobileNetV2's ``x1.0``, its cardinality ``dw``."""
    at = f"at {img_size}px" if img_size else "at each model's default crop"
    head = ["model", "layers", "radix", "card.", "width", "params (M)", f"GMACs ({at})", "crop"]
    body = [
        [
            r["name"],
            "-".join(map(str, r["layers"])),
            str(r["radix"]),
            str(r["cardinality"]),
            f"{r['width']}d" if isinstance(r["width"], int) else r["width"],
            f"{r['params_m']:.2f}",
            f"{r['gmacs']:.2f}",
            str(r["default_crop"]),
        ]
        for r in rows
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns 0, or 2 for an unknown model."""
    parser = argparse.ArgumentParser(
        prog="python -m resnest_train.models", description="Parameters and multiply-adds of the model zoo."
    )
    parser.add_argument("--model", help=f"one of: {', '.join(list_models())} (default: all)")
    parser.add_argument("--img-size", type=int, help="input size for GMACs (default: each model's crop)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)
    try:
        rows = model_rows([args.model] if args.model else list_models(), args.img_size)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, args.img_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
