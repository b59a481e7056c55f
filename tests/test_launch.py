"""launch.sh: the torchrun command it builds for one node, many nodes (env, flags, SLURM),
elastic restarts; arguments that reach train.py untouched; SIGTERM -> exit 143; and a
real 2-process CPU run of train.py."""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_SH = os.path.join(ROOT, "launch.sh")
TRAIN_PY = os.path.join(ROOT, "train.py")
CLEAN = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "PYTHON", "TRAIN_PY")


@pytest.fixture
def bin_dir(tmp_path):
    """A folder put first on PATH for fake nvidia-smi / scontrol; no GPU unless a test adds one."""
    d = tmp_path / "bin"
    d.mkdir()
    fake(d, "nvidia-smi", "exit 9")  # this machine's real nvidia-smi (if any) must not count
    return d


def fake(bin_dir, name, body):
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def launch(*args, bin_dir, env=None, **kwargs):
    base = {k: v for k, v in os.environ.items() if k not in CLEAN and not k.startswith("SLURM_")}
    base["PATH"] = f"{bin_dir}{os.pathsep}{base['PATH']}"
    return subprocess.run(
        ["bash", LAUNCH_SH, *args], env={**base, **(env or {})}, capture_output=True, text=True, **kwargs
    )


def dry_run(*args, **kwargs):
    result = launch("--dry-run", *args, **kwargs)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == result.stdout.count("a\nb") + 1
    return shlex.split(result.stdout)


TORCHRUN = ["python", "-m", "torch.distributed.run"]


def test_one_node_one_cpu_process_by_default(bin_dir):
    assert dry_run("configs/resnest50.yaml", "train.epochs=2", bin_dir=bin_dir) == [
        *TORCHRUN,
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "1",
        "--shutdown_timeout",
        "170",
        TRAIN_PY,
        "--config",
        "configs/resnest50.yaml",
        "train.epochs=2",
    ]


def test_overrides_are_separate_words_untouched(bin_dir):
    tricky = [
        "data.root=/data/image net",
        "output.dir=it's",
        'x.y="q" $HOME `id` ; | &',
        "z.w=[3, 4]",
        "e.f=",
        "g.h=a\nb",
    ]
    argv = dry_run("my config.yaml", *tricky, "--", "--print-config", bin_dir=bin_dir)
    assert argv[argv.index(TRAIN_PY) :] == [TRAIN_PY, "--config", "my config.yaml", *tricky, "--print-config"]


def test_all_local_gpus_and_nproc_override(bin_dir):
    fake(
        bin_dir,
        "nvidia-smi",
        'printf "GPU 0: H100 (UUID: a)\\nGPU 1: H100 (UUID: b)\\nGPU 2: H100 (UUID: c)\\nGPU 3: H100 (UUID: d)\\n"',
    )
    nproc = lambda argv: argv[argv.index("--nproc_per_node") + 1]  # noqa: E731
    assert nproc(dry_run("c.yaml", bin_dir=bin_dir)) == "4"
    assert nproc(dry_run("c.yaml", bin_dir=bin_dir, env={"CUDA_VISIBLE_DEVICES": "1,3"})) == "2"
    assert nproc(dry_run("--nproc", "3", "c.yaml", bin_dir=bin_dir)) == "3"
    assert nproc(dry_run("--nproc=2", "c.yaml", bin_dir=bin_dir)) == "2"


def test_multi_node_from_environment(bin_dir):
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29511"}
    assert dry_run("c.yaml", "train.epochs=1", "--nproc", "8", bin_dir=bin_dir, env=env) == [
        *TORCHRUN,
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--master_addr",
        "10.0.0.1",
        "--master_port",
        "29511",
        "--nproc_per_node",
        "8",
        "--shutdown_timeout",
        "170",
        TRAIN_PY,
        "--config",
        "c.yaml",
        "train.epochs=1",
    ]


def test_flags_win_over_environment(bin_dir):
    env = {"NNODES": "4", "NODE_RANK": "3", "MASTER_ADDR": "10.0.0.1"}
    argv = dry_run(
        "--nnodes",
        "2",
        "--node-rank",
        "0",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        "29600",
        "--nproc",
        "2",
        "c.yaml",
        bin_dir=bin_dir,
        env=env,
    )
    assert argv == [
        *TORCHRUN,
        "--nnodes",
        "2",
        "--node_rank",
        "0",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        "29600",
        "--nproc_per_node",
        "2",
        "--shutdown_timeout",
        "170",
        TRAIN_PY,
        "--config",
        "c.yaml",
    ]


