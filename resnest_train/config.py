"""The config schema: the one list of every knob and its default, as dataclasses.

``Config`` holds one section per part of the code (``model``, ``data``, ``optim``, ``train``,
``dist``, ``output``); each builder takes only its section. Reading YAML files and command-line
overrides into a ``Config`` is ``config_loader.load_config``; the ranges and rules every value
must meet are ``preflight.RANGES`` and ``preflight.preflight``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DropBlockConfig:
    """``model.dropblock``: where DropBlock sits (stages, sites) and its block size and final probability.

    The paper's recipe: layer3 and layer4, block 3, after bn1, the split-attention output and bn3,
    ramped linearly to 0.1 (configs/base/recipe.yaml).
    """

    stages: list[int] = field(default_factory=lambda: [3, 4])  # 1..4 = layer1..layer4
    sites: list[str] = field(default_factory=lambda: ["bn1", "splat", "bn3"])
    block_size: int = 3
    prob: float = 0.0  # final drop probability; the paper's recipe sets 0.1
    schedule: str = "linear"  # linear: prob * (epoch + 1) / epochs; constant: prob


@dataclass
class ModelConfig:
    """``model``: the named variant (``models.list_models``), its architecture overrides, the init."""

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
    """``data.dali``: where DALI decodes and augments (cpu, gpu, auto = the trainer's device) and its threads."""

    device: str = "auto"  # auto | cpu | gpu
    threads: int = 4  # DALI CPU threads per process (on the CPU: that many 1-thread train pipelines)
    prefetch: int = 2
    hw_decoder_load: float = 0.65  # share of JPEGs sent to the A100/H100 hardware decoder


@dataclass
class SyntheticConfig:
    """``data.synthetic``: the size of the random data set of ``data.backend: synthetic``."""

    train_images: int = 12800
    val_images: int = 1280
    num_classes: int = 1000


@dataclass
class CropScheduleConfig:
    """``data.train_crop_schedule``: progressive resizing, FFCV's ``ProgressiveResizing`` rule
    (ffcv-imagenet ``train_imagenet.py``: ``min_res``, ``max_res``, ``start_ramp``, ``end_ramp``).

    Epoch ``e`` (0-based) trains at ``start_crop`` up to ``start_ramp``, at ``data.train_crop`` from
    ``end_ramp`` on, and in between at the linear interpolation rounded to a multiple of ``step``
    (FFCV: 32); ``common.train_crop_at`` is the formula. ``start_crop: 0`` turns it off.
    """

    start_crop: int = 0  # 0: off; else the first epochs' crop (FFCV's min_res)
    start_ramp: int = 0  # the last epoch (0-based) at start_crop
    end_ramp: int = 0  # the first epoch (0-based) at data.train_crop (FFCV's max_res)
    step: int = 32  # crops in the ramp are multiples of step


@dataclass
class DataConfig:
    """``data``: the dataset, the backend, and the train/eval transforms (crop sizes in pixels)."""

    root: str = ""  # ImageNet layout: root/train/<class>/*, root/val/<class>/*; or tar shards (make_shards)
    format: str = "auto"  # auto (shards when root holds a shard manifest.json) | folder | shards
    backend: str = "auto"  # auto (dali when installed, else torchvision) | dali | torchvision | synthetic
    train_list: str = ""  # optional file list "relative/path label" (DALI file_list style)
    val_list: str = ""
    skip_bad_images: bool = False
    workers: int = 8  # torchvision DataLoader workers per process
    train_crop: int = 224
    train_crop_schedule: CropScheduleConfig = field(default_factory=CropScheduleConfig)  # off by default
    eval_crop: int | None = None  # None: same as train_crop
    eval_ratio: float = 0.875  # eval resizes the short side to eval_crop / eval_ratio
    rrc_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    rrc_ratio: list[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    hflip: bool = True
    augment: str = "autoaugment"  # autoaugment (the ImageNet policy) | randaugment | trivialaugment | none
    randaugment_num_ops: int = 2  # RandAugment: operations per image (torchvision's default)
    randaugment_magnitude: int = 9  # RandAugment: magnitude bin of 0..30 (torchvision's default)
    autoaugment_interpolation: str = "nearest"  # rotate/shear sampling: nearest (torchvision, official) | bilinear
    color_jitter: float = 0.0  # brightness/contrast/saturation strength
    lighting: float = 0.0  # AlexNet-style PCA lighting noise std
    repeated_aug: int = 1  # N > 1: each sampled image N times per epoch, on N ranks (DeiT's RASampler)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    random_erasing: float = 0.0  # probability of torchvision's RandomErasing after normalisation; 0: off
    dali: DaliConfig = field(default_factory=DaliConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class OptimConfig:
    """``optim``: the optimizer, weight decay and the warm-up + decay LR schedule.

    The paper's recipe: SGD with Nesterov momentum, then cosine to 0. LRs are per 256 images
    (``base_lr``): the peak LR is ``base_lr x global_batch / 256`` (Goyal et al.), for every
    optimizer and schedule. LAMB and LARS are timm's (``optim.build_optimizer``); the schedule
    is ``optim.lr_at``.
    """

    name: str = "sgd"  # sgd (the paper) | lamb | lars: timm's Lamb / Lars, for large batches
    base_lr: float = 0.1  # per 256 images: peak LR = base_lr * global_batch / 256
    momentum: float = 0.9  # sgd and lars
    nesterov: bool = True  # sgd and lars
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # lamb: the moment decay rates (timm's)
    trust_coeff: float = 0.001  # lars: the trust coefficient of the layer-wise LR (timm's, MLPerf's)
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = True  # also keeps norm/bias out of lamb's and lars's trust ratio
    schedule: str = "cosine"  # after warm-up: cosine (the paper; to final_lr) | step
    warmup_epochs: float = 5.0
    warmup_start_lr: float = 0.0
    final_lr: float = 0.0  # the LR floor after warm-up: cosine ends at it, step decay stops at it
    step_epochs: list[int] = field(default_factory=lambda: [30, 60, 90])  # step: LR x step_gamma at each
    step_gamma: float = 0.1
    clip_grad_norm: float | None = None


@dataclass
class TrainConfig:
    """``train``: epochs, batch, accumulation, the loss (label smoothing, mixup), precision and options."""

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
class FinetuneConfig:
    # Transfer learning from model.weights (resnest_train/finetune.py). Stages count the stem
    # as stage 0, layer1..layer4 as 1..4 and the classifier as 5.
    freeze_stages: int = 0  # freeze stages 0..N-1 (weights and BN statistics): 0 none, 1 the stem, 5 all but fc
    freeze_bn: bool = False  # every BatchNorm keeps its pretrained statistics and affine: for small batches
    body_lr_mult: float = 1.0  # LR multiplier of every layer but the classifier (the new head)
    layer_decay: float = 1.0  # layer-wise LR decay: stage s also gets layer_decay ** (5 - s)


@dataclass
class DistConfig:
    """``dist``: the torch.distributed backend and DDP's settings."""

    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    timeout_min: int = 30
    find_unused_parameters: bool = False
    bucket_cap_mb: int = 25


@dataclass
class OutputConfig:
    """``output``: the run directory (``rundir.RunDir``), logging, checkpoints and the progress display."""

    dir: str = "runs/default"
    log_every: int = 50  # steps between console lines / TensorBoard scalars
    save_every_epochs: int = 10  # keep a numbered checkpoint every N epochs
    keep_last: int = 3  # numbered checkpoints to keep
    save_every_steps: int = 0  # also refresh last.pth every N steps (0: per epoch only)
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard | mlflow | wandb
    experiment: str = ""  # MLflow experiment / W&B project; "": the folder above dir (a sweep's runs share it)
    mlflow_uri: str = ""  # MLflow tracking URI (server or store); "": MLFLOW_TRACKING_URI or MLflow's default
    wandb_mode: str = "offline"  # offline (no network; `wandb sync` uploads later) | online
    image_grid: bool = True
    progress: str = "auto"  # auto (bar on a terminal, lines otherwise) | bar | lines


@dataclass
class Config:
    """The whole config: one section per part of the code, plus the device and what to resume from."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    device: str = "auto"  # auto | cpu | cuda
    resume: str = "auto"  # auto: continue from output.dir/checkpoints/last.pth if present | none | a path
