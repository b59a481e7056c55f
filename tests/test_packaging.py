"""The package's metadata: one version, console commands that resolve, scripts that are thin wrappers."""

import ast
import importlib
import os
import subprocess
import sys

import pytest

import resnest_train
from helpers import ROOT, env

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_version_has_one_source():
    meta = pyproject()
    assert meta["project"]["dynamic"] == ["version"] and "version" not in meta["project"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "resnest_train.__version__"}
    assert resnest_train.__version__ == "0.2.0.dev0"
    assert not os.path.exists(os.path.join(ROOT, "setup.cfg")) and not os.path.exists(os.path.join(ROOT, "setup.py"))


def test_console_commands_resolve_to_mains():
    scripts = pyproject()["project"]["scripts"]
    assert sorted(scripts) == [
        "resnest-benchmark",
        "resnest-evaluate",
        "resnest-export",
        "resnest-make-demo-data",
        "resnest-make-shards",
        "resnest-models",
        "resnest-prepare-imagenet",
        "resnest-sweep",
        "resnest-train",
    ]
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def wrapper_target(path):
    """The module whose main a wrapper script imports; fails if the file does more than that."""
    tree = ast.parse(open(path).read())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module.startswith("resnest_train")]
    assert len(imports) == 1 and [a.name for a in imports[0].names] == ["main"], path
    assert "sys.path" not in open(path).read(), path
    return imports[0].module


def test_scripts_are_thin_wrappers_of_package_modules():
    files = sorted(f for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py"))
    targets = {f: wrapper_target(os.path.join(ROOT, "scripts", f)) for f in files}
    assert targets == {
        "bench_data.py": "resnest_train.cli.bench_data",
        "bench_gpu.py": "resnest_train.cli.bench_gpu",
        "bench_models.py": "resnest_train.cli.bench_models",
        "bench_overhead.py": "resnest_train.cli.bench_overhead",
        "benchmark.py": "resnest_train.cli.benchmark",
        "evaluate.py": "resnest_train.cli.evaluate",
        "export.py": "resnest_train.cli.export",
        "make_demo_data.py": "resnest_train.data.demo",
        "make_shards.py": "resnest_train.cli.make_shards",
        "prepare_imagenet.py": "resnest_train.cli.prepare_imagenet",
        "sweep.py": "resnest_train.cli.sweep",
    }
    assert wrapper_target(os.path.join(ROOT, "train.py")) == "resnest_train.cli.train"


@pytest.mark.parametrize("script", ["train.py", "scripts/sweep.py"])
def test_a_wrapper_runs_its_main(script):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True, env=env(), timeout=120
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: "), result.stderr
