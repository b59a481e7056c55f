"""Sweeps: expanding a sweep file into named runs, the commands they get, checking every
config first, running through launch.sh (a fake trainer for the bookkeeping, the real
train.py for the end-to-end run), skipping finished runs, and the summary."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

import helpers
from resnest_train import sweep as sw
from resnest_train.rundir import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_PY = os.path.join(ROOT, "scripts", "sweep.py")
LAUNCH_SH = os.path.join(ROOT, "launch.sh")
SWEEPS = os.path.join(ROOT, "configs", "sweeps")
BASE = os.path.join(ROOT, "configs", "resnest50.yaml")


def write_sweep(path, spec):
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def sweep_cli(*args, cwd, env=None, timeout=300):
    full_env = {**helpers.env(), **(env or {})}
    return subprocess.run(
        [sys.executable, SWEEP_PY, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------------------------
# Expansion: pure functions, exact lists
# ---------------------------------------------------------------------------------------


def test_expand_crosses_grid_with_runs_over_overrides():
    got = sw.expand(
        overrides={"train.epochs": 2, "model.radix": 9},
        grid={"model.radix": [1, 2], "train.seed": [0, 1]},
        runs=[{"model.cardinality": 1}, {"model.cardinality": 2, "train.epochs": 3}],
    )
    assert got == [
        {"train.epochs": 2, "model.radix": 1, "train.seed": 0, "model.cardinality": 1},
        {"train.epochs": 3, "model.radix": 1, "train.seed": 0, "model.cardinality": 2},
        {"train.epochs": 2, "model.radix": 1, "train.seed": 1, "model.cardinality": 1},
        {"train.epochs": 3, "model.radix": 1, "train.seed": 1, "model.cardinality": 2},
        {"train.epochs": 2, "model.radix": 2, "train.seed": 0, "model.cardinality": 1},
        {"train.epochs": 3, "model.radix": 2, "train.seed": 0, "model.cardinality": 2},
        {"train.epochs": 2, "model.radix": 2, "train.seed": 1, "model.cardinality": 1},
        {"train.epochs": 3, "model.radix": 2, "train.seed": 1, "model.cardinality": 2},
    ]
    assert sw.expand({"a.b": 1}, {}, []) == [{"a.b": 1}]
    assert sw.expand({}, {"a.b": [1, 2]}, []) == [{"a.b": 1}, {"a.b": 2}]
    assert sw.expand({}, {}, [{"a.b": 1}, {"c.d": 2}]) == [{"a.b": 1}, {"c.d": 2}]


def test_plan_names_and_output_dirs():
    spec = {
        "overrides": {"train": {"epochs": 2}, "output.dir": "ignored/here"},
        "grid": {"model.radix": [1, 2]},
        "runs": [
            {"model.cardinality": 1, "model.bottleneck_width": 64},
            {"model.cardinality": 2, "model.bottleneck_width": 40},
        ],
    }
    runs = sw.plan_runs(spec, root="runs/abl")
    assert [r.name for r in runs] == [
        "radix1_cardinality1_bottleneck_width64",
        "radix1_cardinality2_bottleneck_width40",
        "radix2_cardinality1_bottleneck_width64",
        "radix2_cardinality2_bottleneck_width40",
    ]
    assert [r.output_dir for r in runs] == [os.path.join("runs/abl", r.name) for r in runs]
    assert runs[1].overrides == {
        "train.epochs": 2,
        "model.radix": 1,
        "model.cardinality": 2,
        "model.bottleneck_width": 40,
        "output.dir": "runs/abl/radix1_cardinality2_bottleneck_width40",
    }
    assert runs[1].varying == {"model.radix": 1, "model.cardinality": 2, "model.bottleneck_width": 40}
    assert sw.override_args(runs[1]) == [
        "train.epochs=2",
        "model.radix=1",
        "model.cardinality=2",
        "model.bottleneck_width=40",
        "output.dir=runs/abl/radix1_cardinality2_bottleneck_width40",
    ]


def test_names_are_readable_safe_and_unique():
    runs = sw.plan_runs(
        {
            "runs": [
                {"model.dropblock.prob": 0.1, "train.amp": "bf16", "data.root": "/data/image net"},
                {"model.dropblock.prob": 0.0, "train.amp": "none", "data.root": "/data/image net"},
                {"model.dropblock.stages": [3, 4], "train.ema": True},
                {"model.dropblock.stages": [4], "train.ema": False, "optim.weight_decay": 5.0e-5},
                {"name": "baseline", "model.name": "resnet50d"},
                {"data.root": "/data/image net", "model.dropblock.prob": 0.1, "train.amp": "bf16", "train.seed": 1},
            ]
        },
        root="r",
    )
    assert [r.name for r in runs] == [
        "prob0.1_amp-bf16_root-data-image-net",
        "prob0.0_amp-none_root-data-image-net",
        "stages-3-4_ema-true",
        "stages-4_ema-false_weight_decay5e-05",
        "baseline",
        "prob0.1_amp-bf16_root-data-image-net_seed1",
    ]
    # a shared last part is told apart by one more part of the key
    assert sw.short_keys(["model.dropblock.prob", "train.mixup_prob", "data.prob"]) == {
        "model.dropblock.prob": "dropblock.prob",
        "train.mixup_prob": "mixup_prob",
        "data.prob": "data.prob",
    }
    # names that collide after cleaning get a suffix
    runs = sw.plan_runs({"grid": {"data.root": ["a/b", "a b", "a:b"]}}, root="r")
    assert [r.name for r in runs] == ["root-a-b", "root-a-b-2", "root-a-b-3"]
    assert sw.plan_runs({"overrides": {"train.epochs": 1}}, root="r")[0].name == "run"


@pytest.mark.parametrize(
    "value",
    [
        1,
        0,
        -3,
        0.1,
        1e-05,
        2.5e10,
        True,
        False,
        None,
        "",
        "2",
        "1e-4",
        "true",
        "null",
        "a b",
        "it's",
        'say "hi"',
        "x: y",
        "- a",
        "#c",
        "[1]",
        " pad ",
        "/data/imagenet",
        [3, 4],
        [],
        ["bn1", "splat"],
        [[3, 4], [4]],
        [0.08, 1.0],
    ],
)
def test_format_value_round_trips_through_yaml(value):
    text = sw.format_value(value)
    parsed = yaml.safe_load(text) if text != "" else ""
    assert parsed == value and type(parsed) is type(value)


def test_plan_errors_are_clear():
    with pytest.raises(sw.SweepError, match="non-empty list"):
        sw.plan_runs({"grid": {"model.radix": 2}}, root="r")
    with pytest.raises(sw.SweepError, match="non-empty list"):
        sw.plan_runs({"grid": {"model.radix": []}}, root="r")
    with pytest.raises(sw.SweepError, match="output.dir"):
        sw.plan_runs({"grid": {"output.dir": ["a", "b"]}}, root="r")
    with pytest.raises(sw.SweepError, match="same settings"):
        sw.plan_runs({"runs": [{"train.seed": 1}, {"train.seed": 1}]}, root="r")
    with pytest.raises(sw.SweepError, match="used by 2 runs"):
        sw.plan_runs({"grid": {"train.seed": [0, 1]}, "runs": [{"name": "x"}]}, root="r")


def test_shipped_radix_cardinality_sweep():
    sweep = sw.load_sweep(os.path.join(SWEEPS, "radix_cardinality.yaml"))
    expected = [
        f"radix{r}_cardinality{c}_bottleneck_width{w}" for r in (1, 2, 4) for c, w in ((1, 64), (2, 40), (4, 24))
    ]
    assert [r.name for r in sweep.runs] == expected
    assert sweep.root == os.path.join("runs", "radix_cardinality")
    assert [r.output_dir for r in sweep.runs] == [os.path.join(sweep.root, n) for n in expected]
    assert sweep.varying_keys == ["model.radix", "model.cardinality", "model.bottleneck_width"]
    assert all(r.overrides["model.name"] == "resnest50_fast_2s1x64d" for r in sweep.runs)
    assert os.path.samefile(sweep.config, BASE)  # (test_dry_run checks every config and model)


def test_load_sweep_errors(tmp_path):
    cases = [
        ({"grid": {"model.radix": [1]}}, "needs 'base: CONFIG'"),
        ({"base": "nope.yaml"}, "does not exist"),
        ({"base": BASE, "grd": {"model.radix": [1]}}, "unknown top-level key"),
        ({"base": BASE, "launch": {"gpus": 8}}, "'launch' in .* may set nproc"),
        ({"base": BASE, "name": "a b"}, "use letters, digits"),
    ]
    for spec, message in cases:
        with pytest.raises(sw.SweepError, match=message):
            sw.load_sweep(write_sweep(tmp_path / "s.yaml", spec))
    (tmp_path / "bad.yaml").write_text("base: [unclosed\n")
    with pytest.raises(sw.SweepError, match="not valid YAML at line"):
        sw.load_sweep(str(tmp_path / "bad.yaml"))


def test_sweep_root_name_base_and_extra_overrides(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(f"base: {BASE}\n")
    path = write_sweep(
        tmp_path / "my_sweep.yaml",
        {"base": "configs/tiny.yaml", "grid": {"train.seed": [0, 1]}, "launch": {"nproc": 2, "max_restarts": 3}},
    )
    sweep = sw.load_sweep(path)
    assert sweep.name == "my_sweep" and sweep.root == os.path.join("runs", "my_sweep")
    assert sweep.config == str(tmp_path / "configs" / "tiny.yaml")
    sweep = sw.load_sweep(path, ["output.dir=/scratch/x", "data.root=/d"])
    assert sweep.root == "/scratch/x"
    assert sweep.runs[1].overrides == {"data.root": "/d", "train.seed": 1, "output.dir": "/scratch/x/seed1"}
    assert sw.launch_argv(sweep, sweep.runs[1], launch_sh="L") == [
        "L",
        "--nproc",
        "2",
        "--max-restarts",
        "3",
        sweep.config,
        "data.root=/d",
        "train.seed=1",
        "output.dir=/scratch/x/seed1",
    ]


# ---------------------------------------------------------------------------------------
# The CLI: --print, --dry-run, checking before anything runs
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_print_gives_one_shell_quoted_command_per_run(tmp_path):
    values = ["/data/image net", "it's", 'a "b" $HOME `x` \\ ;|&']
    path = write_sweep(
        tmp_path / "q.yaml",
        {
            "base": BASE,
            "overrides": {"output.dir": str(tmp_path / "root dir"), "model.dropblock.stages": [3, 4]},
            "grid": {"data.root": values},
            "launch": {"nproc": 2},
        },
    )
    result = sweep_cli(path, "--print", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sweep = sw.load_sweep(path)
    assert [shlex.split(line) for line in lines] == [sw.launch_argv(sweep, run) for run in sweep.runs]
    root = str(tmp_path / "root dir")
    assert shlex.split(lines[0]) == [
        "./launch.sh",
        "--nproc",
        "2",
        BASE,
        "model.dropblock.stages=[3, 4]",
        "data.root=/data/image net",
        f"output.dir={root}/root-data-image-net",
    ]
    assert shlex.split(lines[2])[-2] == "data.root=" + sw.format_value(values[2])
    assert not os.path.exists(root)  # --print starts nothing


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path):
    result = sweep_cli(
        os.path.join(SWEEPS, "radix_cardinality.yaml"), "data.root=/data/imagenet", "--dry-run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "9 run(s)" in result.stdout  # every config loaded and every model built (on meta)
    assert "[5/9] radix2_cardinality2_bottleneck_width40: pending, would start" in result.stdout
    assert os.listdir(tmp_path) == []


RECIPE_LADDER = ["baseline", "label_smoothing", "mixup", "autoaugment", "dropblock"]
PAPER_LADDER = ["resnet50d", "resnet50d_mixup", "resnet50d_mixup_autoaugment", "resnest50_fast"]
NEW_DATA_OPTIONS = ["randaugment", "trivialaugment", "random_erasing", "repeated_aug", "progressive_resizing"]
NEW_OPTIONS = ["lamb", "lars", "step_decay", "cosine_floor"] + NEW_DATA_OPTIONS


@pytest.mark.slow
def test_recipe_ablation_sweep_passes_its_dry_run(tmp_path):
    path = os.path.join(SWEEPS, "recipe_ablation.yaml")
    result = sweep_cli(path, "data.root=/data/imagenet", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = RECIPE_LADDER + PAPER_LADDER + NEW_OPTIONS
    assert f"Sweep recipe_ablation: {len(names)} run(s) of {BASE} under runs/recipe_ablation" in result.stdout
    for i, name in enumerate(names, 1):  # every config loaded and every model built (on meta)
        assert f"[{i}/{len(names)}] {name}: pending, would start" in result.stdout
    assert os.listdir(tmp_path) == []
    # each rung of the ladder switches on one more technique; the last is the recipe itself
    from resnest_train.config_loader import load_config

    sweep = sw.load_sweep(path)
    cfgs = {run.name: load_config(sweep.config, sw.override_args(run)) for run in sweep.runs}
    techniques = [
        (c.train.label_smoothing, c.train.mixup_alpha, c.data.augment, c.model.dropblock.prob)
        for c in (cfgs[n] for n in RECIPE_LADDER)
    ]
    assert techniques == [
        (0.0, 0.0, "none", 0.0),
        (0.1, 0.0, "none", 0.0),
        (0.1, 0.2, "none", 0.0),
        (0.1, 0.2, "autoaugment", 0.0),
        (0.1, 0.2, "autoaugment", 0.1),
    ]
    assert cfgs["dropblock"] == load_config(BASE, [f"output.dir={cfgs['dropblock'].output.dir}"])
    assert (cfgs["lamb"].optim.name, cfgs["lars"].optim.name, cfgs["step_decay"].optim.schedule) == (
        "lamb",
        "lars",
        "step",
    )
    new = {n: cfgs[n].data for n in NEW_DATA_OPTIONS}
    assert (new["randaugment"].augment, new["trivialaugment"].augment) == ("randaugment", "trivialaugment")
    assert (new["random_erasing"].random_erasing, new["repeated_aug"].repeated_aug) == (0.25, 3)
    assert new["progressive_resizing"].train_crop_schedule.start_crop == 160


FAKE_TRAIN = textwrap.dedent("""\
    # A stand-in for train.py: records its call, then behaves by train.seed:
    # 13 crashes, 99 waits for SIGTERM and exits 143 as preempted, anything else finishes.
    import json, os, signal, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[3:])
    out = args["output.dir"]
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(os.path.basename(out) + "\\n")
    os.makedirs(out, exist_ok=True)
    def state(s, epoch):
        with open(os.path.join(out, "run_state.json"), "w") as f:
            json.dump({"state": s, "epoch": epoch, "epochs": 2, "best_top1": 40.0 if epoch else None}, f)
    seed = int(args.get("train.seed", 0))
    if seed == 13:
        sys.exit(1)
    state("running", 0)
    if seed == 99:
        signal.signal(signal.SIGTERM, lambda *a: (state("preempted", 0), sys.exit(143)))
        open(os.path.join(out, "started"), "w").close()
        time.sleep(60)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for e, (loss, top1, ips) in enumerate([(2.5, 30.0, 100.0), (2.0, 40.0, 120.0)], 1):
            f.write(json.dumps({"epoch": e, "train_loss": loss, "val_top1": top1, "images_per_sec": ips}) + "\\n")
    state("finished", 2)
