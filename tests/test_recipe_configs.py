"""The paper's recipe configs resolve to the same config as before the newer training options
(issue 14): every key they had keeps its value, and every key added since sits at the value
that keeps the paper's recipe.

tests/recipe_configs.json holds the resolved configs as they were before issue 14 (dotted keys):
configs/base/recipe.yaml in full, every other config as its differences from it.
"""

import json
import os

import pytest

from helpers import ROOT
from resnest_train.config_loader import config_to_dict, load_config

with open(os.path.join(ROOT, "tests", "recipe_configs.json")) as f:
    STORED = json.load(f)
RECIPE = "configs/base/recipe.yaml"

# Keys added since the stored configs, at the values that keep the paper's recipe. A new key
# belongs here with the value that leaves the recipe unchanged (its schema default).
NEW_KEYS = {
    "optim.name": "sgd",
    "optim.betas": [0.9, 0.999],
    "optim.trust_coeff": 0.001,
    "optim.schedule": "cosine",
    "optim.step_epochs": [30, 60, 90],
    "optim.step_gamma": 0.1,
    "data.randaugment_num_ops": 2,
    "data.randaugment_magnitude": 9,
    "data.random_erasing": 0.0,
    "data.repeated_aug": 1,
    "data.train_crop_schedule.start_crop": 0,
    "data.train_crop_schedule.start_ramp": 0,
    "data.train_crop_schedule.end_ramp": 0,
    "data.train_crop_schedule.step": 32,
    "data.format": "auto",
    "output.experiment": "",
    "output.mlflow_uri": "",
    "output.wandb_mode": "offline",
}

# Keys replaced since: old key -> (new key, {old value: new value}).
REPLACED = {
    "data.autoaugment": ("data.augment", {True: "autoaugment", False: "none"}),
    "output.tensorboard": ("output.loggers", {True: ["tensorboard"], False: []}),
}


def renamed(stored: dict) -> dict:
    """``stored`` with each replaced key written as its replacement."""
    out = dict(stored)
    for old, (new, values) in REPLACED.items():
        if old in out:
            out[new] = values[out.pop(old)]
    return out


def flat(tree: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict of dotted keys."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("path", sorted(STORED))
def test_recipe_config_resolves_as_before_with_new_keys_at_their_recipe_values(path):
    resolved = flat(config_to_dict(load_config(os.path.join(ROOT, path), [])))
    expected = renamed({**STORED[RECIPE], **STORED[path]})
    assert {k: resolved[k] for k in expected} == expected
    added = {k: v for k, v in resolved.items() if k not in expected}
    assert added == NEW_KEYS, "a key added to the schema must be listed in NEW_KEYS at its recipe value"
