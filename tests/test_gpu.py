"""Checks that need a CUDA GPU: run by scripts/gpu_check.sh (`pytest -m gpu`), skipped elsewhere.

They cover what the CPU suite cannot prove: the CPU configs with a GPU visible, DALI's GPU
batches against its CPU decode, single-rank NCCL plumbing with DDP/SyncBN/channels_last/compile,
and fp16/bf16 runs with a SIGTERM and resume. GPU kernels (cuDNN, nvJPEG) are not bitwise
deterministic, so numbers are compared with tolerances, never for equality.
"""

import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

from helpers import ROOT, TINY, env, event_files, metrics, run_state, scalars, scalars_in, train, train_preempted

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU_TINY = [a for a in TINY if not a.startswith("device=")] + ["device=cuda"]


def dali_installed() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


needs_dali = pytest.mark.skipif(not dali_installed(), reason="nvidia-dali is not installed on this GPU machine")


# (a) CPU configs and CPU tests with a GPU visible ------------------------------------------------


def test_quickstart_config_trains_on_the_cpu_with_a_gpu_visible(demo_root, tmp_path):
    backend = "dali" if dali_installed() else "torchvision"
    result = train(
        "--config",
        os.path.join(ROOT, "configs", "quickstart.yaml"),
        f"data.root={demo_root}",
        f"data.backend={backend}",
        "data.train_crop=32",
        "train.batch_size=8",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        f"output.dir={tmp_path}",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (row,) = metrics(str(tmp_path))
    assert row["val_images"] == 24


def test_cpu_suite_essentials_pass_with_a_gpu_visible():
    """The CPU tests that a visible GPU used to break (device picks, fp16 refusal, gloo runs)."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-m",
        "not gpu",
        "-k",
        "fp16_on_cpu or sigterm_saves or two_processes_keep_identical",
        os.path.join(ROOT, "tests", "test_train.py"),
        os.path.join(ROOT, "tests", "test_distributed.py"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env(), timeout=400)
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


# (b) DALI on the GPU ---------------------------------------------------------------------------


def _dali_loaders(root, device_name, batch=8, channels_last=False, augment="none"):
    from resnest_train.config import DataConfig
    from resnest_train.data import build_loaders

    cfg = DataConfig(root=root, backend="dali", train_crop=32, eval_ratio=0.875, augment=augment)
    cfg.dali.device = device_name
    return build_loaders(cfg, batch_size=batch, device=torch.device("cuda"), channels_last=channels_last)


@needs_dali
def test_dali_gpu_batches_match_cpu_decode(demo_root):
    gpu, cpu = _dali_loaders(demo_root, "gpu", channels_last=True), _dali_loaders(demo_root, "cpu")
    gpu_batches, cpu_batches = list(gpu.val), list(cpu.val)
    assert len(gpu_batches) == len(cpu_batches)
    for (xg, yg), (xc, yc) in zip(gpu_batches, cpu_batches):
        assert xg.device.type == "cuda" and xg.dtype == torch.float32 and yg.dtype == torch.int64
        assert xg.is_contiguous(memory_format=torch.channels_last) and xg.shape == xc.shape
        assert yg.device.type == "cuda" and torch.equal(yg.cpu(), yc.cpu())
        diff = (xg.float() - xc.float()).abs()
        # nvJPEG/hardware decoding rounds its IDCT differently from libjpeg-turbo: a few levels
        # of 255 per pixel, i.e. about 0.02-0.05 after dividing by std ~0.225 * 255.
        assert diff.mean().item() < 0.03 and torch.quantile(diff.flatten(), 0.99).item() < 0.15


@needs_dali
def test_dali_gpu_reads_tar_shards_as_the_folder(demo_root, tmp_path):
    """Issue 15 on the GPU: shard bytes fed to the mixed decoder, the val shards through
    fn.readers.webdataset; the folder's labels in every batch, the folder's val images."""
    from resnest_train.data.shards import make_shards

    shards = str(tmp_path / "shards")
    make_shards(demo_root, shards, shard_size=10, progress=False)
    folder, sharded = _dali_loaders(demo_root, "gpu"), _dali_loaders(shards, "gpu")
    for loaders in (folder, sharded):
        loaders.train.set_epoch(1)
    for (_, ya), (xb, yb) in zip(folder.train, sharded.train):
        assert xb.device.type == "cuda" and yb.device.type == "cuda" and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(folder.val, sharded.val):
        assert yb.device.type == "cuda" and torch.equal(ya, yb)
        assert (xa - xb).abs().mean().item() < 0.03  # same bytes; allow the hardware / CUDA decoder split to differ


@needs_dali
def test_dali_gpu_batch_read_late_is_not_overwritten(demo_root):
    """A batch dropped by Python while torch's stream still has kernels reading it (issue 16, item 4)."""
    loaders = _dali_loaders(demo_root, "gpu")
    loaders.train.set_epoch(0)
    batches = iter(loaders.train)
    first, _ = next(batches)
    early = first.double().sum()  # queued on torch's stream before anything else
    torch.cuda._sleep(200_000_000)  # keep torch's stream busy (~0.1 s) so the next read is late
    late = first.double().sum()
    del first  # the loader and the test hold no reference now; only the queued kernels read it
    for _ in range(min(3, len(loaders.train) - 1)):  # meanwhile DALI makes more batches
        next(batches)
    assert late.item() == early.item()


@needs_dali
def test_dali_gpu_set_epoch_cycles_keep_build_time_and_memory_flat(demo_root):
    """Also measures what rebuilding the GPU pipelines cold every epoch costs (issue 16, item 9):
    the build time per epoch is reported in pytest's warnings summary (scripts/gpu_check.sh log)."""
    loaders = _dali_loaders(demo_root, "gpu", augment="autoaugment")
    times, used, build_s = [], [], []
    build = loaders.train.build_pipelines

    def timed_build(epoch):
        t0 = time.perf_counter()
        built = build(epoch)
        build_s.append(time.perf_counter() - t0)
        return built

    loaders.train.build_pipelines = timed_build
    for epoch in range(5):
        t0 = time.perf_counter()
        loaders.train.set_epoch(epoch)
        for _ in loaders.train:
            pass
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        free, total = torch.cuda.mem_get_info()
        used.append(total - free)
    warnings.warn(
        f"DALI GPU train pipelines rebuilt per epoch: build {[round(t, 3) for t in build_s]} s of epochs "
        f"{[round(t, 3) for t in times]} s ({len(loaders.train)} steps each)",
        stacklevel=1,
    )
    assert len(build_s) == 5
    assert max(times[1:]) < 3 * min(times[1:]) + 0.5, times
    assert used[-1] - used[1] < 256 * 2**20, [u / 2**20 for u in used]


# (c) single-rank NCCL plumbing -----------------------------------------------------------------


@pytest.fixture
def nccl_group():
    import torch.distributed as dist

    store = dist.PrefixStore("resnest_train/attempt_0", dist.HashStore())
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=torch.device("cuda", 0))
    yield dist
    dist.destroy_process_group()


