"""scripts/export.py: every model of the table exports (safetensors, exact) and folds every
BatchNorm correctly; TorchScript and ONNX within 1e-4 for each branch of the family, fused or
not; the command on a trained run; a check that fails writes nothing; mistakes stop with one
paragraph."""

import copy
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers import ROOT, env, metrics, slow_except
from resnest_train import export as ex
from resnest_train.errors import UserError
from resnest_train.models import create_model, list_models

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.jit.script is "deprecated"
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]  # the TorchScript ONNX exporter

SCRIPT = os.path.join(ROOT, "scripts", "export.py")
# One block per stage keeps these quick while covering every branch (as tests/test_models_export.py).
SMALL = {
    "resnest14": {},
    "resnet50d": dict(layers=(1, 1, 1, 1)),  # radix 0: conv2 + bn2
    "resnest50_fast_1s4x24d": dict(layers=(1, 1, 1, 1)),  # radix 1, cardinality 4
    "resnest50_fast_4s2x40d": dict(layers=(1, 1, 1, 1)),  # radix 4, avd first
}


def randomized(name, **overrides):
    """The model in eval mode with every residual branch on (no zero-init gamma) and every
    BatchNorm's statistics and affine parameters drawn at random, so folding a BatchNorm into
    the wrong conv, or not at all, changes the output."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, zero_init_last=False, **overrides).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def small(name):
    """``randomized`` with one block per stage, its logits scaled to a trained network's spread
    (standard deviation 5), for the float32 checks against TOLERANCE."""
    model = randomized(name, **SMALL[name])
    with torch.no_grad():
        model.fc.weight.mul_(5.0 / model(ex.random_batch(4, 32, seed=3)).std())
    return model


def info(name, arch=None):
    return {"model": name, "num_classes": 10, "arch": arch or {}, "img_size": 32, "source": name, "weights": "model"}


@pytest.mark.parametrize("name", slow_except(list_models(), fast={"resnest14"}))
def test_every_model_exports_to_safetensors_and_folds_every_batch_norm(name, tmp_path):
    model = randomized(name)
    out = str(tmp_path / f"{name}.safetensors")
    done = ex.export(model, info(name), ex.ExportRequest(path="", fmt="safetensors", out=out))
    assert done["max_abs_diff"] == 0.0 and os.path.getsize(out) == done["bytes"]
    assert os.listdir(tmp_path) == [f"{name}.safetensors"]  # no temporary file left
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(ex.conv_bn_pairs(model)) == norms  # every BatchNorm of ResNeSt follows a conv
    # The folding's algebra in float64, where rounding cannot hide a wrong pair: a deep random
    # network in float32 amplifies rounding differences with depth, a trained one (the export
    # check of test_onnx_of_a_trained_run_from_the_command_line) does not.
    model.double()
    fused = ex.fuse_bn(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = ex.random_batch(1, 32).double()
    with torch.no_grad():
        want = model(x)
        assert ex.max_abs_diff(fused(x), want) <= 1e-9 * float(want.abs().max())


def test_folding_takes_frozen_batch_norm_and_backbones():
    """A fine-tuned model's FrozenBatchNorm2d and a features_only body fold like the classifier."""
    from resnest_train.finetune import FrozenBatchNorm2d, freeze_batch_norm

    frozen = freeze_batch_norm(randomized("resnest14")).double()
    body = create_model("resnest14", features_only=True, out_indices=(0, 4))
    body.load_classifier_state_dict(randomized("resnest14").state_dict())
    body = body.eval().double()
    x = ex.random_batch(1, 64).double()
    for model in (frozen, body):
        fused = ex.fuse_bn(copy.deepcopy(model))
        assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in fused.modules())
        with torch.no_grad():
            want, got = model(x), fused(x)
        for w, g in zip(want if isinstance(want, list) else [want], got if isinstance(got, list) else [got]):
            assert ex.max_abs_diff(g, w) <= 1e-9 * float(w.abs().max())


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("fuse", [False, True])
def test_torchscript_export_of_every_branch(name, fuse, tmp_path):
    model = small(name)
    out = str(tmp_path / "model.pt")
    done = ex.export(model, info(name), ex.ExportRequest(path="", fmt="torchscript", out=out, fuse=fuse))
    assert done["max_abs_diff"] <= ex.TOLERANCE and done["fused_bn"] == fuse
    loaded = torch.jit.load(out)
    assert not fuse or "BatchNorm" not in str(loaded.inlined_graph)