""")


@pytest.fixture
def fake_trainer(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    log = tmp_path / "calls.log"
    return {"TRAIN_PY": str(script), "FAKE_LOG": str(log)}, log


def calls(log):
    return log.read_text().split() if log.exists() else []


@pytest.mark.slow
@pytest.mark.dist
def test_bad_key_is_rejected_before_any_run_starts(tmp_path, fake_trainer):
    env, log = fake_trainer
    path = write_sweep(
        tmp_path / "bad.yaml",
        {
            "base": BASE,
            "overrides": {"output.dir": str(tmp_path / "out")},
            "runs": [{"train.seed": 1}, {"train.seed": 2, "train.epoks": 3}],
        },
    )
    for mode in ([], ["--print"], ["--dry-run"]):
        result = sweep_cli(path, *mode, cwd=tmp_path, env=env)
        assert result.returncode == 2, result
        assert "Unknown config key 'train.epoks'" in result.stderr and "Did you mean 'train.epochs'" in result.stderr
        assert "Run 2 'seed2_epoks3'" in result.stderr
        assert result.stdout == ""
    assert calls(log) == [] and not (tmp_path / "out").exists()
    # a bad value and a model that cannot be built fail the same way
    path = write_sweep(
        tmp_path / "bad2.yaml",
        {
            "base": BASE,
            "grid": {"model.radix": [2, 3]},
            "overrides": {"model.cardinality": 3, "model.bottleneck_width": 10},
        },
    )
    result = sweep_cli(path, cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Run 1 'radix2'" in result.stderr and "has a bad config" in result.stderr
    assert "cannot be built (model.name=resnest50, model.radix=2, model.cardinality=3" in result.stderr
    assert calls(log) == []


@pytest.mark.slow
@pytest.mark.dist
def test_failed_run_does_not_stop_the_sweep_and_rerun_skips_finished(tmp_path, fake_trainer):
    env, log = fake_trainer
    root = tmp_path / "sw"
    path = write_sweep(
        tmp_path / "s.yaml",
        {"base": BASE, "overrides": {"output.dir": str(root), "train.epochs": 2}, "grid": {"train.seed": [13, 2]}},
    )
    result = sweep_cli(path, cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert calls(log) == ["seed13", "seed2"]
    assert "seed13: FAILED (exit 1" in result.stdout and "1 run(s) failed: seed13" in result.stdout
    with open(root / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["train.seed"], r["state"]) for r in rows] == [  # best first
        ("seed2", "2", "finished"),
        ("seed13", "13", "failed"),
    ]
    assert rows[0]["best_val_top1"] == "40.0" and rows[0]["final_train_loss"] == "2.0"
    assert rows[0]["images_per_sec"] == "110.0" and rows[1]["best_val_top1"] == ""
    md = (root / "summary.md").read_text()
    assert "| seed2 | 2 | finished | 2/2 | 40.00 | 2.0000 | 110.0 |\n| seed13 | 13 | failed | - | - | - | - |" in md
    # again: only the failed run is launched
    result = sweep_cli(path, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert calls(log) == ["seed13", "seed2", "seed13"]
    assert "[2/2] seed2: finished, skipped" in result.stdout


@pytest.mark.slow
@pytest.mark.dist
def test_sigterm_stops_the_sweep_after_the_run_in_progress(tmp_path, fake_trainer):
    env, log = fake_trainer
    root = tmp_path / "sw"
    path = write_sweep(
        tmp_path / "s.yaml", {"base": BASE, "overrides": {"output.dir": str(root)}, "grid": {"train.seed": [99, 1]}}
    )
    proc = subprocess.Popen(
        [sys.executable, SWEEP_PY, path],
        cwd=tmp_path,
        env={**helpers.env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    while not (root / "seed99" / "started").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # to the sweep alone: it passes the signal on
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert calls(log) == ["seed99"]  # the second run never started
    assert "seed99: stopped (exit 143)" in out
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert [(r["run"], r["state"]) for r in rows] == [("seed99", "preempted"), ("seed1", "pending")]


@pytest.mark.slow
def test_summary_states_from_what_runs_wrote(tmp_path):
    root = tmp_path / "sw"
    path = write_sweep(
        tmp_path / "s.yaml",
        {"base": BASE, "overrides": {"output.dir": str(root)}, "grid": {"train.seed": [1, 2, 3, 4, 5]}},
    )
    sweep = sw.load_sweep(path)
    for seed, state in [(1, "finished"), (2, "running"), (3, "running"), (4, "failed")]:
        d = root / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "run_state.json").write_text(json.dumps({"state": state, "epoch": 1, "epochs": 3, "best_top1": None}))
        (d / "metrics.jsonl").write_text(
            json.dumps({"epoch": 1, "train_loss": 3.25, "val_top1": 12.5, "images_per_sec": 50.0}) + "\n{cut sh"
        )
    (root / sw.STATUS_FILE).write_text(json.dumps({"runs": {"seed3": {"exit_code": -9}}}))
    result = sweep_cli(path, "--summary", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert [r["state"] for r in rows] == ["finished", "running", "failed", "failed", "pending"]
    assert rows[0]["best_val_top1"] == "12.5" and rows[0]["epoch"] == "1" and rows[0]["epochs"] == "3"
    assert "| seed5 | 5 | pending | - | - | - | - |" in result.stdout
    # finished means: as many epochs as the config asks for now
    first = sweep.runs[0]
    assert sw.is_done(first) and sw.is_done(first, epochs=1) and not sw.is_done(first, epochs=3)
    assert not sw.is_done(sweep.runs[1], epochs=1)
    result = sweep_cli(path, "train.epochs=1", "--dry-run", cwd=tmp_path)
    assert "[1/5] seed1: finished, would skip (finished)" in result.stdout
    assert "[2/5] seed2: running, would resume" in result.stdout
    assert "[5/5] seed5: pending, would start" in result.stdout


# ---------------------------------------------------------------------------------------
# End to end: the shipped CPU sweep through launch.sh and the real train.py
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_smoke_sweep_end_to_end(tmp_path):
    path = os.path.join(SWEEPS, "cpu_smoke.yaml")
    result = sweep_cli(path, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = tmp_path / "runs" / "cpu_smoke"
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert [(r["run"], r["model.radix"], r["state"], r["epoch"], r["epochs"]) for r in rows] == [
        ("radix1", "1", "finished", "1", "1"),
        ("radix2", "2", "finished", "1", "1"),
    ]
    for r in rows:
        out = root / r["run"]
        (record,) = RunDir(str(out)).read_metrics()  # the summary repeats what the run wrote
        assert float(r["best_val_top1"]) == pytest.approx(record["val_top1"])
        assert float(r["final_val_top1"]) == pytest.approx(record["val_top1"])
        assert float(r["final_train_loss"]) == pytest.approx(record["train_loss"])
        assert float(r["images_per_sec"]) == pytest.approx(record["images_per_sec"])
        assert (out / "checkpoints" / "last.pth").is_file()
        assert any(name.startswith("events.out.tfevents") for _, _, files in os.walk(out / "tb") for name in files)
        saved = yaml.safe_load((out / "config.yaml").read_text())
        assert saved["model"]["radix"] == int(r["model.radix"])
        assert saved["output"]["dir"] == f"runs/cpu_smoke/{r['run']}"
    assert "| radix1 | 1 | finished | 1/1 |" in (root / "summary.md").read_text()

    # `tensorboard --logdir <root>` sees both runs side by side, each with its hparams
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    tb = EventMultiplexer()
    tb.AddRunsFromDirectory(str(root))
    tb.Reload()
    radix = {}
    for run, tags in tb.PluginRunToTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/session_start_info"])
        radix[run] = data.session_start_info.hparams["model.radix"].number_value
    assert radix == {"radix1/tb": 1.0, "radix2/tb": 2.0}
    assert all("epoch/train_loss" in tb.Runs()[run]["scalars"] for run in radix)

    # the same command again: both runs are finished, nothing is launched or rewritten
    before = {p: os.stat(p).st_mtime_ns for p in root.glob("*/*") if p.is_file()}
    start = time.monotonic()
    again = sweep_cli(path, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "[1/2] radix1: finished, skipped" in again.stdout and "[2/2] radix2: finished, skipped" in again.stdout
    assert {p: os.stat(p).st_mtime_ns for p in root.glob("*/*") if p.is_file()} == before
    assert "launch.sh" not in again.stdout  # no run was started
    assert time.monotonic() - start < 60  # a check of the configs, no training
