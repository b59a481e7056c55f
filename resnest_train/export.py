"""Export trained weights for inference: ONNX, TorchScript or safetensors, each checked on the spot.

``scripts/export.py`` is the command. The model is built and loaded as ``scripts/evaluate.py``
does (``weights.py``: a checkpoint's own config, or ``model.name`` for a bare state_dict).
Every export is written to a temporary file, loaded back the way a user would load it
(onnxruntime; ``torch.jit.load``; ``safetensors.torch.load_file`` into a fresh
``create_model``) and run on a random float32 batch; the largest absolute difference from
the PyTorch model's logits is reported, and above ``TOLERANCE`` the export fails and no file
is left at ``--out``.

* ONNX: opset ``ONNX_OPSET`` (18: what torch's exporter targets by default, run by every
  onnxruntime since 1.14), a dynamic batch axis (checked with another batch size than the
  one exported), one file (weights inside; a model over 2 GB would need external data, no
  model of the table is). ``exporter="dynamo"`` is ``torch.onnx.export(dynamo=True)``,
  torch's maintained exporter; ``"torchscript"`` its older TorchScript-based one (faster to
  run, deprecated by torch).
* TorchScript: ``torch.jit.script`` (every branch of the model kept: radix, layout).
* safetensors: the state_dict (official key names) with the model's name, class count and
  architecture in the metadata; ``model.weights`` and ``scripts/evaluate.py`` read it.
* ``fuse_bn``: every BatchNorm folded into the conv before it (``torch.nn.utils.fusion.
  fuse_conv_bn_eval``) for ONNX and TorchScript; compared with the unfused model.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import engine
from .errors import UserError
from .finetune import FrozenBatchNorm2d
from .models import Bottleneck, ResNeSt, SplitAttention, create_model, get_model_spec
from .models.families import InvertedResidual, MobileNetV2, RegNetY, RegNetYBlock
from .models.features import ResNeStFeatures
from .models.resnest import arch_overrides
from .weights import inspect_weights, weights_config, weights_file

FORMATS = ("onnx", "torchscript", "safetensors")
ONNX_EXPORTERS = ("dynamo", "torchscript")
ONNX_OPSET = 18
TOLERANCE = 1e-4  # float32, absolute, on the logits
CHECK_BATCH = 2

# (conv, BatchNorm) attribute pairs where the BatchNorm takes the conv's output, per module type;
# a conv that is an nn.Sequential (the deep stem) ends in the conv. Sequential conv -> BN
# children (deep stem, shortcuts) are found in any Sequential.
CONV_BN = {
    ResNeSt: (("conv1", "bn1"),),
    ResNeStFeatures: (("conv1", "bn1"),),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    SplitAttention: (("conv", "bn0"), ("fc1", "bn1")),
    RegNetY: (("conv1", "bn1"),),
    MobileNetV2: (("conv1", "bn1"), ("conv_head", "bn_head")),
    RegNetYBlock: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    InvertedResidual: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}
BN_TYPES = (nn.BatchNorm2d, FrozenBatchNorm2d)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Names of every (Conv2d, BatchNorm) pair of a model of the zoo where the BatchNorm reads the conv's output."""
    pairs = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential):
            kids = list(module.named_children())
            pairs += [
                (prefix + a, prefix + b)
                for (a, ma), (b, mb) in zip(kids, kids[1:])
                if isinstance(ma, nn.Conv2d) and isinstance(mb, BN_TYPES)
            ]
        for conv_name, bn_name in CONV_BN.get(type(module), ()):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if isinstance(conv, nn.Sequential):
                conv_name, conv = f"{conv_name}.{len(conv) - 1}", conv[-1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, BN_TYPES):
                pairs.append((prefix + conv_name, prefix + bn_name))
    return pairs


def fuse_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of ``model`` (in eval mode) into its conv, in place: the conv gets
    the BN's scale and shift, the BN becomes an Identity. Returns ``model``."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for conv_name, bn_name in conv_bn_pairs(model):
        fused = fuse_conv_bn_eval(model.get_submodule(conv_name), model.get_submodule(bn_name))
        model.set_submodule(conv_name, fused)
        model.set_submodule(bn_name, nn.Identity())
    return model


