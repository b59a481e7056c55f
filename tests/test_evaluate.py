"""scripts/evaluate.py: a run evaluated here gives its own val metrics to the last digit (model,
EMA, best, a bare state_dict), every image once under torchrun, the resolution sweep,
per-class accuracy, ReaL accuracy, and one-paragraph errors."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import NARROW, ROOT, env, make_shapes, metrics
from resnest_train.evaluate import Predictions, evaluate_with_predictions, real_accuracy, relabels_for

SCRIPT = os.path.join(ROOT, "scripts", "evaluate.py")
# What a bare state_dict needs to be read as the pretrained run: its model and data settings.
RUN_SETTINGS = NARROW + [
    "device=cpu",
    "data.backend=torchvision",
    "data.workers=0",
    "data.train_crop=32",
    "data.eval_ratio=1.0",
    "train.batch_size=16",
]


def evaluate_main():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def evaluate(tmp_path, *args):
    """scripts/evaluate.py in this process; returns its JSON report.

    With one torch thread, as the training run had (helpers.env sets OMP_NUM_THREADS=1): the
    reductions then run in the same order, so the floats can be compared exactly.
    """
    out = str(tmp_path / f"report{len(os.listdir(tmp_path))}.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert evaluate_main()([*args, "--json", out]) == 0
    finally:
        torch.set_num_threads(threads)
    with open(out) as f:
        return json.load(f)


@pytest.mark.slow
def test_a_run_evaluated_here_gives_its_own_val_metrics_exactly(pretrained_run, tmp_path, capsys):
    rows = metrics(pretrained_run)
    last = rows[-1]
    report = evaluate(tmp_path, pretrained_run)
    assert (report["top1"], report["top5"], report["loss"], report["images"]) == (
        last["val_top1"],
        last["val_top5"],
        last["val_loss"],
        last["val_images"],
    )  # same floats
    assert report["checkpoint"].endswith("last.pth") and report["kind"] == "checkpoint"
    ema = evaluate(tmp_path, pretrained_run, "--ema")
    assert (ema["top1"], ema["top5"]) == (last["val_top1_ema"], last["val_top5_ema"])
    best_row = rows[[r["val_top1"] for r in rows].index(max(r["val_top1"] for r in rows))]  # the first best epoch
    best = evaluate(tmp_path, pretrained_run, "--best")
    assert (best["top1"], best["loss"]) == (best_row["val_top1"], best_row["val_loss"])
    printed = capsys.readouterr().out
    assert f"| resnest14 | last.pth | 32 | {last['val_top1']:.2f} | {last['val_top5']:.2f} |" in printed
    assert "| resnest14 | last.pth (EMA) | 32 |" in printed


@pytest.mark.slow
def test_a_bare_state_dict_with_wrapper_prefixes_gives_the_same_numbers(pretrained_run, shapes_root, tmp_path):
    saved = torch.load(os.path.join(pretrained_run, "checkpoints", "last.pth"), weights_only=True)
    path = str(tmp_path / "weights.pth")
    torch.save({f"module._orig_mod.{k}": v for k, v in saved["model"].items()}, path)  # DDP + compile
    report = evaluate(tmp_path, path, *RUN_SETTINGS, f"data.root={shapes_root}")
    last = metrics(pretrained_run)[-1]
    assert (report["top1"], report["loss"], report["kind"]) == (last["val_top1"], last["val_loss"], "state_dict")


@pytest.mark.slow
def test_a_val_list_alone_is_enough(pretrained_run, shapes_root, tmp_path):
    """A val set given as a file list needs no training split (evaluate builds the val loader only)."""
    val = os.path.join(shapes_root, "val")
    lines = [
        f"{os.path.join(val, c, f)} {k}"
        for k, c in enumerate(sorted(os.listdir(val)))
        for f in sorted(os.listdir(os.path.join(val, c)))
    ]
    (tmp_path / "lists").mkdir()
    listed = tmp_path / "lists" / "val.txt"
    listed.write_text(
        "\n".join(os.path.relpath(line.split()[0], listed.parent) + " " + line.split()[1] for line in lines) + "\n"
    )
    report = evaluate(tmp_path, pretrained_run, f"data.val_list={listed}", f"data.root={tmp_path / 'none'}")
    last = metrics(pretrained_run)[-1]
    assert (report["top1"], report["loss"], report["images"]) == (last["val_top1"], last["val_loss"], 100)
    assert report["data"] == f"data.val_list={listed}"
    # a list's class count is its largest label + 1: a list without the last class still fits the model
    listed.write_text("\n".join(line for line in listed.read_text().splitlines() if not line.endswith(" 9")) + "\n")
    report = evaluate(tmp_path, pretrained_run, f"data.val_list={listed}")
    assert report["images"] == 90


@pytest.mark.slow
def test_a_val_folder_alone_is_enough(pretrained_run, shapes_root, tmp_path):
    """ImageNet's val/ without train/ (an evaluation machine): the same numbers as the run's."""
    shutil.copytree(os.path.join(shapes_root, "val"), tmp_path / "val_only" / "val")
    report = evaluate(tmp_path, pretrained_run, f"data.root={tmp_path / 'val_only'}")
    last = metrics(pretrained_run)[-1]
    assert (report["top1"], report["loss"], report["images"]) == (last["val_top1"], last["val_loss"], 100)


@pytest.mark.slow
def test_two_processes_see_every_image_once_and_agree_with_one(pretrained_run, tmp_path):
    one = evaluate(tmp_path, pretrained_run, "--per-class")
    out = str(tmp_path / "two.json")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        SCRIPT,
        pretrained_run,
        "dist.backend=gloo",
        "--per-class",
        "--json",
        out,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env(), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("| resnest14 | last.pth | 32 |") == 1  # rank 0 alone reports
    with open(out) as f:
        two = json.load(f)
    assert two["world_size"] == 2 and two["images"] == one["images"] == 100
    assert two["top1"] == one["top1"] and two["per_class"] == one["per_class"]  # the same predictions
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)  # float32 batch sums over other batches


@pytest.mark.slow
def test_per_class_accuracy_and_confusions_add_up_to_top1(pretrained_run, tmp_path):
    report = evaluate(tmp_path, pretrained_run, "--per-class")
    per_class = report["per_class"]
    assert len(per_class) == 10 and all(c["images"] == 10 for c in per_class)
    correct = sum(c["correct"] for c in per_class)
    assert 100.0 * correct / 100 == report["top1"]
    assert all(c["top1"] == 10.0 * c["correct"] for c in per_class)
    counts = [c["count"] for c in report["confused"]]
    assert counts == sorted(counts, reverse=True) and 0 < len(counts) <= 10
    assert all(c["true"] != c["predicted"] for c in report["confused"])
    wrong = {c["class"]: c["images"] - c["correct"] for c in per_class}
    assert all(c["count"] <= wrong[c["true"]] for c in report["confused"])


@pytest.mark.slow
def test_resolution_sweep_gives_one_row_per_crop(pretrained_run, tmp_path):
    report = evaluate(tmp_path, pretrained_run, "--crops", "32,64")
    small, large = report["rows"]
    last = metrics(pretrained_run)[-1]
    assert (small["crop"], small["resize"], small["top1"], small["loss"]) == (
        32,
        32,
        last["val_top1"],
        last["val_loss"],
    )
    assert (large["crop"], large["resize"], large["images"]) == (64, 64, 100)
    assert large["loss"] != small["loss"]  # 32 px images upsampled to 64: another input, other numbers
    assert report["markdown"].count("| resnest14 | last.pth |") == 2


@pytest.mark.slow
def test_real_accuracy_from_a_relabel_file(pretrained_run, shapes_root, tmp_path):
    per_class = evaluate(tmp_path, pretrained_run, "--per-class")["per_class"]
    files = sorted(
        f"{c}/{f}"
        for c in os.listdir(os.path.join(shapes_root, "val"))
        for f in os.listdir(os.path.join(shapes_root, "val", c))
    )
    classes = sorted(os.listdir(os.path.join(shapes_root, "val")))
    # the original labels, but class 0's images unlabelled (ReaL leaves such images out)
    relabel = {f: ([] if f.startswith(classes[0] + "/") else [classes.index(f.split("/")[0])]) for f in files}
    path = tmp_path / "real.json"
    path.write_text(json.dumps(relabel))
    report = evaluate(tmp_path, pretrained_run, "--real", str(path))
    row = report["rows"][0]
    assert row["real_images"] == 90
    assert row["real_top1"] == 100.0 * sum(c["correct"] for c in per_class[1:]) / 90
    path.write_text(json.dumps({os.path.basename(f): list(range(10)) for f in files}))  # keyed by file name
    row = evaluate(tmp_path, pretrained_run, "--real", str(path))["rows"][0]
    assert (row["real_top1"], row["real_top5"], row["real_images"]) == (100.0, 100.0, 100)


def test_real_json_is_matched_by_imagenet_val_file_names():
    real = [[3], [], [1, 2]]  # ILSVRC2012_val_00000001..3, as ImageNet-ReaL's real.json lists them
    files = ["n01/ILSVRC2012_val_00000003.JPEG", "n02/ILSVRC2012_val_00000001.JPEG", "n02/ILSVRC2012_val_00000002.JPEG"]
    labels = relabels_for(files, real, "real.json")
    assert labels == [[1, 2], [3], []]
    pred = Predictions(top=torch.tensor([[2, 0, 4], [0, 3, 1], [5, 6, 7]]), labels=torch.tensor([0, 0, 0]))
    assert real_accuracy(pred, labels) == {"real_top1": 50.0, "real_top5": 100.0, "real_images": 2}
    from resnest_train.errors import UserError

    with pytest.raises(UserError, match="has no labels for the val image n03/photo.jpg"):
        relabels_for(["n03/photo.jpg"], real, "real.json")


def test_a_rank_without_val_images_gathers_an_empty_shard():
    """More ranks than val images leave a shard empty; its (0, k) predictions still concatenate."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    metrics_, pred = evaluate_with_predictions(model, [], torch.device("cpu"), "none", num_classes=4)
    assert metrics_["images"] == 0 and pred.top.shape == (0, 4) and pred.labels.shape == (0,)
    batch = [(torch.randn(3, 3, 2, 2), torch.tensor([0, 1, 3]))]
    metrics_, pred = evaluate_with_predictions(model, batch, torch.device("cpu"), "none", num_classes=4)
    with torch.no_grad():
        assert torch.equal(pred.top, model(batch[0][0]).topk(4, dim=1).indices)
    assert metrics_["images"] == 3 and torch.equal(pred.labels, batch[0][1])