@pytest.mark.parametrize("name", ["resnet50d", "resnest50_fast_4s2x40d"])
def test_onnx_torchscript_exporter_runs_in_onnxruntime(name, tmp_path):
    pytest.importorskip("onnxruntime")
    model = small(name)
    out = str(tmp_path / "model.onnx")
    done = ex.export(
        model, info(name), ex.ExportRequest(path="", fmt="onnx", out=out, exporter="torchscript", fuse=True)
    )
    assert done["max_abs_diff"] <= ex.TOLERANCE and done["check_batch"] == (3, 3, 32, 32)  # exported at batch 2


def run_script(*args):
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, env=env(), timeout=600
    )


@pytest.mark.slow
def test_onnx_of_a_trained_run_from_the_command_line(pretrained_run, tmp_path):
    """The README's command: torch's dynamo exporter, opset 18, BatchNorm fused, checked in onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = str(tmp_path / "model.onnx")
    result = run_script(pretrained_run, "--format", "onnx", "--out", out, "--fuse-bn")
    assert result.returncode == 0, result.stdout + result.stderr
    diff = float(
        re.search(r"max abs difference (\S+) vs the PyTorch model on a random batch 3x3x32x32", result.stdout).group(1)
    )
    assert diff <= 1e-4 and "ONNX opset 18 (dynamo exporter), dynamic batch" in result.stdout
    assert os.listdir(tmp_path) == ["model.onnx"]  # one file, weights inside
    assert [o.version for o in onnx.load(out).opset_import if o.domain in ("", "ai.onnx")] == [18]
    # a batch size the export never saw, against the checkpoint's own model
    saved = torch.load(os.path.join(pretrained_run, "checkpoints", "last.pth"), weights_only=True)
    model = create_model("resnest14", num_classes=10, stem_width=16, bottleneck_width=16).eval()
    model.load_state_dict(saved["model"])
    x = ex.random_batch(5, 32, seed=7)
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert ex.max_abs_diff(torch.from_numpy(got), model(x)) <= 1e-4


@pytest.mark.slow
def test_safetensors_export_loads_as_model_weights_and_evaluates_the_same(pretrained_run, shapes_root, tmp_path):
    out = str(tmp_path / "model.safetensors")
    result = run_script(pretrained_run, "--ema", "--format", "safetensors", "--out", out)
    assert result.returncode == 0 and "check: max abs difference 0 " in result.stdout, result.stdout + result.stderr
    import test_evaluate

    report = test_evaluate.evaluate(tmp_path, out, *test_evaluate.RUN_SETTINGS, f"data.root={shapes_root}")
    assert report["top1"] == metrics(pretrained_run)[-1]["val_top1_ema"]  # checkpoint.load reads safetensors


def test_a_failed_check_leaves_nothing(monkeypatch, tmp_path):
    model = small("resnest14")
    monkeypatch.setattr(ex, "run_torchscript", lambda path, x: model(x) + 1e-3)  # a broken export
    out = tmp_path / "model.pt"
    out.write_text("the previous file")
    with pytest.raises(UserError, match=r"does not reproduce the PyTorch model: max abs difference 0.001 > 0.0001"):
        ex.export(model, info("resnest14"), ex.ExportRequest(path="", fmt="torchscript", out=str(out)))
    assert out.read_text() == "the previous file" and os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--format", "safetensors", "--fuse-bn"], "--fuse-bn changes the layers"),
        (["--format", "onnx", "--img-size", "16"], "--img-size 16 is below 32 px"),
        (["--format", "torchscript", "BARE"], "is a bare state_dict: name its model with --model"),
        (["--format", "torchscript", "BARE", "--model", "resnest26"], "do not fit model 'resnest26'"),
    ],
)
def test_mistakes_stop_with_one_paragraph(args, expected, tmp_path, capsys):
    bare = str(tmp_path / "bare.pth")
    torch.save(create_model("resnest14", num_classes=3).state_dict(), bare)
    args = [bare if a == "BARE" else a for a in args]
    if bare not in args:
        args.append(bare)
    spec = importlib.util.spec_from_file_location("export_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([*args, "--out", str(tmp_path / "out.bin")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "out.bin")
