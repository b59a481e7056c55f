import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, env


@pytest.mark.slow
def test_benchmark_dispatches_to_the_models_section():
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "benchmark.py"),
            "models",
            "--batch",
            "2",
            "--img-size",
            "32",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--modes",
            "train",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    train = json.loads(result.stdout.strip().splitlines()[-1])["train"]
    assert train["ours_img_s"] > 0 and train["timm_img_s"] > 0
    assert abs(train["ratio"] - train["ours_img_s"] / train["timm_img_s"]) < 0.01  # values are rounded


def test_benchmark_without_a_section_shows_its_sections():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py")], capture_output=True, text=True, env=env()
    )
    assert result.returncode == 2 and "models" in result.stderr and "data" in result.stderr
