"""The pre-flight check: every rule a config must meet before anything runs, in one place.

``preflight(cfg)`` is the one check. ``load_config`` runs it on every config it returns, so
``train.py``, ``train.py --dry-run`` and ``scripts/sweep.py`` (which loads each run's config
the way train.py will) accept and refuse exactly the same configs. It checks, in order:

1. every key's type (the dataclass annotations of config.py);
2. every choice key against ``CHOICES``;
3. every number against ``RANGES`` (each item of a list of numbers too);
4. the rules across keys (``CROSS_KEY_RULES``);
5. that the model builds: ``create_model`` with the config's name, overrides and DropBlock,
   on the meta device (no memory, no weights; well under a second even for ResNeSt-269).

It needs neither the dataset nor the device. The rules that do stay apart and run where the
trainer knows them: ``check_device`` (fp16 and SyncBN need CUDA; SyncBN's batch is the
global one), ``check_steps_per_epoch`` (an epoch must hold an optimizer step) and
``check_final_lr`` (the LR floor at most the peak LR, which depends on the global batch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .config import Config
from .config_loader import coerce, field_type, get_key
from .data import BACKENDS
from .data.common import AA_INTERPOLATIONS, AUGMENT_POLICIES
from .data.shards import FORMATS
from .errors import ConfigError
from .models import create_model
from .models.dropblock import SCHEDULES, SITES
from .models.resnest import arch_overrides

# ---------------------------------------------------------------------------------------
# Choices and ranges, as data
# ---------------------------------------------------------------------------------------

# For a list key, each item must be one of the choices.
CHOICES = {
    "model.dropblock.schedule": SCHEDULES,
    "model.dropblock.sites": SITES,
    "data.backend": BACKENDS,
    "data.format": FORMATS,
    "data.augment": AUGMENT_POLICIES,
    "data.autoaugment_interpolation": AA_INTERPOLATIONS,
    "data.dali.device": ("auto", "cpu", "gpu"),
    "optim.name": ("sgd", "lamb", "lars"),
    "optim.schedule": ("cosine", "step"),
    "train.amp": ("none", "bf16", "fp16"),
    "dist.backend": ("auto", "nccl", "gloo"),
    "output.progress": ("auto", "bar", "lines"),
    "output.loggers": ("tensorboard", "mlflow", "wandb"),
    "output.wandb_mode": ("offline", "online"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class Range:
    """The valid values of one numeric config key; for a list key, of each item.

    ``low``/``high`` are the bounds (``high`` None: unbounded), included unless ``low_open``
    / ``high_open``; NaN and infinity are never valid. ``length`` fixes a list's number of items; ``ordered`` asks for a
    (min, max) pair. ``why`` is the reason or source, shown in the error.
    """

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""
    length: int | None = None
    ordered: bool = False

    def holds(self, value: Any) -> bool:
        """True when ``value`` (a number, or a list of numbers for a list key) is valid."""
        if isinstance(value, list):
            if self.length is not None and len(value) != self.length:
                return False
            if self.ordered and any(a > b for a, b in zip(value, value[1:])):
                return False
            return all(self._holds(v) for v in value)
        return self._holds(value)

    def _holds(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if x <= self.low if self.low_open else x < self.low:
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def describe(self, is_list: bool = False) -> str:
        """The range in words: ``in [0, 1)``, ``> 0``, ``a list of 3 numbers, each in (0, 1]``."""
        if self.high is None:
            bounds = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            bounds = (
                f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
            )
        if not is_list:
            return bounds
        count = f"{self.length} numbers" if self.length is not None else "numbers"
        order = ", the first <= the second" if self.ordered else ""
        return f"a list of {count}, each {bounds}{order}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


NONNEG = Range(0)
POSITIVE_INT = Range(1)
PROBABILITY = Range(0, 1)
CROP = Range(32, why="ResNeSt's total stride is 32: a smaller crop collapses layer4 to a single position")

# Every number the user can set (a test checks this covers every int / float / list-of-number
# field of the schema). Optional keys may also be null; a null is not range-checked.
RANGES: dict[str, Range] = {
    # model
    "model.radix": Range(0, why="splits per cardinal group; 0 is ResNet-D without split attention"),
    "model.cardinality": POSITIVE_INT,
    "model.bottleneck_width": POSITIVE_INT,
    "model.stem_width": POSITIVE_INT,
    "model.final_drop": Range(0, 1, high_open=True, why="dropout probability before the classifier"),
    "model.dropblock.stages": Range(1, 4, why="1..4 are layer1..layer4; the paper uses [3, 4]"),
    "model.dropblock.block_size": Range(1, why="the side of a dropped square in feature-map pixels; the paper uses 3"),
    "model.dropblock.prob": Range(
        0,
        1,
        high_open=True,
        why="the final drop probability (the linear "
        "schedule reaches it at the last epoch); 1 would drop every activation; "
        "the paper uses 0.1",
    ),
    # data
    "data.workers": NONNEG,
    "data.train_crop": CROP,
    "data.train_crop_schedule.start_crop": Range(
        0, why="0 turns progressive resizing off; else the crop of the first epochs (FFCV's min_res)"
    ),
    "data.train_crop_schedule.start_ramp": Range(0, why="the last epoch (0-based) trained at start_crop"),
    "data.train_crop_schedule.end_ramp": Range(0, why="the first epoch (0-based) trained at data.train_crop"),
    "data.train_crop_schedule.step": Range(
        1, why="crops in the ramp are rounded to multiples of step (FFCV uses 32, ResNeSt's total stride)"
    ),
    "data.repeated_aug": Range(
        1, why="copies of each sampled image per epoch (DeiT uses 3); 1 turns repeated augmentation off"
    ),
    "data.eval_crop": CROP,
    "data.eval_ratio": Range(
        0, 1, low_open=True, why="eval resizes the short side to eval_crop / eval_ratio; the paper uses 0.875 at 224 px"
    ),
    "data.rrc_scale": Range(
        0,
        1,
        low_open=True,
        length=2,
        ordered=True,
        why="RandomResizedCrop's (min, max) share of the image area; the paper uses [0.08, 1.0]",
    ),
    "data.rrc_ratio": Range(
        0,
        low_open=True,
        length=2,
        ordered=True,
        why="RandomResizedCrop's (min, max) aspect ratio; the paper uses [0.75, 1.333]",
    ),
    "data.color_jitter": Range(
        0,
        why="brightness/contrast/saturation factors are drawn from [max(0, 1 - s), 1 + s] (torchvision's ColorJitter)",
    ),
    "data.lighting": Range(0, why="the standard deviation of AlexNet's PCA lighting noise; the paper uses 0.1"),
    "data.randaugment_num_ops": Range(
        1, why="RandAugment's operations applied in turn to each image; torchvision's default is 2"
    ),
    "data.randaugment_magnitude": Range(
        0, 30, why="RandAugment's magnitude bin of torchvision's 31 (0..30); torchvision's default is 9"
    ),
    "data.random_erasing": Range(
        0, 1, why="the probability that a training image gets an erased rectangle (torchvision's RandomErasing)"
    ),
    "data.mean": Range(
        0,
        1,
        length=3,
        why="the R, G, B means in [0, 1] pixel units (ImageNet: [0.485, 0.456, 0.406], not 0-255 values)",
    ),
    "data.std": Range(
        0,
        1,
        low_open=True,
        length=3,
        why="the R, G, B standard deviations pixels are divided by, in [0, 1] pixel units "
        "(ImageNet: [0.229, 0.224, 0.225], not 0-255 values)",
    ),
    "data.dali.threads": Range(1, why="DALI CPU threads per process"),
    "data.dali.prefetch": Range(1, why="DALI's prefetch queue depth in batches"),
    "data.dali.hw_decoder_load": Range(0, 1, why="the share of JPEGs sent to the hardware decoder"),
    "data.synthetic.train_images": POSITIVE_INT,
    "data.synthetic.val_images": POSITIVE_INT,
    "data.synthetic.num_classes": POSITIVE_INT,
    # optim
    "optim.base_lr": Range(
        0, low_open=True, why="the LR per 256 images: peak LR = base_lr x global batch / 256; the paper uses 0.1"
    ),
    "optim.momentum": Range(0, 1, high_open=True, why="SGD's and LARS's momentum; the paper uses 0.9"),
    "optim.betas": Range(
        0,
        1,
        high_open=True,
        length=2,
        why="LAMB's decay rates of the gradient's first and second moments (Adam's beta1, beta2); "
        "timm's default [0.9, 0.999]",
    ),
    "optim.trust_coeff": Range(
        0,
        low_open=True,
        why="LARS's trust coefficient: a layer's LR is lr x trust_coeff x |w| / (|g| + weight_decay x |w|); "
        "timm's and MLPerf's 0.001",
    ),
    "optim.weight_decay": Range(0, why="the paper uses 1e-4"),
    "optim.warmup_epochs": Range(0, why="linear warm-up length; longer than train.epochs never reaches the peak LR"),
    "optim.warmup_start_lr": NONNEG,
    "optim.final_lr": Range(0, why="the LR floor after warm-up, at most the peak LR; 0 is the paper's cosine to 0"),
    "optim.step_epochs": Range(1, why="the epochs (from the start of the run) at which step decay multiplies the LR"),
    "optim.step_gamma": Range(
        0, 1, low_open=True, why="step decay's factor at each of optim.step_epochs; torchvision's references use 0.1"
    ),
    "optim.clip_grad_norm": Range(0, low_open=True, why="the max gradient norm; null turns clipping off"),
    # train
    "train.epochs": POSITIVE_INT,
    "train.batch_size": Range(1, why="images per process"),
    "train.accum_steps": POSITIVE_INT,
    "train.label_smoothing": Range(
        0, 1, high_open=True, why="1 would make every target uniform: nothing to learn; the paper uses 0.1"
    ),
    "train.mixup_alpha": Range(0, why="mixup's Beta(alpha, alpha); 0 turns it off; the paper uses 0.2"),
    "train.cutmix_alpha": Range(0, why="CutMix's Beta(alpha, alpha); 0 turns it off"),
    "train.mixup_prob": PROBABILITY,
    "train.mixup_off_epoch": Range(0, why="the epoch mixup stops at; 0 keeps it on for the whole run"),
    "train.ema_decay": Range(0, 1, low_open=True, high_open=True, why="the EMA weight of the old average"),
    "train.seed": Range(0, 2**32, high_open=True, why="data order and augmentation use the seed's 32 bits"),
    "train.max_steps_per_epoch": Range(0, why="0 runs the whole epoch"),
    "train.eval_every": Range(1, why="epochs between evaluations (the last epoch always evaluates)"),
    # finetune
    "finetune.freeze_stages": Range(
        0,
        5,
        why="stages 0..N-1 are frozen: 0 is the stem, 1..4 are layer1..layer4; 5 leaves only the classifier to train",
    ),
    "finetune.body_lr_mult": Range(
        0,
        low_open=True,
        why="the body's LR is body_lr_mult x the scheduled LR; "
        "to keep a stage fixed, freeze it (finetune.freeze_stages)",
    ),
    "finetune.layer_decay": Range(
        0,
        1,
        low_open=True,
        why="stage s (0 = stem .. 4 = layer4) learns at "
        "layer_decay ** (5 - s) x the scheduled LR; 1 turns the decay off",
    ),
    # dist
    "dist.timeout_min": Range(1, why="minutes a collective may wait for the other processes"),
    "dist.bucket_cap_mb": Range(1, why="DDP's gradient bucket size in MiB"),
    # output
    "output.log_every": Range(1, why="steps between log lines"),
    "output.save_every_epochs": Range(0, why="0 keeps no numbered checkpoints (last.pth only)"),
    "output.keep_last": Range(0, why="numbered checkpoints kept"),
    "output.save_every_steps": Range(0, why="0 refreshes last.pth once per epoch only"),
}


# ---------------------------------------------------------------------------------------
# Rules across keys
# ---------------------------------------------------------------------------------------


def batch_norm_batch(cfg: Config) -> None:
    """A per-process batch of 1 cannot train (PyTorch: 'Expected more than 1 value per channel
    when training'): the BatchNorm after split-attention's global pooling sees one value per
    image and channel. With SyncBN the global batch counts (``check_device`` checks it)."""
    if cfg.train.batch_size < 2 and not cfg.train.sync_bn:
        raise ConfigError(
            f"Config key 'train.batch_size' is {cfg.train.batch_size}, but training needs at least 2 images "
            "per process: BatchNorm in training mode needs more than one value per channel, and the "
            "BatchNorm after split-attention's global pooling sees exactly one value per image (PyTorch "
            "stops with 'Expected more than 1 value per channel when training'). Set "
            "train.batch_size >= 2 (or train.sync_bn=true on several GPUs, where BatchNorm sees the global "
            "batch)."
        )


def mixup_pairs(cfg: Config) -> None:
    """timm's Mixup pairs each image with the batch reversed, so the batch must be even."""
    t = cfg.train
    if (t.mixup_alpha > 0 or t.cutmix_alpha > 0) and t.batch_size % 2:
        raise ConfigError(
            f"Config key 'train.batch_size' is {t.batch_size}; mixup/cutmix pair each batch with its reverse "
            "and need an even per-process batch. Use an even batch size or set train.mixup_alpha=0 and "
            "train.cutmix_alpha=0."
        )


def nesterov_momentum(cfg: Config) -> None:
    """torch.optim.SGD and timm's Lars refuse Nesterov momentum without momentum (LAMB uses neither)."""
    if cfg.optim.name in ("sgd", "lars") and cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise ConfigError(
            "Config key 'optim.nesterov' is true but 'optim.momentum' is 0: Nesterov momentum needs a "
            f"momentum ({'torch.optim.SGD' if cfg.optim.name == 'sgd' else 'timm.optim.Lars'} refuses it). "
            "Set optim.momentum > 0 (the paper: 0.9) or optim.nesterov=false."
        )


def lars_excludes_norm_bias(cfg: Config) -> None:
    """MLPerf's LARS leaves norm parameters and biases out of weight decay and of the trust
    ratio. timm's Lars adapts every group with weight decay, so it needs them in their own
    no-decay group (``optim.param_groups``)."""
    if cfg.optim.name == "lars" and not cfg.optim.no_decay_norm_bias:
        raise ConfigError(
            "Config key 'optim.no_decay_norm_bias' is false with optim.name=lars: LARS (as in MLPerf's "
            "reference) leaves norm parameters and biases out of both weight decay and its layer-wise "
            "trust ratio, and timm's Lars applies the trust ratio to every parameter that decays, so "
            "decaying norm parameters and biases would be adapted too. Set optim.no_decay_norm_bias=true."
        )


def step_decay_after_warmup(cfg: Config) -> None:
    """Step decay's milestones fall after the warm-up: one inside it would cut the LR the
    moment warm-up reaches the peak."""
    o = cfg.optim
    early = [e for e in o.step_epochs if e <= o.warmup_epochs]
    if o.schedule == "step" and early:
        raise ConfigError(
            f"Config key 'optim.step_epochs' is {o.step_epochs}, but {early[0]} does not come after the "
            f"warm-up (optim.warmup_epochs={o.warmup_epochs:g}): step decay starts from the peak LR once "
            "warm-up ends. Set every optim.step_epochs item above optim.warmup_epochs, or shorten the warm-up."
        )


def freezing_needs_weights(cfg: Config) -> None:
    """Frozen layers keep the weights they start with: random ones never learn, and a frozen
    BatchNorm at its initial statistics passes activations unnormalised, with the residual
    branches' zero-initialised last gamma (``model.zero_init_last``) switching them off for good."""
    f = cfg.finetune
    if (f.freeze_stages > 0 or f.freeze_bn) and not cfg.model.weights:
        key, value = (
            ("finetune.freeze_stages", f.freeze_stages) if f.freeze_stages > 0 else ("finetune.freeze_bn", True)
        )
        raise ConfigError(
            f"Config key '{key}' is {str(value).lower()}, but 'model.weights' is empty: frozen layers keep the weights "
            "they start with, and random weights (or BatchNorm statistics never measured) would stay useless. "
            f"Set model.weights to a pretrained checkpoint or state_dict, or set {key}="
            f"{'0' if key.endswith('stages') else 'false'} to train from scratch."
        )


def crop_schedule(cfg: Config) -> None:
    """``data.train_crop_schedule`` (FFCV's progressive resizing, ``data.common.train_crop_at``), when on:
    the start crop is a crop the model takes (>= 32) no larger than ``data.train_crop``, both are
    multiples of ``step`` (so every crop of the ramp lies between them), the ramp starts no later than
    it ends, and it ends at a trained epoch (so the last epochs train at ``data.train_crop``)."""
    s, d = cfg.data.train_crop_schedule, cfg.data
    if not s.start_crop:
        return
    key = "data.train_crop_schedule"
    if s.start_crop < CROP.low:
        raise ConfigError(
            f"Config key '{key}.start_crop' is {s.start_crop}: {CROP.why}. Set it to at least "
            f"{_num(CROP.low)}, or to 0 to turn progressive resizing off."
        )
    if s.start_crop > d.train_crop:
        raise ConfigError(
            f"Config key '{key}.start_crop' is {s.start_crop}, larger than data.train_crop={d.train_crop}: the "
            f"schedule grows the crop from start_crop to data.train_crop. Set start_crop <= {d.train_crop}."
        )
    for name, size in ((f"{key}.start_crop", s.start_crop), ("data.train_crop", d.train_crop)):
        if size % s.step:
            raise ConfigError(
                f"Config key '{name}' is {size}, not a multiple of {key}.step={s.step}: the crops of the ramp "
                f"are rounded to multiples of step, so both ends must be multiples too. Change {name} or "
                f"set {key}.step to a divisor of both (FFCV uses 32)."
            )
    if s.start_ramp > s.end_ramp:
        raise ConfigError(
            f"Config key '{key}.start_ramp' is {s.start_ramp}, after end_ramp={s.end_ramp}: the crop grows "
            f"from epoch start_ramp to epoch end_ramp. Set start_ramp <= end_ramp."
        )
    if s.end_ramp >= cfg.train.epochs:
        raise ConfigError(
            f"Config key '{key}.end_ramp' is {s.end_ramp}, but train.epochs={cfg.train.epochs} trains epochs "
            f"0 to {cfg.train.epochs - 1}: the ramp would never reach data.train_crop={d.train_crop}. Set "
            f"end_ramp <= {cfg.train.epochs - 1}."
        )


CROSS_KEY_RULES: tuple[Callable[[Config], None], ...] = (
    batch_norm_batch,
    mixup_pairs,
    nesterov_momentum,
    lars_excludes_norm_bias,
    step_decay_after_warmup,
    freezing_needs_weights,
    crop_schedule,
)


# ---------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------


def preflight(cfg: Config) -> Config:
    """Check ``cfg`` against every rule that needs neither the dataset nor the device;
    return it unchanged. Raises ``ConfigError`` (one paragraph: key, value, valid range,
    why, fix) at the first broken rule."""
    check_types(cfg)
    check_choices(cfg)
    check_ranges(cfg)
    for rule in CROSS_KEY_RULES:
        rule(cfg)
    check_model(cfg)
    check_loggers(cfg)
    return cfg


def check_loggers(cfg: Config) -> None:
    """Every tracker of ``output.loggers`` is installed (MLflow and W&B are optional extras)."""
    from .trackers import EXTRAS, missing

    absent = missing(cfg.output.loggers)
    if absent:
        raise ConfigError(
            f"Config key 'output.loggers' lists {', '.join(absent)}, which is not installed. Install it "
            f"(pip install {' '.join(EXTRAS[name] for name in absent)}, or the resnest-train extra of that "
            f"name) or remove it from output.loggers."
        )


def leaf_types(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every settable key of the schema (dotted) and its type annotation."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = field_type(cls, f.name)
        if dataclasses.is_dataclass(hint):
            out.update(leaf_types(hint, prefix + f.name + "."))
        else:
            out[prefix + f.name] = hint
    return out


def check_types(cfg: Config) -> None:
    """Each value has its annotated type (load_config guarantees it; a Config built in code may not)."""
    for key, hint in leaf_types().items():
        coerce(get_key(cfg, key), hint, key, where="the config")


def check_choices(cfg: Config) -> None:
    """Every key with a fixed set of values holds one of them; ConfigError naming the key otherwise."""
    for key, allowed in CHOICES.items():
        value = get_key(cfg, key)
        names = ", ".join(map(repr, allowed))
        if isinstance(value, list):
            bad = [v for v in value if v not in allowed]
            if bad:
                raise ConfigError(
                    f"Config key '{key}' is {value!r}: {', '.join(map(repr, bad))} is not one of "
                    f"{names}. Set each item to one of those."
                )
        elif value not in allowed:
            raise ConfigError(f"Config key '{key}' is {value!r}, which is not one of {names}. Set it to one of those.")


def check_ranges(cfg: Config) -> None:
    """Every numeric key lies in its range of ``RANGES``; ConfigError naming the key and the reason otherwise."""
    for key, valid in RANGES.items():
        value = get_key(cfg, key)
        if value is None or valid.holds(value):
            continue
        why = f": {valid.why}" if valid.why else ""
        raise ConfigError(
            f"Config key '{key}' is {value!r}, outside its valid range "
            f"{valid.describe(isinstance(value, list))}{why}. Set {key} within that range."
        )


def check_model(cfg: Config) -> None:
    """The config's model builds: name, architecture overrides and DropBlock placement."""
    m = cfg.model
    arch = tuple(arch_overrides(m).items())
    db = m.dropblock
    dropblock = (tuple(db.stages), tuple(db.sites), db.block_size, db.prob)
    error = _build_error(m.name, arch, dropblock)
    if error:
        keys = ", ".join([f"model.name={m.name}"] + [f"model.{k}={v}" for k, v in arch])
        raise ConfigError(
            f"The model of the config cannot be built ({keys}): {error}. Change those "
            "keys (python -m resnest_train.models lists the variants and their values)."
        )


@functools.lru_cache(maxsize=64)
def _build_error(name: str, arch: tuple, dropblock: tuple) -> str:
    """Build the model on the meta device; '' when it builds, else why not."""
    stages, sites, block_size, prob = dropblock
    try:
        with torch.device("meta"), SkipNormalInit():
            create_model(
                name,
                zero_init_last=True,
                dropblock=dict(stages=list(stages), sites=list(sites), block_size=block_size, prob=prob),
                **dict(arch),
            )
    except (KeyError, ValueError) as e:  # models.ModelError is a ValueError
        return str(e).rstrip(".")
    return ""


class SkipNormalInit(TorchFunctionMode):
    """Leaves normal-distributed weight init out while building a model to check it. On the
    meta device ``normal_`` runs a Python decomposition that imports torch._dynamo (about
    1 s, once per process) for values that mean nothing there; without it ResNeSt-269
    builds in about 0.3 s."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.nn.init.kaiming_normal_, torch.nn.init.normal_, torch.Tensor.normal_):
            return args[0]
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------------------------------
# Rules that need the device or the dataset: the trainer calls these once it knows them
# ---------------------------------------------------------------------------------------


def check_device(cfg: Config, device: Any, world_size: int) -> None:
    """Options the device or the number of processes rule out: fp16 and SyncBN need CUDA,
    and SyncBN's BatchNorm needs more than one image in the global batch."""
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            "Config key 'train.amp' is fp16, which needs a CUDA GPU (its grad scaler and fast "
            "kernels are GPU-only). On the CPU use train.amp=bf16 or none."
        )
    if cfg.train.sync_bn and device.type != "cuda":
        raise ConfigError(
            "Config key 'train.sync_bn' is true, but PyTorch's SyncBatchNorm runs only on GPUs. "
            "Set train.sync_bn=false on the CPU (BN statistics are then per process and "
            "averaged across ranks before each evaluation)."
        )
    if cfg.train.sync_bn and cfg.train.batch_size * world_size < 2:
        raise ConfigError(
            f"Config key 'train.batch_size' is {cfg.train.batch_size} with train.sync_bn on a "
            "single process: BatchNorm in training mode needs more than one value per channel, "
            "so the global batch must hold at least 2 images. Set train.batch_size >= 2 or "
            "train on several GPUs."
        )


def check_steps_per_epoch(cfg: Config, world_size: int, batches_per_epoch: int) -> int:
    """Optimizer steps per epoch (``batches_per_epoch`` per-process batches, accumulated and
    capped by ``train.max_steps_per_epoch``); raises ``ConfigError`` when that is 0."""
    steps = batches_per_epoch // cfg.train.accum_steps
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    if steps == 0:
        raise ConfigError(
            f"An epoch would have no optimizer step: {batches_per_epoch} batches of {cfg.train.batch_size} per "
            f"process with train.accum_steps={cfg.train.accum_steps} on {world_size} process(es). "
            "Lower train.batch_size or train.accum_steps, or use fewer processes."
        )
    return steps


def check_final_lr(cfg: Config, peak: float, global_batch: int) -> None:
    """``optim.final_lr`` is a floor only at or below the peak LR: above it the cosine would climb
    from the peak to it. Raises ConfigError naming both LRs."""
    o = cfg.optim
    if o.final_lr > peak:
        raise ConfigError(
            f"Config key 'optim.final_lr' is {o.final_lr:g}, above the peak LR {peak:.6g} (optim.base_lr "
            f"{o.base_lr:g} x global batch {global_batch} / 256): the LR after warm-up would rise to it "
            "instead of decaying. Set optim.final_lr at most the peak LR (0: the paper's cosine to 0), or "
            "raise optim.base_lr."
        )