@pytest.mark.parametrize(
    "case",
    ["missing", "empty_dir", "ema_on_state_dict", "other_classes", "best_on_file", "crop_and_crops", "bad_relabel"],
)
@pytest.mark.slow
def test_mistakes_stop_with_one_paragraph(case, pretrained_run, tmp_path, capsys):
    ckpt = os.path.join(pretrained_run, "checkpoints", "last.pth")
    bare = str(tmp_path / "bare.pth")
    torch.save(torch.load(ckpt, weights_only=True)["model"], bare)
    (tmp_path / "bad.json").write_text("{not json")
    five = make_shapes(str(tmp_path / "five"), 4, 2, seed=3, by_colour=False)  # 20 train images: one batch
    args, expected = {
        "missing": ([str(tmp_path / "nope.pth")], "nope.pth does not exist: give a checkpoint file"),
        "empty_dir": ([str(tmp_path)], "is a folder without checkpoints/last.pth"),
        "ema_on_state_dict": ([bare, "--ema"], "--ema takes a resnest-train checkpoint's EMA weights, but"),
        "other_classes": ([pretrained_run, f"data.root={five}"], "classify 10 classes, but the dataset has 5"),
        "best_on_file": ([ckpt, "--best"], "--best picks a run directory's checkpoints/best.pth"),
        "crop_and_crops": ([pretrained_run, "--crop", "32", "--crops", "32,64"], "--crop and --crops exclude"),
        "bad_relabel": ([pretrained_run, "--real", str(tmp_path / "bad.json")], "is not valid JSON"),
    }[case]
    assert evaluate_main()(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err


def test_help_lists_every_option():
    result = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, cwd=ROOT, env=env())
    assert result.returncode == 0
    for option in (
        "--ema",
        "--best",
        "--crop ",
        "--ratio",
        "--crops",
        "--per-class",
        "--real",
        "--json",
        "--config",
        "section.key=value",
        "torchrun",
    ):
        assert option in result.stdout, option
