"""Experiment trackers besides TensorBoard: MLflow and Weights & Biases (``output.loggers``).

Both are optional extras (``pip install 'resnest-train[mlflow]'`` / ``[wandb]``). Each run logs
its config as parameters once and every epoch's ``metrics.jsonl`` numbers at step = epoch.
The tracker's run id is kept in ``<output.dir>/trackers.json`` (``RunDir.trackers``), so a
resumed or requeued run goes on logging to the same tracker run. The experiment (MLflow) or
project (W&B) is ``output.experiment``, by default the folder above ``output.dir``: a sweep's
runs land together under the sweep's name, each named after its run directory.
"""

from __future__ import annotations

import importlib.util
import os
import time
import uuid

from .errors import UserError
from .rundir import RunDir, read_json, write_json

TRACKERS = ("mlflow", "wandb")
EXTRAS = {"mlflow": "mlflow-skinny", "wandb": "wandb"}  # the pip package of each


def missing(loggers: list[str]) -> list[str]:
    """The trackers of ``loggers`` whose package is not installed."""
    return [name for name in loggers if name in TRACKERS and importlib.util.find_spec(name) is None]


def experiment_name(output_cfg) -> str:
    """``output.experiment``, or the name of the folder above ``output.dir`` (``runs`` at least)."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(output_cfg.dir)))
    return output_cfg.experiment or parent or "runs"


class MLflowTracker:
    """One MLflow run per run directory, through ``mlflow.MlflowClient`` (no global active run).
    ``output.mlflow_uri``: a tracking server (``http://host:5000``) or a local store
    (``sqlite:///mlflow.db``; MLflow 3 refuses new ``./mlruns`` file stores unless
    ``MLFLOW_ALLOW_FILE_STORE=true``); "" uses ``MLFLOW_TRACKING_URI`` or MLflow's default."""

    def __init__(self, output_cfg, run_id: str | None):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=output_cfg.mlflow_uri or None)
        self.resumed = run_id is not None
        if run_id is None:
            name = experiment_name(output_cfg)
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=os.path.basename(output_cfg.dir)).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_params(self, params: dict) -> None:
        """Parameters are set once in MLflow: a resumed run keeps those of its first start."""
        if self.resumed:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finish(self, state: str) -> None:
        status = {"finished": "FINISHED", "failed": "FAILED", "diverged": "FAILED"}.get(state, "KILLED")
        self.client.set_terminated(self.run_id, status=status)


class WandbTracker:
    """One W&B run per run directory, its files under ``<output.dir>/wandb``; ``output.wandb_mode``
    offline (the default: no network, ``wandb sync <output.dir>/wandb/offline-run-*`` uploads
    later) or online."""

    def __init__(self, output_cfg, run_id: str | None):
        import wandb

        self.resumed = run_id is not None
        self.run = wandb.init(
            project=experiment_name(output_cfg),
            name=os.path.basename(output_cfg.dir),
            id=run_id or uuid.uuid4().hex[:8],  # W&B ids: lowercase letters and digits
            resume="allow",
            dir=os.path.abspath(output_cfg.dir),
            mode=output_cfg.wandb_mode,
        )
        self.run_id = self.run.id

    def log_params(self, params: dict) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, state: str) -> None:
        self.run.finish(exit_code=0 if state == "finished" else 1)


def open_trackers(output_cfg) -> list:
    """The trackers ``output.loggers`` asks for (besides TensorBoard), each resuming the tracker run
    its run directory recorded; the new ids are written back to ``trackers.json``."""
    wanted = [name for name in output_cfg.loggers if name in TRACKERS]
    if not wanted:
        return []
    run = RunDir(output_cfg.dir)
    ids = read_json(run.trackers) or {}
    kinds = {"mlflow": MLflowTracker, "wandb": WandbTracker}
    trackers = []
    for name in wanted:
        try:
            trackers.append(kinds[name](output_cfg, ids.get(name)))
        except Exception as e:  # a server that cannot be reached, a store that cannot be opened
            where = (
                f" at {output_cfg.mlflow_uri or 'its default store'} (output.mlflow_uri)" if name == "mlflow" else ""
            )
            raise UserError(
                f"Config key 'output.loggers': {name}{where} could not be opened: {type(e).__name__}: {e}. "
                f"Fix the tracker's settings, or remove {name} from output.loggers."
            ) from None
    write_json(run.trackers, {**ids, **{name: t.run_id for name, t in zip(wanted, trackers)}}, indent=2)
    return trackers