def random_batch(batch: int, img_size: int, seed: int = 0) -> torch.Tensor:
    """A normalised-image-like float32 batch (standard normal), the same for a seed."""
    return torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


# ---------------------------------------------------------------------------------------
# Writers and checks: each writes `path` and returns the exported model's logits for `x`
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """torch.jit and the TorchScript ONNX exporter warn that they are deprecated, on every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def export_onnx(model: nn.Module, path: str, example: torch.Tensor, exporter: str = "dynamo") -> None:
    """Write ``model`` as ONNX (opset ONNX_OPSET, input "images" with a dynamic batch axis, output "logits")."""
    kw = (
        dict(dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False)
        if exporter == "dynamo"
        else dict(dynamo=False, dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    )
    with _quiet():
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=["images"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            verbose=False,
            **kw,
        )


def run_onnx(path: str, x: torch.Tensor) -> torch.Tensor:
    """``path``'s output for ``x`` in onnxruntime (CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def export_torchscript(model: nn.Module, path: str) -> None:
    with _quiet():
        torch.jit.save(torch.jit.script(model), path)


def run_torchscript(path: str, x: torch.Tensor) -> torch.Tensor:
    with _quiet():
        loaded = torch.jit.load(path, map_location="cpu").eval()
    with torch.no_grad():
        return loaded(x)


def safetensors_metadata(name: str, num_classes: int, arch: dict) -> dict:
    """The metadata safetensors keeps beside the tensors (strings only): enough to rebuild the model."""
    return {"format": "pt", "model": name, "num_classes": str(num_classes), "arch": json.dumps(arch, sort_keys=True)}


def export_safetensors(model: nn.Module, path: str, metadata: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=metadata)


