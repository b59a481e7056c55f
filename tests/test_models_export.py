"""Every code path of the model (radix 0, 1, 2, 4; cardinality > 1; avd first/last;
DropBlock) survives TorchScript, ONNX export and torch.compile with eager's logits."""

import io

import pytest
import torch

from resnest_train.models import create_model

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.jit.script is "deprecated"
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]  # the TorchScript ONNX exporter

# Small members of each family: one block per stage keeps export/compile quick while
# covering every branch a full-depth variant has.
SMALL = {
    "resnest14": {},
    "resnet50d": dict(layers=(1, 1, 1, 1)),  # radix 0: plain conv2 + bn2
    "resnest50_fast_1s4x24d": dict(layers=(1, 1, 1, 1)),  # radix 1: sigmoid gate, K=4
    "resnest50_fast_4s2x40d": dict(layers=(1, 1, 1, 1)),  # radix 4, K=2, avd first
}


def small(name, **kw):
    torch.manual_seed(0)
    return create_model(name, num_classes=10, zero_init_last=False, **SMALL[name], **kw).eval()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_torchscript_matches_eager(name):
    m = small(name, dropblock=dict(prob=0.1))
    scripted = torch.jit.script(m)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), m(x), rtol=1e-5, atol=1e-6)
    scripted.train()
    assert scripted(x).shape == (2, 10)  # DropBlock's train path scripts too


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,dynamo",
    [("resnest50_fast_4s2x40d", True), ("resnest14", False), ("resnet50d", False), ("resnest50_fast_1s4x24d", False)],
)
def test_onnx_export_runs_in_onnxruntime(name, dynamo):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    m = small(name)
    x = torch.randn(2, 3, 64, 64)
    f = io.BytesIO()
    kw = (
        dict(dynamic_shapes={"x": {0: torch.export.Dim("batch")}}) if dynamo else dict(dynamic_axes={"x": {0: "batch"}})
    )
    torch.onnx.export(m, (x,), f, input_names=["x"], output_names=["logits"], dynamo=dynamo, **kw)
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, 64, 64)  # another batch size: the batch axis is dynamic
    (got,) = sess.run(None, {"x": x3.numpy()})
    with torch.no_grad():
        want = m(x3)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    import torch._dynamo

    torch._dynamo.reset()
    m = small("resnest14")
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(m, fullgraph=True)  # fullgraph: no graph breaks anywhere
    with torch.no_grad():
        want = m(x)
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow
def test_torch_compile_train_step_fullgraph_with_dropblock():
    import torch._dynamo

    torch._dynamo.reset()
    m = small("resnest50_fast_4s2x40d", dropblock=dict(stages=[3, 4], prob=0.1)).train()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    compiled(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    torch._dynamo.reset()
