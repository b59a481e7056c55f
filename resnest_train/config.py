"""The config schema: the one list of every knob and its default.

YAML files inherit from each other with ``base:`` (a path or a list of paths, relative
to the file). The command line overrides single keys with ``section.key=value``, the
value parsed as YAML. Every mistake a user can make here raises ``ConfigError`` with
one paragraph naming the file or argument, the key, and the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from .errors import UserError


class ConfigError(UserError):
    """A mistake in a config file or override; the message says where and how to fix it."""


# ---------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------

@dataclass
class DropBlockConfig:
    stages: list[int] = field(default_factory=lambda: [3, 4])  # 1..4 = layer1..layer4
    sites: list[str] = field(default_factory=lambda: ["bn1", "splat", "bn3"])
    block_size: int = 3
    prob: float = 0.0  # final drop probability; the paper's recipe sets 0.1
    schedule: str = "linear"  # linear: prob * (epoch + 1) / epochs; constant: prob


@dataclass
class ModelConfig:
    name: str = "resnest50"
    # Architecture overrides; None keeps the named variant's value.
    radix: int | None = None
    cardinality: int | None = None
    bottleneck_width: int | None = None
    stem_width: int | None = None
    deep_stem: bool | None = None
    avg_down: bool | None = None
    avd: bool | None = None
    avd_first: bool | None = None
    final_drop: float | None = None
    zero_init_last: bool = True
    dropblock: DropBlockConfig = field(default_factory=DropBlockConfig)
    weights: str = ""  # optional checkpoint / official state_dict to start from
    weights_ema: bool = False  # with weights a resnest-train checkpoint: start from its EMA weights


@dataclass
class DaliConfig:
    device: str = "auto"  # auto | cpu | gpu
    threads: int = 4  # DALI CPU threads per process (on the CPU: that many 1-thread train pipelines)
    prefetch: int = 2
    hw_decoder_load: float = 0.65  # share of JPEGs sent to the A100/H100 hardware decoder


@dataclass
class SyntheticConfig:
    train_images: int = 12800
    val_images: int = 1280
    num_classes: int = 1000


@dataclass
class DataConfig:
    root: str = ""  # ImageNet layout: root/train/<class>/*, root/val/<class>/*
    backend: str = "auto"  # auto (dali when installed, else torchvision) | dali | torchvision | synthetic
    train_list: str = ""  # optional file list "relative/path label" (DALI file_list style)
    val_list: str = ""
    skip_bad_images: bool = False
    workers: int = 8  # torchvision DataLoader workers per process
    train_crop: int = 224
    eval_crop: int | None = None  # None: same as train_crop
    eval_ratio: float = 0.875  # eval resizes the short side to eval_crop / eval_ratio
    rrc_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    rrc_ratio: list[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    hflip: bool = True
    autoaugment: bool = True  # the ImageNet policy
    autoaugment_interpolation: str = "nearest"  # rotate/shear sampling: nearest (torchvision, official) | bilinear
    color_jitter: float = 0.0  # brightness/contrast/saturation strength
    lighting: float = 0.0  # AlexNet-style PCA lighting noise std
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    dali: DaliConfig = field(default_factory=DaliConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class OptimConfig:
    base_lr: float = 0.1  # per 256 images: peak LR = base_lr * global_batch / 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = True
    warmup_epochs: float = 5.0
    warmup_start_lr: float = 0.0
    final_lr: float = 0.0
    clip_grad_norm: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 270
    batch_size: int = 128  # per process
    accum_steps: int = 1  # gradient accumulation; counts in the global batch
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_off_epoch: int = 0  # 0: mixup for the whole run
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    # GPU numerics (engine.configure_backends). cuDNN benchmark times the conv algorithms once
    # per shape and keeps the fastest; TF32 runs fp32 matmuls/convs on tensor cores (10-bit
    # mantissa inputs, fp32 accumulation; Ampere and later). deterministic: deterministic
    # algorithms only and no benchmark, for bitwise-repeatable GPU runs (slower).
    cudnn_benchmark: bool = True  # ignored (off) when deterministic
    tf32: bool = True
    deterministic: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    sync_bn: bool = False
    seed: int = 0
    max_steps_per_epoch: int = 0  # 0: the whole epoch; >0 caps it (smoke tests, benchmarks)
    eval_every: int = 1  # epochs


@dataclass
class DistConfig:
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    timeout_min: int = 30
    find_unused_parameters: bool = False
    bucket_cap_mb: int = 25


@dataclass
class OutputConfig:
    dir: str = "runs/default"
    log_every: int = 50  # steps between console lines / TensorBoard scalars
    save_every_epochs: int = 10  # keep a numbered checkpoint every N epochs
    keep_last: int = 3  # numbered checkpoints to keep
    save_every_steps: int = 0  # also refresh last.pth every N steps (0: per epoch only)
    tensorboard: bool = True
    image_grid: bool = True
    progress: str = "auto"  # auto (bar on a terminal, lines otherwise) | bar | lines


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    device: str = "auto"  # auto | cpu | cuda
    resume: str = "auto"  # auto: continue from output.dir/checkpoints/last.pth if present | none | a path


# ---------------------------------------------------------------------------------------
# Loading: YAML with `base:` inheritance, dotted overrides, type checks
# ---------------------------------------------------------------------------------------

def load_config(path: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """The resolved config: schema defaults <- YAML file (and its bases) <- overrides, passed
    through the one pre-flight check (``preflight.preflight``: types, ranges, cross-key
    rules, model construction). Raises ``ConfigError``."""
    merged: dict = {}
    if path:
        merged = _load_yaml_tree(os.path.abspath(path), chain=())
    for item in overrides:
        key, value = _parse_override(item)
        _build(Config, _nest(key, value), where=f"command-line override '{item}'", prefix="")
        _deep_merge(merged, _nest(key, value))
    cfg = _build(Config, merged, where=path or "the command line", prefix="")
    return _preflight(cfg)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_from_dict(data: dict, where: str = "a checkpoint") -> Config:
    return _preflight(_build(Config, data, where=where, prefix=""))


def _preflight(cfg: Config) -> Config:
    from .preflight import preflight  # it reads this module's schema
    return preflight(cfg)


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _load_yaml_tree(path: str, chain: tuple) -> dict:
    if path in chain:
        cycle = " -> ".join(list(chain) + [path])
        raise ConfigError(f"Config files inherit from each other in a cycle: {cycle}. Remove one 'base:' entry.")
    data = _read_yaml(path, chain)
    bases = data.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"In {path}: 'base' must be a path or a list of paths (relative to this file), "
                          f"got {bases!r}.")
    _build(Config, data, where=path, prefix="")  # type errors name the file that made them
    merged: dict = {}
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        _deep_merge(merged, _load_yaml_tree(base_path, chain + (path,)))
    _deep_merge(merged, data)
    return merged


def _read_yaml(path: str, chain: tuple) -> dict:
    referrer = f" (the 'base' of {chain[-1]})" if chain else ""
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path}{referrer} does not exist. Check the path "
                          "(a 'base:' path is relative to the file that names it).")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path}{referrer} is not valid YAML{describe_yaml_error(e)}. "
                          "Fix the syntax there (indentation, a missing ':' or an unclosed bracket).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path}{referrer} must hold a mapping of sections "
                          f"(model:, data:, train: ...), not a {type(data).__name__}.")
    return data


def describe_yaml_error(e: yaml.YAMLError) -> str:
    """' at line L, column C: problem' for a YAML syntax error."""
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{at}: {getattr(e, 'problem', None) or e}"


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"Command-line argument '{item}' is not an override: write section.key=value, "
                          "e.g. train.epochs=2 or data.root=/data/imagenet.")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text  # a plain string that YAML cannot parse, e.g. 'a: b: c'
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _deep_merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        keys.append(name)
        if dataclasses.is_dataclass(_hint(cls, f.name)):
            keys += _all_keys(_hint(cls, f.name), name + ".")
    return keys


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _check_keys(data: dict, cls: type, where: str, prefix: str = "") -> None:
    """Unknown keys are an error naming the source, the key and the closest valid key."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in names:
            candidates = _all_keys(Config)
            close = difflib.get_close_matches(full, candidates, n=1, cutoff=0.5) or \
                difflib.get_close_matches(str(key), [c.rsplit(".", 1)[-1] for c in candidates], n=1)
            hint = ""
            if close:
                match = close[0]
                if "." not in match and match not in candidates:
                    match = next(c for c in candidates if c.endswith("." + match) or c == match)
                hint = f" Did you mean '{match}'?"
            raise ConfigError(f"Unknown config key '{full}' in {where}.{hint} "
                              "The valid keys are the fields of resnest_train/config.py "
                              "(python train.py --print-config lists them with their values).")
        sub = _hint(cls, key)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            _check_keys(value, sub, where, full + ".")


def _build(cls: type, data: dict, where: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"Config key '{prefix.rstrip('.') or '<top>'}' in {where} must be a mapping "
                          f"of keys, got {data!r}.")
    _check_keys(data, cls, where, prefix)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint = _hint(cls, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, data[f.name] or {}, where, key + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], hint, key, where)
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    if origin is list:
        item = typing.get_args(hint)[0]
        names = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {names.get(item, item)}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    def fail() -> typing.NoReturn:
        raise ConfigError(f"Config key '{key}' in {where} must be {_type_name(hint)}, got {value!r} "
                          f"({type(value).__name__}). Fix the value there.")

    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return _coerce(value, inner, key, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            fail()
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, key, where) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            fail()
        return str(value)
    return value
