"""scripts/gpu_check.sh and the GPU tests, as far as a machine without a GPU can check them."""

import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, env

SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def gpu_test_names():
    """The test functions defined in tests/test_gpu.py (every one must be collected under the gpu marker)."""
    import ast

    with open(os.path.join(ROOT, "tests", "test_gpu.py")) as f:
        tree = ast.parse(f.read())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0


@pytest.mark.slow
def test_gpu_tests_are_collected_under_the_gpu_marker():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            os.path.join(ROOT, "tests"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    collected = [line for line in result.stdout.splitlines() if "test_gpu.py::" in line]
    assert len(collected) == len(gpu_test_names()) == 10, result.stdout
    assert not [line for line in result.stdout.splitlines() if "::" in line and "test_gpu.py::" not in line]


@pytest.mark.slow
@no_gpu
def test_gpu_tests_skip_cleanly_without_a_gpu():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            os.path.join(ROOT, "tests", "test_gpu.py"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout
    assert f"{len(gpu_test_names())} skipped" in result.stdout and "passed" not in result.stdout


@pytest.mark.slow
@no_gpu
def test_gpu_check_and_bench_refuse_without_a_gpu(tmp_path):
    result = subprocess.run(["bash", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env(), timeout=120)
    assert result.returncode == 2 and "no CUDA GPU visible" in result.stderr
    bench = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "gpu"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert bench.returncode == 2 and "needs a CUDA GPU" in bench.stderr and "Traceback" not in bench.stderr


def test_gpu_table_formats_every_section():
    from resnest_train.cli import bench_gpu

    rows = [
        {
            "section": "model",
            "source": "ours",
            "model": "resnest50",
            "amp": "bf16",
            "layout": "channels_last",
            "mode": "compiled",
            "per_step_sync": False,
            "images_per_sec": 2500.0,
            "peak_mem_gib": 20.1,
        },
        {"section": "dali", "autoaugment": True, "images_per_sec": 6000.0},
        {
            "section": "e2e",
            "steps": 200,
            "images_per_sec_epoch": 2300.0,
            "images_per_sec_steady": 2400.0,
            "data_wait_share": 0.012,
        },
        {"section": "save", "model": "resnest269", "seconds": 3.2, "gib": 1.24, "folder": "/tmp"},
    ]
    text = bench_gpu.markdown(rows)
    assert "| resnest50 | ours | bf16 | channels_last | compiled | no | 2500.0 | 20.1 |" in text
    assert "AutoAugment on: 6000.0 images/s" in text and "data wait 1.2% of a step" in text
    assert "(1.24 GiB) to /tmp: 3.2 s" in text
    assert len(bench_gpu.MODEL_ROWS) == len(set(bench_gpu.MODEL_ROWS))
