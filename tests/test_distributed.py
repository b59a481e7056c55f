"""Real multi-process training with torchrun and gloo on the CPU."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT, TINY, TRAIN, env, metrics, train

pytestmark = [pytest.mark.slow, pytest.mark.dist]  # torchrun with 2 processes


# Real JPEGs through the torchvision backend, whose global batches hold the same images for any
# world size. Mixup pairs images inside each process's batch, so it is off here.
def exact(root):
    return TINY + [
        "dist.backend=gloo",
        "data.backend=torchvision",
        f"data.root={root}",
        "data.workers=0",
        "train.mixup_alpha=0",
    ]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc=2, extra=(), timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra, TRAIN, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env())


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def final_weights(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoints", "last.pth"), weights_only=True)["model"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, demo_root):
    out = str(tmp_path_factory.mktemp("ddp"))
    finish(torchrun(*exact(demo_root), f"output.dir={out}", extra=["--standalone"]))
    return out


def test_two_processes_keep_identical_replicas(two_process_run):
    rows = metrics(two_process_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert len(r["weight_checksums"]) == 2 and r["weight_checksums"][0] == r["weight_checksums"][1]
        assert r["val_images"] == 24  # 12 per rank, each image once


def test_two_processes_match_one_process_with_the_same_global_batch(two_process_run, demo_root, tmp_path):
    # One process accumulating 2 x 8 sees the same images and the same BatchNorm groups of 8 as
    # two processes of 8: the training losses agree up to float summation order (rel 1e-5).
    # BN running statistics do not: one process updates them twice per step, two processes once
    # each and average them, so after 8 steps the validation loss agrees only to 10%.
    single = str(tmp_path / "single")
    train(*exact(demo_root), "train.accum_steps=2", f"output.dir={single}")
    two, one = metrics(two_process_run), metrics(single)
    assert len(two) == len(one) == 2
    for a, b in zip(two, one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=0.1)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    wa, wb = final_weights(two_process_run), final_weights(single)
    for k in wa:
        if wa[k].is_floating_point() and "running_" not in k:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_two_nodes_as_two_torchrun_agents(two_process_run, demo_root, tmp_path):
    out = str(tmp_path / "nodes")
    port = free_port()
    agents = [
        torchrun(
            *exact(demo_root),
            f"output.dir={out}",
            nproc=1,
            extra=["--nnodes=2", f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}"],
        )
        for rank in (0, 1)
    ]
    for agent in agents:
        finish(agent)
    # Two nodes of one process each compute exactly what one node of two processes does.
    assert [r["train_loss"] for r in metrics(out)] == [r["train_loss"] for r in metrics(two_process_run)]
    wa, wb = final_weights(out), final_weights(two_process_run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigkilled_worker_is_restarted_and_the_run_resumes(two_process_run, demo_root, tmp_path):
    out = str(tmp_path / "killed")
    agent = torchrun(
        *exact(demo_root), f"output.dir={out}", "output.save_every_steps=2", extra=["--standalone", "--max-restarts=1"]
    )
    last = os.path.join(out, "checkpoints", "last.pth")
    deadline = time.time() + 300
    while not os.path.exists(last) and time.time() < deadline and agent.poll() is None:
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", f"{TRAIN} .*output.dir={out}"], capture_output=True, text=True)
    pids = [int(p) for p in workers.stdout.split() if int(p) != agent.pid]
    assert pids, "no worker found to kill"
    os.kill(max(pids), signal.SIGKILL)
    output = finish(agent)
    assert "Resuming from" in output
    assert [r["epoch"] for r in metrics(out)] == [1, 2]
    wa, wb = final_weights(out), final_weights(two_process_run)
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, (differing[:5], output[-3000:])
