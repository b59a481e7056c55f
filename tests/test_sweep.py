"""Sweeps: expanding a sweep file into named runs, the commands they get, checking every
config first, running through launch.sh (a fake trainer for the bookkeeping, the real
train.py for the end-to-end run), skipping finished runs, and the summary."""

import csv
import json
import os
import shlex
import shutil
import signal
import statistics
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
    # A stand-in for train.py: records its call and environment, then behaves by train.seed:
    # 13 crashes (unless FAKE_FIXED is set), 3 diverges (exit 3), 99 waits for SIGTERM and exits 143 as preempted (and
    # finishes when launched again), anything else finishes.
    import json, os, signal, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[3:])
    out = args["output.dir"]
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(os.path.basename(out) + "\\n")
    os.makedirs(out, exist_ok=True)
    keys = ("OMP_NUM_THREADS", "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "SLURM_ARRAY_TASK_ID")
    seen = {k: os.environ.get(k) for k in keys}
    seen["cpus"] = sorted(os.sched_getaffinity(0))
    with open(os.path.join(out, "env.json"), "w") as f:
        json.dump(seen, f)
    def read_state():
        try:
            with open(os.path.join(out, "run_state.json")) as f:
                return json.load(f)["state"]
        except OSError:
            return None
    def state(s, epoch):
        with open(os.path.join(out, "run_state.json"), "w") as f:
            json.dump({"state": s, "epoch": epoch, "epochs": 2, "best_top1": 40.0 if epoch else None}, f)
    seed = int(args.get("train.seed", 0))
    if seed == 13 and not os.environ.get("FAKE_FIXED"):
        sys.exit(1)
    if seed == 3:
        state("diverged", 0)
        sys.exit(3)
    resumed = read_state() == "preempted"
    state("running", 0)
    if seed == 99 and not resumed:
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
    result = sweep_cli(path, "--parallel", "2", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = tmp_path / "runs" / "cpu_smoke"
    # the two runs trained at once, each with its own log and a progress line of its own
    ended = {
        name: (time.mktime(time.strptime(s["ended"], "%Y-%m-%dT%H:%M:%S")), s["seconds"])
        for name, s in sw.read_status(str(root)).items()
    }
    (end1, took1), (end2, took2) = ended["radix1"], ended["radix2"]
    assert max(end1 - took1, end2 - took2) < min(end1, end2), ended
    for name in ("radix1", "radix2"):
        assert "epoch 1/1 step 2/2" in (root / "logs" / f"{name}.log").read_text()
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


# ---------------------------------------------------------------------------------------
# Diverged runs, parallel runs, SLURM arrays, searches (issue 12)
# ---------------------------------------------------------------------------------------


def wait_for(path, proc, timeout=60):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.dist
def test_diverged_run_is_reported_and_not_launched_again(tmp_path, fake_trainer):
    env, log = fake_trainer
    root = tmp_path / "sw"
    path = write_sweep(
        tmp_path / "s.yaml",
        {"base": BASE, "overrides": {"output.dir": str(root), "train.epochs": 2}, "grid": {"train.seed": [3, 1]}},
    )
    result = sweep_cli(path, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr  # a result, not a failure
    assert "[1/2] seed3: DIVERGED (exit 1); see its output. It is not launched again" in result.stdout
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert [(r["run"], r["state"]) for r in rows] == [("seed1", "finished"), ("seed3", "diverged")]
    again = sweep_cli(path, cwd=tmp_path, env=env)
    assert again.returncode == 0 and calls(log) == ["seed3", "seed1"]  # nothing launched again
    assert "[1/2] seed3: diverged, skipped (it would diverge again" in again.stdout


def test_plan_slots_share_out_gpus_and_cores():
    from resnest_train.sweep.runner import Slot, plan_slots

    assert plan_slots(2, None, [], [0, 1]) == [Slot(0, None, (0,)), Slot(1, None, (1,))]
    assert plan_slots(1, None, [], [0, 1]) == [Slot(0, None, ())]  # one run: nothing narrowed
    assert plan_slots(3, None, [], [0, 1]) == [Slot(i, None, ()) for i in range(3)]  # fewer cores than runs
    gpus = [str(i) for i in range(8)]
    cpus = list(range(16))
    assert plan_slots(4, None, gpus, cpus) == [
        Slot(i, (str(2 * i), str(2 * i + 1)), tuple(range(4 * i, 4 * i + 4))) for i in range(4)
    ]
    assert [s.gpus for s in plan_slots(2, 1, ["4", "6", "7"], cpus)] == [("4",), ("6",)]
    assert plan_slots(1, 2, gpus, cpus) == [Slot(0, ("0", "1"), ())]
    assert [s.gpus for s in plan_slots(2, 0, gpus, cpus)] == [(), ()]  # CPU runs: every GPU hidden
    with pytest.raises(sw.SweepError, match="needs 6 GPUs; 4 are visible"):
        plan_slots(3, 2, gpus[:4], cpus)
    with pytest.raises(sw.SweepError, match="cannot get a GPU each: 2 visible"):
        plan_slots(3, None, gpus[:2], cpus)
    with pytest.raises(sw.SweepError, match="--parallel must be at least 1"):
        plan_slots(0, None, [], cpus)


def test_one_progress_line_per_parallel_run(tmp_path):
    from resnest_train.sweep.runner import Job, _report_progress, last_progress

    logs = {}
    for name, lines in {
        "a": ["==> launch", "epoch 1/2 step 3/8 loss 2.3", "epoch 1/2 step 4/8 loss 2.2", "noise"],
        "b": ["==> launch", "Resuming from x"],
    }.items():
        logs[name] = tmp_path / f"{name}.log"
        logs[name].write_text("\n".join(lines) + "\n")
    assert last_progress(str(logs["a"])) == "epoch 1/2 step 4/8 loss 2.2"
    assert last_progress(str(logs["b"])) == "" and last_progress(str(tmp_path / "none.log")) == ""
    run = lambda n: sw.Run(n, "", {}, {})  # noqa: E731
    jobs = [
        Job(2, run("b"), None, None, 0.0, None, str(logs["b"])),
        Job(1, run("a"), None, None, 0.0, None, str(logs["a"])),
    ]
    printed = []
    _report_progress(jobs, 3, printed.append)
    _report_progress(jobs, 3, printed.append)  # unchanged: said once
    assert printed == ["[1/3] a: epoch 1/2 step 4/8 loss 2.2"]


@pytest.mark.slow
@pytest.mark.dist
def test_parallel_runs_own_cores_ports_and_survive_a_failure_and_sigterm(tmp_path, fake_trainer):
    env, log = fake_trainer
    root = tmp_path / "sw"
    path = write_sweep(
        tmp_path / "s.yaml",
        {"base": BASE, "overrides": {"output.dir": str(root), "train.epochs": 2}, "grid": {"train.seed": [99, 13, 1]}},
    )
    proc = subprocess.Popen(
        [sys.executable, SWEEP_PY, path, "--parallel", "2"],
        cwd=tmp_path,
        env={**helpers.env(), **env, "CUDA_VISIBLE_DEVICES": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # seed99 holds one slot; the other slot runs seed13 (fails) and then seed1 meanwhile
    wait_for(root / "seed1" / "metrics.jsonl", proc)
    wait_for(root / "seed99" / "started", proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert sorted(calls(log)) == ["seed1", "seed13", "seed99"]
    assert "seed13: FAILED (exit 1" in out and "seed1: finished" in out and "seed99: stopped (exit 143)" in out
    assert f"log {root / 'logs' / 'seed1.log'}" in out
    seen = {s: json.loads((root / s / "env.json").read_text()) for s in ("seed99", "seed1")}
    assert seen["seed99"]["MASTER_PORT"] != seen["seed1"]["MASTER_PORT"]
    if len(os.sched_getaffinity(0)) >= 2:  # each run pinned to its own cores, one thread per core
        assert not set(seen["seed99"]["cpus"]) & set(seen["seed1"]["cpus"])
        assert seen["seed1"]["OMP_NUM_THREADS"] == str(len(seen["seed1"]["cpus"]))
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert [(r["run"], r["state"]) for r in rows] == [
        ("seed1", "finished"),
        ("seed99", "preempted"),
        ("seed13", "failed"),
    ]
    # the same command resumes every unfinished run (and tries the failed one again)
    result = sweep_cli(path, "--parallel", "2", cwd=tmp_path, env={**env, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1, result.stdout
    assert sorted(calls(log)[3:]) == ["seed13", "seed99"] and "seed1: finished, skipped" in result.stdout
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert {r["run"]: r["state"] for r in rows} == {"seed1": "finished", "seed99": "finished", "seed13": "failed"}


@pytest.mark.slow
@pytest.mark.dist
def test_slurm_array_task_body_runs_its_run_and_resumes_after_requeue(tmp_path, fake_trainer):
    env, log = fake_trainer
    root = tmp_path / "sw"
    path = write_sweep(
        tmp_path / "s.yaml",
        {
            "base": BASE,
            "overrides": {"output.dir": str(root), "data.root": "/data/image net"},
            "grid": {"train.seed": [99, 1]},
            "slurm": {"partition": "gpu", "time": "2-00:00:00"},
        },
    )
    script = tmp_path / "sweep.sbatch"
    result = sweep_cli(path, "--slurm", str(script), "--parallel", "1", "--gpus-per-run", "8", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    sbatch = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sbatch == [
        "#SBATCH --job-name=s",
        "#SBATCH --array=0-1%1",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        f"#SBATCH --output={root}/logs/s_%a.log",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@180",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=2-00:00:00",
    ]
    assert (root / "logs").is_dir() and calls(log) == []
    bin_dir = tmp_path / "bin"  # a fake scontrol that records its arguments
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    base_env = helpers.env()
    slurm_env = {**base_env, **env, "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1"}
    slurm_env["PATH"] = f"{bin_dir}{os.pathsep}{base_env['PATH']}"

    def task(index, **extra):
        return subprocess.Popen(
            ["bash", str(script)],
            cwd="/",  # the script goes to the sweep's directory itself
            env={**slurm_env, "SLURM_ARRAY_TASK_ID": str(index), **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    one = task(1)
    out, _ = one.communicate(timeout=120)
    assert one.returncode == 0, out
    assert "task 1: run seed1 (restart 0)" in out and calls(log) == ["seed1"]
    seen = json.loads((root / "seed1" / "env.json").read_text())
    assert seen["SLURM_ARRAY_TASK_ID"] == "1"  # (one node: torchrun's standalone rendezvous picks its port)
    # task 0 is preempted (SIGTERM to the batch shell, which passes it on), then requeued by SLURM
    zero = task(0)
    wait_for(root / "seed99" / "started", zero)
    zero.send_signal(signal.SIGTERM)
    out, _ = zero.communicate(timeout=60)
    assert zero.returncode == 143, out
    assert not (tmp_path / "scontrol.log").exists()  # SIGTERM (preemption, scancel) does not requeue
    requeued = task(0, SLURM_RESTART_COUNT="1")
    out, _ = requeued.communicate(timeout=120)
    assert requeued.returncode == 0 and "task 0: run seed99 (restart 1)" in out
    assert RunDir(str(root / "seed99")).read_run_state()["state"] == "finished"
    # the time-limit warning (USR1): the run checkpoints, the task requeues itself and exits 0
    shutil.rmtree(root / "seed99")
    zero = task(0, SLURM_ARRAY_JOB_ID="4240")
    wait_for(root / "seed99" / "started", zero)
    zero.send_signal(signal.SIGUSR1)
    out, _ = zero.communicate(timeout=60)
    assert zero.returncode == 0, out
    assert "task 0: time limit near, run seed99 checkpointed; scontrol requeue 4240_0" in out
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4240_0\n"
    assert RunDir(str(root / "seed99")).read_run_state()["state"] == "preempted"
    bad = task(2)
    assert bad.wait(timeout=60) == 2 and "this array has tasks 0-1" in bad.communicate()[0]
    # each task passes launch.sh its run's overrides, spaces intact
    sweep = sw.load_sweep(path)
    assert f"0) run=seed99; cmd=({shlex.join(sw.launch_argv(sweep, sweep.runs[0], LAUNCH_SH))}) ;;" in text


@pytest.mark.slow
def test_slurm_multi_node_runs_launch_sh_once_per_node(tmp_path):
    from resnest_train.sweep import slurm

    path = write_sweep(
        tmp_path / "m.yaml",
        {
            "base": BASE,
            "overrides": {"output.dir": str(tmp_path / "m")},
            "runs": [{"train.seed": 0}],
            "launch": {"nnodes": 2},
        },
    )
    script = tmp_path / "m.sbatch"
    slurm.write_script(sw.load_sweep(path), str(script))
    text = script.read_text()
    assert "#SBATCH --nodes=2" in text and 'cmd=(srun --ntasks-per-node=1 --kill-on-bad-exit=1 "${cmd[@]}")' in text
    # on node 1 of node[07-08]: srun runs launch.sh, which takes the rendezvous from SLURM's variables
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "python").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    for f in ("srun", "python"):
        (bin_dir / f).chmod(0o755)
    env = {
        **helpers.env(),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": str(bin_dir / "python"),
        "ARGS_OUT": str(tmp_path / "args.txt"),
        "SLURM_ARRAY_TASK_ID": "0",
        "SLURM_JOB_ID": "31",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "node[07-08]",
    }
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "args.txt").read_text().split("\n")
    i = args.index("--nnodes")
    assert args[i : i + 8] == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "node07", "--master_port", "20031"]


def test_search_section_errors_are_clear(tmp_path):
    from resnest_train.sweep.search import parse_search

    spec = parse_search(
        {
            "trials": 3,
            "pruner": {"type": "median", "startup_trials": 1},
            "params": {"optim": {"base_lr": {"loguniform": [0.01, 1]}}},
        },
        "s.yaml",
    )
    assert spec.params == {"optim.base_lr": ("loguniform", [0.01, 1])}
    assert (spec.metric, spec.mode, spec.sampler, spec.pruner, spec.startup_trials) == (
        "val_top1",
        "max",
        "tpe",
        "median",
        1,
    )
    cases = [
        ({"params": {"a.b": {"choice": [1]}}}, "search: trials' in s.yaml must be the number of runs"),
        ({"trials": 2}, "must name the config keys"),
        ({"trials": 2, "params": {"a.b": {"loguniform": [0, 1]}}}, r"needs 0 < low < high, got \[0, 1\]"),
        ({"trials": 2, "params": {"a.b": {"normal": [0, 1]}}}, "must be one distribution"),
        ({"trials": 2, "params": {"a.b": {"int": [1.5, 3]}}}, "must be a whole number"),
        ({"trials": 2, "params": {"a.b": {"choice": [[3, 4]]}}}, "list-valued keys in a grid"),
        (
            {"trials": 2, "params": {"a.b": {"choice": [1]}}, "sampler": "grid"},
            "sampler' in s.yaml must be one of tpe, random",
        ),
        (
            {"trials": 2, "params": {"a.b": {"choice": [1]}}, "pruner": "hyperband"},
            "pruner' in s.yaml must be none, median",
        ),
        ({"trials": 2, "params": {"a.b": {"choice": [1]}}, "trails": 3}, r"unknown key\(s\) \['trails'\]"),
    ]
    for raw, message in cases:
        with pytest.raises(sw.SweepError, match=message):
            parse_search(raw, "s.yaml")
    with pytest.raises(sw.SweepError, match="has both 'search:' and 'grid:'"):
        sw.load_sweep(
            write_sweep(tmp_path / "g.yaml", {"base": BASE, "grid": {"train.seed": [1]}, "search": {"trials": 1}})
        )


TINY = {  # cpu_smoke's tiny runs, more epochs of one step each: time for the pruner to act
    "data.backend": "synthetic",
    "data.synthetic": {"train_images": 8, "val_images": 8, "num_classes": 10},
    "data.train_crop": 32,
    "data.workers": 0,
    "train.epochs": 6,
    "train.batch_size": 8,
    "train.max_steps_per_epoch": 1,
    "optim.warmup_epochs": 0,
    "output.image_grid": False,
}


@pytest.mark.slow
def test_search_with_pruning_resumes_after_sigterm_and_does_not_rerun_pruned_trials(tmp_path):
    import optuna

    root = tmp_path / "search"
    path = write_sweep(
        tmp_path / "s.yaml",
        {
            "base": os.path.join(ROOT, "configs", "quickstart.yaml"),
            "overrides": {**TINY, "output.dir": str(root)},
            # metric lr: a number every epoch writes that follows base_lr, so which trials the
            # pruner stops is known in advance (val_top1 of 1-step runs is noise)
            "search": {
                "trials": 4,
                "metric": "lr",
                "sampler": "random",
                "seed": 0,
                "pruner": {"type": "median", "startup_trials": 1},
                "params": {"optim.base_lr": {"loguniform": [0.01, 1.0]}},
            },
        },
    )
    dry = sweep_cli(path, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "4 trial(s)" in dry.stdout and "optim.base_lr: loguniform [0.01, 1.0]" in dry.stdout
    proc = subprocess.Popen(
        [sys.executable, SWEEP_PY, path],
        cwd=tmp_path,
        env=helpers.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(root / "trial000" / "metrics.jsonl", proc, timeout=300)  # trial 0 is past its first epoch
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "trial000: stopped (exit 143)" in out and not (root / "trial001").exists()

    result = sweep_cli(path, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Resuming from" in result.stdout  # trial 0 continued from its checkpoint
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{root}/search.db")
    assert len(study.trials) == 4
    states = {t.number: t.state.name for t in study.trials}
    assert states[0] == "COMPLETE"
    # MedianPruner: a trial is stopped when its epoch-1 lr trails the median of the finished trials'
    done = []
    for t in study.trials:
        if t.number > 0:
            median = statistics.median(done)
            assert states[t.number] == ("PRUNED" if t.intermediate_values[1] < median else "COMPLETE"), t
        if states[t.number] == "COMPLETE":
            done.append(t.intermediate_values[1])
    assert "PRUNED" in states.values() and list(states.values()).count("COMPLETE") >= 2
    status = sw.read_status(str(root))
    rows = list(csv.DictReader(open(root / "summary.csv")))
    best = [float(r["best_lr"]) for r in rows]
    assert len(rows) == 4 and best == sorted(best, reverse=True)  # best first
    for t in study.trials:
        name = f"trial{t.number:03d}"
        row = next(r for r in rows if r["run"] == name)
        assert float(row["optim.base_lr"]) == pytest.approx(t.params["optim.base_lr"])
        if t.state.name == "PRUNED":  # stopped through its normal stop path: exit 143, a valid checkpoint
            assert row["state"] == "pruned" and status[name] == {**status[name], "exit_code": 143, "pruned": True}
            assert RunDir(str(root / name)).read_run_state()["state"] == "preempted"
            saved = torch_load(root / name / "checkpoints" / "last.pth")
            assert 1 <= saved["epoch"] < 6
        else:
            assert row["state"] == "finished" and float(row["best_lr"]) == pytest.approx(t.value)
    # TensorBoard's HParams view has every trial, the pruned ones too, with its latest epoch values
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    tb = EventMultiplexer()
    tb.AddRunsFromDirectory(str(root))
    tb.Reload()
    sessions = {}
    for run, tags in tb.PluginRunToTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/session_start_info"])
        sessions[run] = data.session_start_info.hparams["optim.base_lr"].number_value
    assert sessions == pytest.approx({f"trial{t.number:03d}/tb": t.params["optim.base_lr"] for t in study.trials})
    pruned = next(f"trial{t.number:03d}" for t in study.trials if t.state.name == "PRUNED")
    assert len(tb.Scalars(f"{pruned}/tb", "epoch/val_top1")) == len(helpers.metrics(str(root / pruned)))
    # again: the search is complete, nothing is launched, pruned trials stay pruned
    again = sweep_cli(path, cwd=tmp_path)
    assert again.returncode == 0 and "launch.sh" not in again.stdout
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{root}/search.db").trials) == 4


@pytest.mark.slow
def test_a_crashed_trial_is_launched_again_by_the_next_invocation(tmp_path, fake_trainer):
    """A failed (crashed) trial stays open in the study and is retried with its sampled values,
    as a grid sweep's failed run is; a diverged trial is a result and is not."""
    import optuna

    env, log = fake_trainer
    root = tmp_path / "search"
    path = write_sweep(
        tmp_path / "s.yaml",
        {
            "base": BASE,
            "overrides": {"output.dir": str(root)},
            "search": {"trials": 2, "sampler": "random", "params": {"train.seed": {"choice": [13, 3]}}},
        },
    )
    first = sweep_cli(path, cwd=tmp_path, env=env)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{root}/search.db")
    seeds = {t.number: t.params["train.seed"] for t in study.trials}
    assert sorted(seeds.values()) == [3, 13], seeds  # Optuna's RandomSampler(seed=0): one crash, one divergence
    expect = {n: ("RUNNING" if s == 13 else "FAIL") for n, s in seeds.items()}
    assert {t.number: t.state.name for t in study.trials} == expect
    assert first.returncode == 1 and "the trial stays open; running the same command again" in first.stdout
    crashed = sorted(f"trial{n:03d}" for n, s in seeds.items() if s == 13)
    again = sweep_cli(path, cwd=tmp_path, env={**env, "FAKE_FIXED": "1"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert calls(log)[len(seeds) :] == crashed  # only the crashed trials, again
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{root}/search.db")
    assert len(study.trials) == 2
    assert {t.number: t.state.name for t in study.trials} == {
        n: ("COMPLETE" if s == 13 else "FAIL") for n, s in seeds.items()
    }
    assert all(t.value == 40.0 for t in study.trials if t.state.name == "COMPLETE")


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def test_shipped_lr_search_plans_and_passes_its_check():
    from resnest_train.sweep.search import check_search

    sweep = sw.load_sweep(os.path.join(SWEEPS, "lr_search.yaml"))
    spec = sweep.search
    assert (spec.trials, spec.sampler, spec.pruner, spec.startup_trials, spec.warmup_epochs) == (
        24,
        "tpe",
        "median",
        5,
        10,
    )
    assert spec.params["model.radix"] == ("choice", [1, 2, 4]) and sweep.runs == []
    assert (sweep.metric, sweep.mode, sweep.root) == ("val_top1", "max", os.path.join("runs", "lr_search"))
    check_search(sweep)  # every range end and choice through the pre-flight check (models built on meta)
