"""MLflow and Weights & Biases logging (``output.loggers``): a tiny CPU run logs its config and
every epoch to both (an MLflow file store, W&B offline), and its resume goes on in the same runs."""

import json
import os

import pytest

import helpers
from resnest_train.config_loader import load_config
from resnest_train.errors import ConfigError

mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional extra (pip install mlflow-skinny)")
wandb = pytest.importorskip("wandb", reason="W&B is an optional extra (pip install wandb)")

RUN = helpers.TINY + [
    "data.synthetic.train_images=16",
    "data.synthetic.val_images=8",
    "train.max_steps_per_epoch=1",
    "output.image_grid=false",
]


@pytest.mark.slow
def test_mlflow_and_wandb_offline_log_every_epoch_and_resume_into_the_same_runs(tmp_path):
    out = tmp_path / "my_sweep" / "lr0.1"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a local store (MLflow 3 keeps ./mlruns file stores read-only)
    args = [*RUN, f"output.dir={out}", "output.loggers=[tensorboard, mlflow, wandb]", f"output.mlflow_uri={store}"]
    helpers.train("--config", "configs/quickstart.yaml", *args, "train.epochs=1")
    ids = json.loads((out / "trackers.json").read_text())
    helpers.train("--config", "configs/quickstart.yaml", *args, "train.epochs=2")  # resumes epoch 2
    assert json.loads((out / "trackers.json").read_text()) == ids  # the same tracker runs

    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(ids["mlflow"])
    assert client.get_experiment(run.info.experiment_id).name == "my_sweep"  # the folder above output.dir
    assert run.info.run_name == "lr0.1" and run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "resnest14" and run.data.params["train.epochs"] == "1"  # first start's
    records = helpers.metrics(str(out))
    history = client.get_metric_history(ids["mlflow"], "train_loss")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["train_loss"])) for r in records]
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "val_top1")] == [1, 2]

    offline = [d for d in os.listdir(out / "wandb") if d.startswith("offline-run-")]
    assert offline and all(d.endswith(ids["wandb"]) for d in offline)  # one W&B run, written twice, no network
    # wandb ships no reader for its offline run files: the records hold the keys in plain bytes
    data = b"".join((out / "wandb" / d / f"run-{ids['wandb']}.wandb").read_bytes() for d in offline)
    assert b"model.name" in data and b"resnest14" in data  # the config
    assert data.count(b"train_loss") >= 2  # a history record per epoch (and the summary)


def test_loggers_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="was replaced by 'output.loggers'.*output.loggers=\\[\\]"):
        load_config("configs/quickstart.yaml", ["output.tensorboard=false"])
    with pytest.raises(ConfigError, match="'neptune' is not one of 'tensorboard', 'mlflow', 'wandb'"):
        load_config("configs/quickstart.yaml", ["output.loggers=[neptune]"])
    import resnest_train.trackers as trackers

    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="lists wandb, which is not installed.*pip install wandb"):
        load_config("configs/quickstart.yaml", ["output.loggers=[tensorboard, wandb]"])