def run_safetensors(path: str, x: torch.Tensor) -> torch.Tensor:
    """Rebuild the model from ``path``'s metadata, load its tensors strictly, run it on ``x``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    model = create_model(meta["model"], num_classes=int(meta["num_classes"]), **json.loads(meta["arch"])).eval()
    model.load_state_dict(load_file(path), strict=True)
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


@dataclass
class ExportRequest:
    """The command line of scripts/export.py."""

    path: str
    fmt: str
    out: str
    img_size: int | None = None  # None: the config's eval crop (a bare state_dict: the model's default crop)
    use_ema: bool = False
    fuse: bool = False
    model: str = ""  # model.name for a bare state_dict
    overrides: Sequence[str] = ()
    exporter: str = "dynamo"


def check_request(r: ExportRequest) -> None:
    """Refuse combinations that make no sense, before any work."""
    if r.fmt not in FORMATS:
        raise UserError(f"--format {r.fmt!r} is not one of {', '.join(FORMATS)}.")
    if r.exporter not in ONNX_EXPORTERS:
        raise UserError(f"--onnx-exporter {r.exporter!r} is not one of {', '.join(ONNX_EXPORTERS)}.")
    if r.fuse and r.fmt == "safetensors":
        raise UserError(
            "--fuse-bn changes the layers (BatchNorm folded into the convs), so the weights would no "
            "longer load into create_model: use it with --format onnx or torchscript."
        )
    if r.img_size is not None and r.img_size < 32:
        raise UserError(f"--img-size {r.img_size} is below 32 px: ResNeSt's total stride is 32.")
    if r.fmt == "onnx":
        needed = ("onnx", "onnxruntime") + (("onnxscript",) if r.exporter == "dynamo" else ())
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(
                f"--format onnx needs {', '.join(missing)}, which cannot be imported: pip install "
                f"{' '.join(missing)} (or pip install -e '.[export]')."
            )


def build_for_export(r: ExportRequest) -> tuple[nn.Module, dict]:
    """The eval-mode model of ``r.path`` and facts about it (name, classes, arch, img_size, source)."""
    path = weights_file(r.path)
    found = inspect_weights(path, r.use_ema)
    overrides = list(r.overrides)
    if r.model:
        if found.config is not None and r.model != found.config["model"]["name"]:
            raise UserError(
                f"--model {r.model}: {path} is a resnest-train checkpoint of "
                f"{found.config['model']['name']}; drop --model (its config names the model)."
            )
        overrides.append(f"model.name={r.model}")
    elif found.config is None:
        raise UserError(
            f"{path} is a bare state_dict: name its model with --model (e.g. --model resnest50; "
            "python -m resnest_train.models lists them)."
        )
    cfg = weights_config(found, overrides)
    model = engine.build_model(cfg, found.num_classes).eval()
    arch = arch_overrides(cfg.model)
    if found.config is not None:
        size = cfg.data.eval_crop or cfg.data.train_crop
    else:
        size = get_model_spec(cfg.model.name)["default_crop"]
    info = {
        "model": cfg.model.name,
        "num_classes": found.num_classes,
        "arch": arch,
        "img_size": r.img_size or size,
        "source": path,
        "weights": "ema" if r.use_ema else "model",
    }
    return model, info


def export(model: nn.Module, info: dict, r: ExportRequest) -> dict:
    """Write ``r.out`` in ``r.fmt`` from the eval-mode ``model`` and check it; returns what was done.

    Raises UserError when the exported model's logits differ from ``model``'s by more than
    TOLERANCE; ``r.out`` is then left as it was.
    """
    size = info["img_size"]
    example, check = random_batch(CHECK_BATCH, size), random_batch(CHECK_BATCH + 1, size, seed=1)
    with torch.no_grad():
        want = model(check)
    target = fuse_bn(copy.deepcopy(model)) if r.fuse else model
    folder = os.path.dirname(os.path.abspath(r.out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-export-", suffix=os.path.splitext(r.out)[1], dir=folder)
    os.close(fd)
    try:
        if r.fmt == "onnx":
            export_onnx(target, tmp, example, r.exporter)
            got = run_onnx(tmp, check)
            how = f"ONNX opset {ONNX_OPSET} ({r.exporter} exporter), dynamic batch, checked in onnxruntime"
        elif r.fmt == "torchscript":
            export_torchscript(target, tmp)
            got = run_torchscript(tmp, check)
            how = "TorchScript (torch.jit.script), checked with torch.jit.load"
        else:
            export_safetensors(target, tmp, safetensors_metadata(info["model"], info["num_classes"], info["arch"]))
            got = run_safetensors(tmp, check)
            how = "safetensors state_dict, checked by loading it into create_model"
        diff = max_abs_diff(got, want)
        if not diff <= TOLERANCE:  # also NaN
            raise UserError(
                f"The {r.fmt} export of {info['source']} does not reproduce the PyTorch model: max abs "
                f"difference {diff:.3g} > {TOLERANCE:g} on a random float32 batch of {check.shape[0]} "
                f"x {size} px. Nothing was written to {r.out}."
            )
        os.replace(tmp, r.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {
        "out": r.out,
        "format": r.fmt,
        "how": how,
        "fused_bn": r.fuse,
        "img_size": size,
        "check_batch": tuple(check.shape),
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "bytes": os.path.getsize(r.out),
        **{k: info[k] for k in ("model", "num_classes", "source", "weights")},
    }


def run(r: ExportRequest, emit=print) -> dict:
    """Check the request, build the model, export and check it, report; raises UserError."""
    check_request(r)
    torch.manual_seed(0)
    model, info = build_for_export(r)
    done = export(model, info, r)
    emit(
        f"{done['model']} ({done['num_classes']} classes, {done['weights']} weights of {done['source']}) -> "
        f"{done['out']}: {done['how']}{', BatchNorm fused' if done['fused_bn'] else ''}; "
        f"{done['bytes'] / 2**20:.1f} MiB"
    )
    emit(
        f"check: max abs difference {done['max_abs_diff']:.3g} vs the PyTorch model on a random batch "
        f"{'x'.join(map(str, done['check_batch']))} (limit {TOLERANCE:g})"
    )
    return done