def test_nccl_collectives_ddp_syncbn_channels_last_compile_accumulation(nccl_group):
    from torch import nn

    from resnest_train import distributed
    from resnest_train.models import create_model

    t = torch.ones(3, device="cuda")
    assert distributed.all_reduce_sum(t).tolist() == [1.0, 1.0, 1.0]
    assert distributed.broadcast_object(("last.pth", None)) == ("last.pth", None)
    assert distributed.all_gather_object((1, 0, 8)) == [(1, 0, 8)]
    torch.manual_seed(0)
    reference = create_model("resnest14", num_classes=10).cuda().to(memory_format=torch.channels_last)
    model = create_model("resnest14", num_classes=10).cuda().to(memory_format=torch.channels_last)
    model.load_state_dict(reference.state_dict())
    distributed.average_bn_stats(model)
    assert len(distributed.state_checksums(model)) == 1
    net = torch.compile(
        nn.parallel.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(model), device_ids=[0])
    )
    x = torch.randn(2, 8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (2, 8), device="cuda")
    for micro in range(2):  # accumulation: the first micro-batch without a gradient all-reduce
        with net.no_sync() if micro == 0 else torch.enable_grad():
            (nn.functional.cross_entropy(net(x[micro]), y[micro]) / 2).backward()
        (nn.functional.cross_entropy(reference(x[micro]), y[micro]) / 2).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-3, atol=2e-4, msg=name)


# (d) mixed-precision runs, SIGTERM and resume, memory -----------------------------------------


def test_fp16_scaler_clip_and_accumulation_run(tmp_path):
    train(
        *GPU_TINY,
        "train.epochs=1",
        "train.amp=fp16",
        "optim.clip_grad_norm=1.0",
        "train.accum_steps=2",
        f"output.dir={tmp_path}",
    )
    (row,) = metrics(str(tmp_path))
    assert row["train_loss"] == row["train_loss"] and 0 < row["train_loss"] < 10  # finite, not diverged
    saved = torch.load(os.path.join(tmp_path, "checkpoints", "last.pth"), weights_only=True)
    assert saved["scaler"] is not None and saved["scaler"]["scale"] > 0


BF16_OPTIONS = [
    "train.amp=bf16",
    "train.channels_last=true",
    "train.compile=true",
    "train.ema=true",
    "model.dropblock.prob=0.1",
    "model.dropblock.stages=[3,4]",
    "train.batch_size=8",
]


def test_bf16_compile_ema_dropblock_sigterm_and_resume_within_tolerance(tmp_path):
    full = str(tmp_path / "full")
    train(*GPU_TINY, *BF16_OPTIONS, f"output.dir={full}")
    out = str(tmp_path / "preempted")
    train_preempted(*GPU_TINY, *BF16_OPTIONS, f"output.dir={out}", at="epoch 1/2 step 3/8", timeout=300)
    assert run_state(out)["state"] == "preempted"
    train(*GPU_TINY, *BF16_OPTIONS, f"output.dir={out}")
    full_loss = scalars(os.path.join(full, "tb"), "train/loss")
    loss = scalars_in(event_files(out)[1:], "train/loss")
    assert loss and set(loss) <= set(full_loss)
    for step, value in loss.items():  # same data, LR and seeds; GPU kernels differ in the last bits
        assert value == pytest.approx(full_loss[step], rel=0.05, abs=0.02), step
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_top1_ema" in r for r in rows)


def test_training_memory_is_flat_over_steps():
    from resnest_train.models import create_model

    model = create_model("resnest14", num_classes=10, dropblock={"stages": [3, 4], "prob": 0.1}).cuda()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(16, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device="cuda")
    allocated = []
    for step in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step in (9, 29):
            torch.cuda.synchronize()
            allocated.append(torch.cuda.memory_allocated())
    assert allocated[1] - allocated[0] <= 2**20, allocated
