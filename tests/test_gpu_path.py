"""The GPU path, checked on the CPU: CUDA availability faked where the device choice is the
question, CUDA autocast's float32 promotion emulated where the dtype is, torch's flags read
back where the backend settings are."""

import os
import warnings

import pytest
import torch

from helpers import ROOT, TINY
from resnest_train.config import TrainConfig
from resnest_train.config_loader import load_config
from resnest_train.data import build_loaders, dali_device
from resnest_train.distributed import pick_device
from resnest_train.engine import configure_backends
from resnest_train.errors import DataError
from resnest_train.models import DropBlock, create_model
from resnest_train.models.splat import SplitAttention

CONFIGS = os.path.join(ROOT, "configs")
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def gpu_machine(monkeypatch):
    """torch sees one CUDA GPU; the calls that would touch it are recorded instead."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    return calls


# ---------------------------------------------------------------------------------------
# Item 1: CPU configs and CPU tests stay on the CPU on a machine with a GPU
# ---------------------------------------------------------------------------------------


def test_dali_device_auto_follows_the_trainer():
    assert dali_device("auto", CPU) == "cpu"
    assert dali_device("auto", CUDA) == "gpu"
    assert dali_device("auto", "cuda") == "gpu"
    assert dali_device("cpu", CUDA) == "cpu" and dali_device("gpu", CPU) == "gpu"  # explicit choices stay


def test_quickstart_on_a_gpu_machine_decodes_on_the_cpu(gpu_machine, demo_root):
    pytest.importorskip("nvidia.dali")
    cfg = load_config(
        os.path.join(CONFIGS, "quickstart.yaml"),
        [f"data.root={demo_root}", "data.backend=dali", "data.train_crop=32", "data.dali.threads=1"],
    )
    assert cfg.device == "cpu" and cfg.data.dali.device == "auto"
    device = pick_device(cfg.device, local_rank=0)
    assert device == CPU and gpu_machine == []
    # Before: DALI took the GPU because CUDA was visible, and stopped with "data.dali.device=gpu
    # puts batches on the GPU but the trainer runs on cpu" (exit 2 of `make quickstart`).
    loaders = build_loaders(cfg.data, batch_size=4, device=device, seed=0)
    loaders.train.set_epoch(0)
    x, y = next(iter(loaders.train))
    assert x.device == CPU and x.shape == (4, 3, 32, 32) and y.device == CPU
    # An explicit gpu for a CPU trainer is still refused, naming the fix.
    cfg.data.dali.device = "gpu"
    with pytest.raises(DataError, match="data.dali.device=gpu puts batches on the GPU but the trainer runs on cpu"):
        build_loaders(cfg.data, batch_size=4, device=device, seed=0)


def test_a_cuda_trainer_gets_dali_on_the_gpu(gpu_machine, demo_root, monkeypatch):
    from resnest_train.data import dali

    seen = []

    def fake_build(cfg, *args):  # what the DALI backend is asked for, without building a GPU pipeline
        seen.append(cfg.dali.device)
        raise RuntimeError("stop here")

    monkeypatch.setattr(dali, "build", fake_build)
    cfg = load_config(os.path.join(CONFIGS, "quickstart.yaml"), [f"data.root={demo_root}", "data.backend=dali"])
    for trainer, expected in ((CUDA, "gpu"), (CPU, "cpu")):
        with pytest.raises(RuntimeError, match="stop here"):
            build_loaders(cfg.data, batch_size=4, device=trainer)
        assert seen.pop() == expected


def test_cpu_tests_stay_on_the_cpu_on_a_gpu_machine(gpu_machine):
    import test_distributed
    import test_launch

    # Before: TINY trained on cuda:0 when present (and the fp16-on-CPU test then passed fp16
    # through), and the 2-process tests called set_device(1) and picked NCCL on one GPU.
    for args, local_rank in ((TINY, 0), (test_distributed.exact("/data"), 1), (test_launch.TINY, 1)):
        cfg = load_config(None, args)
        assert pick_device(cfg.device, local_rank) == CPU
    assert gpu_machine == []  # no CUDA device was selected
    assert load_config(None, test_distributed.exact("/data")).dist.backend == "gloo"
    assert load_config(None, test_launch.TINY).dist.backend == "gloo"


# ---------------------------------------------------------------------------------------
# Items 5 and 7: cuDNN benchmark, TF32, deterministic algorithms
# ---------------------------------------------------------------------------------------


@pytest.fixture
def backends(monkeypatch):
    """Restores every process-wide flag configure_backends sets."""
    cudnn = torch.backends.cudnn
    saved = (
        cudnn.benchmark,
        cudnn.deterministic,
        cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_float32_matmul_precision(),
    )
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield cudnn
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = saved[:3]
    torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])
    torch.set_float32_matmul_precision(saved[5])


def test_backend_defaults_on_a_gpu(backends):
    assert TrainConfig().cudnn_benchmark and TrainConfig().tf32 and not TrainConfig().deterministic
    configure_backends(TrainConfig(), CUDA)
    assert backends.benchmark and not backends.deterministic and not torch.are_deterministic_algorithms_enabled()
    assert torch.get_float32_matmul_precision() == "high" and backends.allow_tf32
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_deterministic_overrides_benchmark(backends):
    configure_backends(TrainConfig(deterministic=True, cudnn_benchmark=True), CUDA)
    assert not backends.benchmark and backends.deterministic
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    configure_backends(TrainConfig(cudnn_benchmark=False), CUDA)
    assert not backends.benchmark and not backends.deterministic and not torch.are_deterministic_algorithms_enabled()


def test_tf32_off_and_cpu_runs_keep_full_fp32(backends):
    configure_backends(TrainConfig(tf32=False), CUDA)
    assert torch.get_float32_matmul_precision() == "highest" and not backends.allow_tf32
    configure_backends(TrainConfig(tf32=True, deterministic=True), CPU)  # oneDNN matmuls stay fp32
    assert torch.get_float32_matmul_precision() == "highest" and not backends.allow_tf32
    assert torch.backends.mkldnn.matmul.fp32_precision != "tf32"
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_deterministic_mode_trains_on_the_cpu_without_warnings(backends):
    configure_backends(TrainConfig(deterministic=True), CPU)
    torch.manual_seed(0)
    model = create_model("resnest14", num_classes=5, dropblock=dict(stages=[3, 4], prob=0.1)).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a nondeterministic op would warn (warn_only=True)
        model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    assert model.fc.weight.grad.abs().sum() > 0


def test_train_options_load_from_yaml_and_command_line():
    cfg = load_config(None, ["train.deterministic=true", "train.cudnn_benchmark=false", "train.tf32=false"])
    assert cfg.train.deterministic and not cfg.train.cudnn_benchmark and not cfg.train.tf32


@pytest.mark.parametrize("name", ["resnest50", "resnest101", "resnest200", "resnest269"])
def test_gpu_fast_on_top_of_a_model_config(name, tmp_path):
    model_cfg = os.path.join(CONFIGS, f"{name}.yaml")
    alone = load_config(model_cfg)
    assert (alone.train.amp, alone.train.channels_last, alone.train.compile) == ("none", False, False)
    assert "base/gpu_fast.yaml" in open(model_cfg).read()  # the model config names it
    mine = tmp_path / "fast.yaml"
    mine.write_text(f"base: [{model_cfg}, {os.path.join(CONFIGS, 'base', 'gpu_fast.yaml')}]\n")
    fast = load_config(str(mine))
    assert (fast.train.amp, fast.train.channels_last, fast.train.compile) == ("bf16", True, True)
    assert fast.model == alone.model and fast.data == alone.data and fast.optim == alone.optim
    assert fast.train.epochs == alone.train.epochs == 270


# ---------------------------------------------------------------------------------------
# Item 8: split attention keeps the input's dtype under CUDA-style autocast
# ---------------------------------------------------------------------------------------


@pytest.fixture
def cuda_autocast_promotion(monkeypatch):
    """sum and softmax as CUDA autocast runs them (its fp32_set_opt_dtype policy): in float32
    unless a dtype is given. CPU autocast leaves them alone, so without this a CPU test
    passes whatever the block does."""

    def promote(fn, dtype_pos):
        def wrapped(*args, **kwargs):
            given = kwargs.get("dtype") is not None or len(args) > dtype_pos
            if torch.is_autocast_enabled("cpu") and not given and args[0].is_floating_point():
                kwargs["dtype"] = torch.float32
            return fn(*args, **kwargs)

        return wrapped

    for owner in (torch, torch.Tensor):
        monkeypatch.setattr(owner, "sum", promote(owner.sum, dtype_pos=99))  # dtype is keyword-only
        monkeypatch.setattr(owner, "softmax", promote(owner.softmax, dtype_pos=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probe = torch.ones(4, 4, dtype=torch.bfloat16)
        assert probe.sum(0).dtype == probe.softmax(0).dtype == torch.float32  # the emulation is on
        assert probe.sum(0, dtype=probe.dtype).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "name, channels_last",
    [("resnest14", False), ("resnest14", True), ("resnest50_fast_4s2x40d", True), ("resnest50_fast_1s4x24d", False)],
)
def test_split_attention_stays_bf16_under_cuda_autocast(cuda_autocast_promotion, name, channels_last):
    torch.manual_seed(0)
    # zero_init_last=False: with zeroed bn3 gammas the blocks would not reach the logits
    model = create_model(name, num_classes=10, zero_init_last=False, layers=(1, 1, 1, 1)).eval()
    x = torch.randn(2, 3, 48, 48)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtypes = []
    for m in model.modules():
        if isinstance(m, SplitAttention):
            m.register_forward_hook(lambda mod, i, o: dtypes.append(o.dtype))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert dtypes[:4] == [torch.float32] * 4  # the fp32 pass
    assert dtypes[4:] == [torch.bfloat16] * 4  # before: float32 out of every block under CUDA autocast
    err = ((low.float() - ref).abs().max() / ref.abs().max()).item()
    assert err < 0.02, err  # bf16 keeps 8 mantissa bits; measured 0.3-0.7% through these 4 blocks


# ---------------------------------------------------------------------------------------
# Item 9: the DropBlock mask in the activation's memory format
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [3, 4])
def test_dropblock_mask_follows_channels_last(block_size):
    torch.manual_seed(0)
    db = DropBlock(0.2, block_size).train()
    x = torch.randn(2, 16, 14, 14).contiguous(memory_format=torch.channels_last)
    keep = db.keep_mask(x)
    assert keep.dtype == torch.float32 and keep.stride() == x.stride()  # NHWC strides, as x
    assert 0.05 < (keep == 0).float().mean().item() < 0.35
    y = db(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert db.keep_mask(x.contiguous()).is_contiguous()  # NCHW stays NCHW
    torch.manual_seed(1)
    expected = x * db.keep_mask(x)
    torch.manual_seed(1)
    torch.testing.assert_close(db(x), expected, rtol=0, atol=0)