def test_elastic_rendezvous_and_max_restarts(bin_dir):
    argv = dry_run(
        "--rdzv",
        "c10d",
        "--nnodes",
        "1:4",
        "--rdzv-endpoint",
        "head:29400",
        "--rdzv-id",
        "exp7",
        "--max-restarts",
        "3",
        "c.yaml",
        bin_dir=bin_dir,
    )
    assert argv == [
        *TORCHRUN,
        "--nnodes",
        "1:4",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "head:29400",
        "--rdzv_id",
        "exp7",
        "--nproc_per_node",
        "1",
        "--max_restarts",
        "3",
        "--shutdown_timeout",
        "170",
        TRAIN_PY,
        "--config",
        "c.yaml",
    ]
    # the endpoint defaults to MASTER_ADDR:MASTER_PORT
    argv = dry_run(
        "--rdzv", "c10d", "c.yaml", bin_dir=bin_dir, env={"NNODES": "2", "MASTER_ADDR": "head", "MASTER_PORT": "1234"}
    )
    assert argv[3:11] == [
        "--nnodes",
        "2",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "head:1234",
        "--rdzv_id",
        "resnest",
    ]
    # one node keeps the private standalone rendezvous, with restarts
    argv = dry_run("--max-restarts", "2", "c.yaml", bin_dir=bin_dir)
    assert argv[3:] == [
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "1",
        "--max_restarts",
        "2",
        "--shutdown_timeout",
        "170",
        TRAIN_PY,
        "--config",
        "c.yaml",
    ]


