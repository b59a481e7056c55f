"""Export a trained ResNeSt to ONNX, TorchScript or safetensors, and check the export on the spot.

    python scripts/export.py runs/r50 --format onnx --out r50.onnx              # the run's last.pth
    python scripts/export.py runs/r50/checkpoints/best.pth --ema --format torchscript --out r50.pt --fuse-bn
    python scripts/export.py resnest50.pth --model resnest50 --format safetensors --out resnest50.safetensors

CHECKPOINT is a resnest-train checkpoint or run directory (its config names the model) or a
bare state_dict in the official layout (name the model with --model; architecture overrides
as model.key=value). The export is loaded back (onnxruntime, torch.jit.load, or
safetensors into create_model), run on a random float32 batch and compared with the PyTorch
model: the max abs difference is printed, and above 1e-4 the export fails (exit status 2)
and nothing is written. ONNX: opset 18, dynamic batch axis, input "images", output "logits".
"""

import argparse
import sys

from resnest_train.cli import exit_status
from resnest_train.export import FORMATS, ONNX_EXPORTERS, ExportRequest, run


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a resnest-train checkpoint or run directory, or a bare state_dict (with --model)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="model.key=value",
        help="architecture overrides for a bare state_dict, e.g. model.radix=4",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument(
        "--img-size",
        type=int,
        metavar="N",
        help="side of the example and check input in pixels (ONNX fixes it in the graph); default: "
        "the run's eval crop, or the model's default crop for a bare state_dict",
    )
    p.add_argument("--ema", action="store_true", help="the checkpoint's EMA weights instead of its model weights")
    p.add_argument("--fuse-bn", action="store_true", help="fold every BatchNorm into its conv (onnx, torchscript)")
    p.add_argument("--model", default="", metavar="NAME", help="the model of a bare state_dict, e.g. resnest50")
    p.add_argument(
        "--onnx-exporter",
        default="dynamo",
        choices=ONNX_EXPORTERS,
        help="torch.onnx.export(dynamo=True), torch's maintained exporter (default), or its older "
        "TorchScript-based one",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    request = ExportRequest(
        path=a.checkpoint,
        fmt=a.format,
        out=a.out,
        img_size=a.img_size,
        use_ema=a.ema,
        fuse=a.fuse_bn,
        model=a.model,
        overrides=a.overrides,
        exporter=a.onnx_exporter,
    )

    def action() -> int:
        run(request)
        return 0

    return exit_status(action)


if __name__ == "__main__":
    sys.exit(main())
