"""Shared by the tests: run train.py for real, read what a run leaves behind."""
import glob
import os
import subprocess
import sys

from resnest_train.rundir import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")

# A tiny but real run: resnest14 on 32 px synthetic images, 2 x 4 steps, every step logged; on
# the CPU also on a machine with a GPU (tests/test_gpu_path.py checks that with CUDA faked).
TINY = ["model.name=resnest14", "device=cpu", "data.backend=synthetic", "data.train_crop=32",
        "data.synthetic.train_images=64", "data.synthetic.val_images=24", "data.synthetic.num_classes=5",
        "train.batch_size=8", "train.epochs=2", "optim.warmup_epochs=1", "output.log_every=1",
        "output.progress=lines", "output.save_every_epochs=1", "output.keep_last=1"]


def env():
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def train(*args, check=True, timeout=600):
    result = subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, cwd=ROOT,
                            env=env(), timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def metrics(run_dir):
    """The run's metrics.jsonl records; fails if the file is missing."""
    run = RunDir(run_dir)
    assert os.path.isfile(run.metrics), f"{run.metrics} is missing"
    return run.read_metrics()


def run_state(run_dir):
    """The run's run_state.json; fails if the file is missing."""
    run = RunDir(run_dir)
    assert os.path.isfile(run.run_state), f"{run.run_state} is missing"
    return run.read_run_state()


def last_checkpoint(run_dir):
    """The path of the run's checkpoints/last.pth."""
    return RunDir(run_dir).last_checkpoint


def scalars(path, tag):
    """{step: value} of one TensorBoard scalar, read with TensorBoard's own event reader.

    `path` is the tb folder or one events file; later values of a step win.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(path, size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return {}
    return {e.step: e.value for e in acc.Scalars(tag)}


def event_files(run_dir):
    """The run's TensorBoard event files, oldest first (their names start with the creation time)."""
    files = glob.glob(os.path.join(RunDir(run_dir).tensorboard, "events.out.tfevents.*"))
    return sorted(files, key=lambda f: float(os.path.basename(f).split(".")[3]))


def scalars_in(files, tag):
    merged = {}
    for path in files:
        merged.update(scalars(path, tag))
    return merged