def test_shutdown_timeout_default_environment_and_flag(bin_dir):
    """torchrun SIGKILLs workers this many seconds after a SIGTERM; its own 30 s default can cut
    a large checkpoint short, so launch.sh passes 170 s (below SLURM's 180 s --signal warning)."""
    timeout = lambda argv: argv[argv.index("--shutdown_timeout") + 1]  # noqa: E731
    assert timeout(dry_run("c.yaml", bin_dir=bin_dir)) == "170"
    assert timeout(dry_run("c.yaml", bin_dir=bin_dir, env={"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"})) == "300"
    assert (
        timeout(
            dry_run(
                "--shutdown-timeout", "90", "c.yaml", bin_dir=bin_dir, env={"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}
            )
        )
        == "90"
    )
    assert timeout(dry_run("--shutdown-timeout=45", "c.yaml", bin_dir=bin_dir)) == "45"


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu-[07-08]"}


def test_slurm_allocation(bin_dir):
    fake(bin_dir, "scontrol", '[ "$1 $2 $3" = "show hostnames gpu-[07-08]" ] && printf "gpu-07\\ngpu-08\\n"')
    argv = dry_run("--nproc", "8", "c.yaml", bin_dir=bin_dir, env=SLURM)
    assert argv[3:13] == [
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--master_addr",
        "gpu-07",
        "--master_port",
        "29500",
        "--nproc_per_node",
        "8",
    ]
    argv = dry_run("--rdzv", "c10d", "--max-restarts", "1", "c.yaml", bin_dir=bin_dir, env=SLURM)
    assert argv[3:15] == [
        "--nnodes",
        "2",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "gpu-07:29500",
        "--rdzv_id",
        "4242",
        "--nproc_per_node",
        "1",
        "--max_restarts",
        "1",
    ]
    # explicit environment variables win over SLURM's
    argv = dry_run("c.yaml", bin_dir=bin_dir, env={**SLURM, "MASTER_ADDR": "10.1.1.1", "MASTER_PORT": "40000"})
    assert argv[3:11] == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.1.1.1", "--master_port", "40000"]
    # a one-node allocation is a plain single-node run
    argv = dry_run("c.yaml", bin_dir=bin_dir, env={**SLURM, "SLURM_NNODES": "1", "SLURM_NODEID": "0"})
    assert argv[3:6] == ["--standalone", "--nnodes", "1"]


@pytest.mark.skipif(
    any(os.access(os.path.join(d, "scontrol"), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)),
    reason="scontrol is installed",
)
def test_slurm_without_scontrol(bin_dir):
    for nodelist, first in [
        ("gpu-[07-08]", "gpu-07"),
        ("node[3,5-6]", "node3"),
        ("a1,b2", "a1"),
        ("solo", "solo"),
        ("x1,y[2-3]", "x1"),
    ]:
        argv = dry_run("c.yaml", bin_dir=bin_dir, env={**SLURM, "SLURM_JOB_NODELIST": nodelist})
        assert argv[argv.index("--master_addr") + 1] == first, nodelist


def test_python_from_environment(bin_dir):
    argv = dry_run("c.yaml", bin_dir=bin_dir, env={"PYTHON": "/opt/venv/bin/python"})
    assert argv[:3] == ["/opt/venv/bin/python", "-m", "torch.distributed.run"]


@pytest.mark.parametrize(
    "args, env, message",
    [
        ([], {}, "missing CONFIG"),
        (["c.yaml", "train"], {}, "'train' is not a key=value override"),
        (["--nnodes", "2", "c.yaml"], {}, "2 nodes need MASTER_ADDR"),
        (["--nnodes", "2", "c.yaml"], {"MASTER_ADDR": "h"}, "2 nodes need NODE_RANK"),
        (["c.yaml"], {"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, "NODE_RANK must be 0..1"),
        (["--nproc", "0", "c.yaml"], {}, "--nproc must be a positive integer"),
        (["--rdzv", "etcd", "c.yaml"], {}, "--rdzv must be static or c10d"),
        (["--nnodes", "1:2", "c.yaml"], {}, "needs --rdzv c10d"),
        (["--max-restarts", "x", "c.yaml"], {}, "--max-restarts must be an integer"),
        (["--shutdown-timeout", "3m", "c.yaml"], {}, "--shutdown-timeout must be a whole number of seconds, got '3m'"),
        (["c.yaml"], {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "-1"}, "--shutdown-timeout must be a whole number"),
        (["--gpus", "2", "c.yaml"], {}, "unknown option --gpus"),
        (["c.yaml", "--nproc"], {}, "--nproc needs a value"),
    ],
)
def test_user_errors_exit_2_with_a_message(bin_dir, args, env, message):
    result = launch("--dry-run", *args, bin_dir=bin_dir, env=env)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""


def test_help(bin_dir):
    result = launch("--help", bin_dir=bin_dir)
    assert result.returncode == 0 and result.stdout.startswith("Usage: launch.sh")
    for word in (
        "--nproc",
        "--nnodes",
        "--node-rank",
        "--master-addr",
        "--rdzv",
        "--max-restarts",
        "SLURM",
        "--shutdown-timeout",
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT",
        "--dry-run",
    ):
        assert word in result.stdout


# ---------------------------------------------------------------------------------------
# Real torchrun, a stand-in trainer
# ---------------------------------------------------------------------------------------

ECHO_TRAIN = textwrap.dedent("""\
    import json, os, signal, sys, time
    out = os.environ["ECHO_OUT"]
    rank = os.environ["RANK"]
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"argv": sys.argv[1:], "world": os.environ["WORLD_SIZE"]}, f)
    if os.environ.get("WAIT_FOR_TERM"):
        signal.signal(signal.SIGTERM, lambda *a: (open(f"{out}.{rank}.term", "w").close(), sys.exit(143)))
        time.sleep(60)
""")


@pytest.mark.dist
def test_arguments_reach_every_worker_unchanged(tmp_path, bin_dir):
    script = tmp_path / "echo_train.py"
    script.write_text(ECHO_TRAIN)
    words = ["data.root=/data/image net", "output.dir=it's", 'x.y="q" $HOME `id`', "z.w=[3, 4]"]
    env = {"TRAIN_PY": str(script), "ECHO_OUT": str(tmp_path / "argv"), "PYTHON": sys.executable}
    result = launch("--nproc", "2", "conf.yaml", *words, bin_dir=bin_dir, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"argv.{rank}").read_text())
        assert seen == {"argv": ["--config", "conf.yaml", *words], "world": "2"}


@pytest.mark.dist
def test_sigterm_reaches_the_workers_and_exits_143(tmp_path, bin_dir):
    script = tmp_path / "echo_train.py"
    script.write_text(ECHO_TRAIN)
    env = {"TRAIN_PY": str(script), "ECHO_OUT": str(tmp_path / "argv"), "PYTHON": sys.executable, "WAIT_FOR_TERM": "1"}
    base = {k: v for k, v in os.environ.items() if k not in CLEAN and not k.startswith("SLURM_")}
    base["PATH"] = f"{bin_dir}{os.pathsep}{base['PATH']}"
    proc = subprocess.Popen(
        ["bash", LAUNCH_SH, "--nproc", "2", "c.yaml"],
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    while not all((tmp_path / f"argv.{r}").exists() for r in (0, 1)):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    time.sleep(0.5)  # the workers install their handler right after writing the file
    proc.send_signal(signal.SIGTERM)  # to launch.sh alone, as a scheduler would
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert (tmp_path / "argv.0.term").exists() and (tmp_path / "argv.1.term").exists()


SLOW_SAVE = textwrap.dedent("""\
    import os, signal, sys, time
    out = os.environ["ECHO_OUT"]
    def save(*args):
        time.sleep(4)  # a checkpoint that takes 4 s to write
        open(out + ".saved", "w").close()
        sys.exit(143)
    signal.signal(signal.SIGTERM, save)
    open(out + ".ready", "w").close()
    time.sleep(60)
""")


@pytest.mark.slow
@pytest.mark.dist
def test_shutdown_timeout_is_the_time_workers_get_to_save(tmp_path, bin_dir):
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE)
    base = {k: v for k, v in os.environ.items() if k not in CLEAN and not k.startswith("SLURM_")}
    base["PATH"] = f"{bin_dir}{os.pathsep}{base['PATH']}"

    def preempt(seconds):
        out = tmp_path / f"t{seconds}"
        env = {**base, "TRAIN_PY": str(script), "ECHO_OUT": str(out), "PYTHON": sys.executable}
        proc = subprocess.Popen(
            ["bash", LAUNCH_SH, "--shutdown-timeout", str(seconds), "c.yaml"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.time() + 60
        while not os.path.exists(f"{out}.ready"):
            assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=60)
        assert proc.returncode == 143, log
        return os.path.exists(f"{out}.saved")

    assert not preempt(1)  # killed 1 s into its 4 s save
    assert preempt(20)  # given the time, the save completes


@pytest.mark.dist
def test_max_restarts_restarts_a_killed_worker(tmp_path, bin_dir):
    script = tmp_path / "dies_once.py"
    script.write_text(
        textwrap.dedent("""\
        import os, signal, sys
        attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
        if attempt == "0" and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        open(os.path.join(sys.argv[-1].split("=", 1)[1], f"rank{os.environ['RANK']}.attempt{attempt}"), "w").close()
    """)
    )
    env = {"TRAIN_PY": str(script), "PYTHON": sys.executable}
    result = launch(
        "--nproc", "2", "--max-restarts", "1", "c.yaml", f"output.dir={tmp_path}", bin_dir=bin_dir, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"rank0.attempt1", "rank1.attempt1"} <= set(os.listdir(tmp_path))
    assert "rank1.attempt0" not in os.listdir(tmp_path)
    # without restarts the same death fails the launch
    for name in os.listdir(tmp_path):
        if name.startswith("rank"):
            os.remove(tmp_path / name)
    result = launch("--nproc", "2", "c.yaml", f"output.dir={tmp_path}", bin_dir=bin_dir, env=env, timeout=120)
    assert result.returncode != 0 and "rank1.attempt1" not in os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------
# The real train.py: 2 CPU processes (gloo)
# ---------------------------------------------------------------------------------------

TINY = [
    "model.name=resnest14",
    "device=cpu",
    "dist.backend=gloo",
    "data.backend=synthetic",
    "data.synthetic.train_images=32",
    "data.synthetic.val_images=16",
    "data.synthetic.num_classes=10",
    "data.train_crop=32",
    "data.workers=0",
    "train.epochs=1",
    "train.batch_size=4",
    "train.max_steps_per_epoch=2",
    "optim.warmup_epochs=0",
    "output.log_every=1",
]


@pytest.mark.slow
@pytest.mark.dist
def test_two_cpu_processes_train_through_launch_sh(tmp_path, bin_dir):
    out = tmp_path / "run"
    result = launch(
        "--nproc",
        "2",
        os.path.join(ROOT, "configs", "resnest50.yaml"),
        *TINY,
        f"output.dir={out}",
        bin_dir=bin_dir,
        env={"PYTHON": sys.executable},
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = json.loads((out / "run_state.json").read_text())
    assert state["state"] == "finished" and state["epoch"] == state["epochs"] == 1
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["train_loss"] > 0 and 0 <= metrics[0]["val_top1"] <= 100
    assert (out / "checkpoints" / "last.pth").is_file()
    # the same command again: the run is finished, nothing trains
    again = launch(
        "--nproc",
        "2",
        os.path.join(ROOT, "configs", "resnest50.yaml"),
        *TINY,
        f"output.dir={out}",
        bin_dir=bin_dir,
        env={"PYTHON": sys.executable},
        cwd=tmp_path,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == metrics
