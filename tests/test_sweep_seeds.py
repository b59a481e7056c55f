"""Sweeps with seeds: (configurations x seeds) runs, the mean and standard deviation over seeds in
the summary, and the PNG plots of ``scripts/sweep.py --plot``; the shipped study sweeps plan."""

import csv
import os
import statistics
import struct

import pytest
import yaml

from resnest_train import sweep as sw
from resnest_train.cli.sweep import main as sweep_main
from resnest_train.rundir import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "configs", "quickstart.yaml")
SWEEPS = os.path.join(ROOT, "configs", "sweeps")


def write_sweep(tmp_path, **spec):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "overrides": {"output.dir": str(tmp_path / "sw")}, **spec}))
    return str(path)


def test_seeds_cross_every_configuration():
    runs = sw.plan_runs({"grid": {"model.radix": [1, 2]}, "seeds": [0, 7]}, "root")
    assert [r.name for r in runs] == ["radix1_seed0", "radix1_seed7", "radix2_seed0", "radix2_seed7"]
    assert [r.group for r in runs] == ["radix1", "radix1", "radix2", "radix2"]
    assert [r.overrides["train.seed"] for r in runs] == [0, 7, 0, 7]
    assert runs[3].overrides["output.dir"] == os.path.join("root", "radix2_seed7")
    assert runs[3].varying == {"model.radix": 2}  # the seed is a column of its own
    plain = sw.plan_runs({"grid": {"model.radix": [1, 2]}}, "root")
    assert [(r.name, r.group, r.seed) for r in plain] == [("radix1", "radix1", None), ("radix2", "radix2", None)]


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"seeds": [0, 0]}, r"'seeds' in the sweep must be a list of distinct ints >= 0, e\.g\. seeds: \[0, 1, 2\]"),
        ({"seeds": 3}, "must be a list of distinct ints"),
        ({"seeds": [-1]}, "must be a list of distinct ints"),
        ({"seeds": [0], "grid": {"train.seed": [1, 2]}}, "sets train.seed in 'overrides', 'grid' or 'runs' and also"),
        ({"seeds": [0], "overrides": {"train.seed": 4}}, "keep one of the two"),
    ],
)
def test_bad_seeds_are_refused(spec, message):
    with pytest.raises(sw.SweepError, match=message):
        sw.plan_runs(spec, "root")


def fake_run(run, top1, losses, state="finished"):
    """What a trainer leaves: metrics.jsonl (one row per epoch) and run_state.json."""
    d = RunDir(run.output_dir)
    os.makedirs(run.output_dir, exist_ok=True)
    for epoch, (t, loss) in enumerate(zip(top1, losses), 1):
        d.append_metrics({"epoch": epoch, "val_top1": t, "train_loss": loss, "images_per_sec": 10.0})
    d.write_run_state(state=state, epoch=len(top1), epochs=len(top1), best_top1=max(top1))


def test_summary_has_mean_and_std_over_seeds_and_the_plots_are_pngs(tmp_path, capsys):
    path = write_sweep(tmp_path, runs=[{"name": "a"}, {"name": "b", "model.radix": 1}], seeds=[0, 1, 2])
    sweep = sw.load_sweep(path)
    finals = {"a": [60.0, 64.0, 62.5], "b": [70.0, 71.5, 69.0]}
    for run in sweep.runs:
        if run.name == "b_seed2":
            fake_run(run, [50.0], [2.0], state="running")  # unfinished: left out of the mean
            continue
        final = finals[run.group][run.seed]
        fake_run(run, [final - 20.0, final], [2.1, 1.9 - run.seed / 10])

    assert sweep_main([path, "--summary", "--plot"]) == 0
    out = capsys.readouterr().out
    assert "runs: 2 configurations x seeds: 3" in out
    assert f"| a | - | 3/3 | {62.17:.2f} ± {statistics.stdev(finals['a']):.2f} |" in out
    assert f"| b | 1 | 2/3 | 70.75 ± {statistics.stdev([70.0, 71.5]):.2f} |" in out
    assert "| a_seed1 | - | 1 | finished | 2/2 | 64.00 | 1.8000 | 10.0 |" in out
    rows = list(csv.DictReader(open(os.path.join(sweep.root, "summary_seeds.csv"))))
    assert [(r["config"], r["seeds"], r["n"]) for r in rows] == [("a", "3", "3"), ("b", "3", "2")]
    assert float(rows[0]["final_val_top1_mean"]) == pytest.approx(statistics.fmean(finals["a"]))
    assert float(rows[0]["final_val_top1_std"]) == pytest.approx(statistics.stdev(finals["a"]))
    assert float(rows[1]["final_train_loss_mean"]) == pytest.approx((1.9 + 1.8) / 2)
    every = [(r["run"], r["seed"]) for r in csv.DictReader(open(os.path.join(sweep.root, "summary.csv")))]
    # best val top-1 first (the unfinished b_seed2's 50.0 last)
    assert every == [
        ("b_seed1", "1"),
        ("b_seed0", "0"),
        ("a_seed1", "1"),
        ("a_seed2", "2"),
        ("a_seed0", "0"),
        ("b_seed2", "2"),
    ]

    for name in ("curves.png", "final_top1.png"):
        png = os.path.join(sweep.root, "plots", name)
        with open(png, "rb") as f:
            head = f.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert 300 < width < 1400 and 200 < height < 600, (name, width, height)  # small enough to commit


def test_plot_is_refused_with_print_and_without_metrics_draws_nothing(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"model.radix": [1, 2]})
    with pytest.raises(SystemExit) as e:
        sweep_main([path, "--print", "--plot"])
    assert e.value.code == 2 and "--plot draws what runs wrote" in capsys.readouterr().err
    assert sweep_main([path, "--summary", "--plot"]) == 0
    assert "Plots: no run has metrics yet" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "sw" / "plots")


@pytest.mark.parametrize(
    "name,runs",
    [
        ("dropblock_placement.yaml", 216),
        ("dropblock_placement_cpu.yaml", 15),
        ("splat_families.yaml", 18),
        ("splat_families_cpu.yaml", 12),
    ],
)
def test_study_sweeps_plan_and_pass_the_preflight_check(name, runs):
    sweep = sw.load_sweep(os.path.join(SWEEPS, name), ["data.root=data/demo"])
    assert len(sweep.runs) == runs and {r.seed for r in sweep.runs} == {0, 1, 2}
    if runs < 100:  # the full placement grid's 216 configs build fine too, but take a while
        epochs = sw.check(sweep)
        assert len(epochs) == runs
