"""The DALI backend: file reader, ROI decoding and augmentation in DALI pipelines.

One pipeline definition per split serves both devices. ``data.dali.device: gpu`` decodes
with ``mixed`` (nvJPEG plus the hardware JPEG decoder, ``data.dali.hw_decoder_load``) and
runs every later operator on the GPU of this rank (``device_id`` = the torch device's
index); ``cpu`` decodes with libjpeg-turbo and runs CPU operators with ``device_id=None``
(no GPU needed); ``auto`` is gpu when torch sees CUDA.

Train pipeline: ``fn.readers.file`` over this rank's file list for the epoch ->
``fn.decoders.image_random_crop`` (region-of-interest decoding at ``rrc_scale`` /
``rrc_ratio``) -> ``fn.resize`` to the epoch's crop (bilinear, antialiased) -> the policy of
``data.augment`` -> colour jitter (``fn.color_twist``) -> ``fn.crop_mirror_normalize`` (random
mirror, mean/std; the PCA lighting offset is folded into a per-sample mean) -> random erasing
(``fn.erase``, ``erasing_region``). A CPU pipeline feeding a CUDA trainer (``ship_uint8``)
stops before the normalisation: it ships uint8 crops (a quarter of the bytes) plus, with
lighting, each sample's mean and, with erasing, its rectangle, copied to the GPU from pinned
memory, where torch applies the same ``(x - mean) / std`` (as the torchvision backend
normalises on the device) and zeroes the rectangle. Every step before it already rounds to
uint8, so without lighting both ways give the same batches up to float32 rounding
(tests/test_gpu_path2.py, tests/test_data_random_erasing.py: within 1e-5). With
lighting the graph's operators are listed in another order (the per-sample mean is an
output rather than an input of the last operator), and DALI seeds operators in that order:
the mirror and lighting draws then differ from the float pipeline's, with the same
distribution, and stay a function of the seed. The policies are torchvision's tables built
with ``nvidia.dali.auto_aug``: AutoAugment's ``AutoAugmentPolicy.IMAGENET`` (25 sub-policies,
10 magnitude bins), RandAugment's and TrivialAugmentWide's 14 operations over 31 bins, each
operation's magnitudes read from torchvision's ``_augmentation_space`` (``torchvision_ops``).
DALI's own ``image_net`` policy is a different table (the TF "v0" one), and its RandAugment and
TrivialAugment suites differ from torchvision's too (RandAugment translates up to 100 px, not
150/331 of the image; solarize thresholds run 256..0; TrivialAugment's enhance factors start at
0.01; shears run the other way), so none is used.

Epoch order: the same epoch plan as the other backends (see ``common.py``). Each epoch
deals this rank's batches round-robin to its pipelines (on the CPU, ``data.dali.threads``
single-threaded pipelines; on the GPU, one), writes each pipeline's files to a
``file_list`` and starts it with a seed that is a function of (seed, epoch, rank, pipeline);
the reader does not shuffle (the order is already shuffled) and each list holds exactly
that pipeline's batches, so the sharding is exact and every rank runs ``steps`` steps. With
``data.repeated_aug`` a file appears in the lists of several ranks (or several times in one),
and each copy takes its own draws from its pipeline's random stream. The
graph is defined once per process and deserialized per pipeline and epoch (0.03-0.1 s
each). The random draws therefore depend on ``data.dali.threads`` on the CPU (the sample
order does not), as they would on the number of DataLoader workers without per-sample
seeding: resume with the same setting to continue bit for bit.

Progressive resizing (``data.train_crop_schedule``): the crop is a constant of the graph, one
serialized graph per crop size (defined the first time an epoch needs that size, ~0.8 s).
The pipelines are deserialized anew at every epoch start anyway, so an epoch at another size
costs nothing more; feeding the size as an argument input instead (``fn.external_source`` into
``fn.resize(size=...)``) would add an operator fed at every iteration for a value fixed for the
epoch, and the graph without a schedule would no longer be the same as before.

Mid-epoch resume: ``set_epoch(e, start_step=k)`` rebuilds epoch ``e``'s pipelines and runs
(and discards) their batches before step ``k`` before yielding, so it yields bit-identical
batches to steps ``k..`` of an uninterrupted epoch (DALI's random operators are seeded per
pipeline and deterministic regardless of thread count; on the GPU, decoder rounding can
differ between the hardware and CUDA JPEG decoders, the random choices do not). The cost
is decoding ``k`` batches again, about ``k / steps`` of an epoch's data time.

Validation: this rank's contiguous shard in a file list read in order with
``pad_last_batch=True``; the padded copies in the last batch are cut off here, so every
image counts once.

Decoding: ``fn.decoders.image*`` with ``output_type=RGB`` and EXIF orientation applied
(DALI's default) follows the rule of ``decode.load_rgb``, which the torchvision backend
applies with PIL; tests/test_data_faults.py compares the two over every image mode.

Unreadable files: DALI cannot skip a file at run time. A failure stops with a DataError
naming the file (found from DALI's message or by checking the files of the failing
batches with DALI's own decoder, ``dali_decode_problem``: a GIF named ``.jpg`` reads fine
in PIL). With ``data.skip_bad_images: true`` the pre-scan, judged by DALI's decoder, removes
bad files before the pipelines are built; a file that fails anyway is added to the scan's
skip list and the error says to run the same command again (resume picks up the checkpoint).

Tar shards (``shards.ShardSplit``, ``data.format``): the val pipeline reads them with DALI's
``fn.readers.webdataset``, given one index file per run of the rank's samples in one tar (the
rank's contiguous share of the folder-ordered val shards: one per tar it touches), and parses the
``.cls`` digits into labels. The train pipeline cannot: that reader returns the samples of its
(tar, index) pairs in their concatenated order, so an epoch plan's random global order would take
one pair per run of samples from the same tar, about one per sample (each one an open file and a
memory map). Instead a ``_Feeder`` reads each batch's bytes at the indexed offsets (threads,
``data.dali.threads``, reading ahead) and feeds the external sources ``encoded`` and ``labels``;
the graph after them is the file graph. The samples of every batch are the folder's; the random
draws are not the same as over the folder (DALI seeds operators by their position in the graph),
and a function of the seed as always.

File lists hold absolute paths as bytes (``file_root='/'``), so names that are not UTF-8
reach DALI as the file system spells them.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .common import (
    AUTOAUGMENT_FILL,
    PCA_EIGVAL,
    PCA_EIGVEC,
    augment_policy,
    autoaugment_interpolation,
    check_enough,
    check_start_step,
    epoch_indices,
    erase_rectangles,
    erasing_probability,
    eval_sizes,
    repeated_aug,
    stream_seed,
    train_crop_at,
    train_steps,
    val_shard,
)
from .decode import load_rgb
from .layout import Split
from .scan import add_bad_image, check_image, dali_name_problem
from .shards import ShardSplit, write_dali_index

# isort: split
import nvidia.dali.fn as fn  # noqa: E402
import nvidia.dali.types as types  # noqa: E402
from nvidia.dali import pipeline_def  # noqa: E402

# ---------------------------------------------------------------------------------------
# Augmentation policies: torchvision's tables, expressed with DALI's auto_aug building blocks
# ---------------------------------------------------------------------------------------

_POLICIES = {}


def _posterize_mask(bits_kept):
    # torchvision's Posterize keeps the `bits_kept` high bits (its magnitude): clear the others.
    n = 8 - int(np.clip(np.round(bits_kept), 0, 8))
    return np.array(np.uint8(255) ^ np.uint8((1 << n) - 1), dtype=np.uint8)


def _shear_x(m):
    return np.array([-m, 0], dtype=np.float32)  # DALI shears the other way for the same sign


def _shear_y(m):
    return np.array([0, -m], dtype=np.float32)


def _translate_x(m):
    return np.array([int(m), 0], dtype=np.float32)  # torchvision shifts by int(magnitude) pixels


def _translate_y(m):
    return np.array([0, int(m)], dtype=np.float32)


def _operations(device: str) -> dict:
    """Every operation of torchvision's policies, by torchvision's name, as a DALI augmentation
    for ``device`` data and the function from torchvision's magnitude to its parameter (None:
    the magnitude itself, or an operation without one).

    Where DALI's stock augmentation is slow on the CPU, an equivalent is written here with
    DALI's fast kernels: contrast with ``brightness_contrast`` around PIL's rounded luma mean
    (DALI's stock one evaluates a float expression over every pixel: 0.9 ms vs 0.25 ms per
    224 px image on one core), solarize and invert as XORs with 255 (same results).
    """
    import nvidia.dali.math as dmath
    from nvidia.dali.auto_aug import augmentations as A
    from nvidia.dali.auto_aug.core import augmentation

    u8_255 = types.Constant(255, dtype=types.UINT8)

    @augmentation(param_device="auto")
    def posterize(data, mask):
        return data & mask

    @augmentation
    def equalize(data, _):
        return fn.equalize(data)

    @augmentation(param_device="auto")
    def sharpness(data, kernel):
        return fn.filter(data, kernel)  # DALI's own sharpness calls the deprecated experimental alias

    @augmentation(param_device="auto")
    def solarize(data, threshold):
        return data ^ ((data >= threshold) * u8_255)  # PIL inverts values >= threshold

    @augmentation
    def invert(data, _):
        return data ^ u8_255

    @augmentation
    def contrast(data, factor):
        # PIL blends with a grey image at the rounded mean of the L (luma) image
        mean = fn.reductions.mean(data, axis_names="HW")
        center = dmath.floor(mean[0] * 0.299 + mean[1] * 0.587 + mean[2] * 0.114 + 0.5)
        return fn.brightness_contrast(data, contrast=factor, contrast_center=center)

    return {
        "Identity": (A.identity, None),
        "ShearX": (A.shear_x, _shear_x),
        "ShearY": (A.shear_y, _shear_y),
        "TranslateX": (A.translate_x_no_shape, _translate_x),
        "TranslateY": (A.translate_y_no_shape, _translate_y),
        "Rotate": (A.rotate, None),
        "Brightness": (A.brightness, A.shift_enhance_range),
        "Color": (A.color, A.shift_enhance_range),
        # the contrast centre is computed from the image, and a GPU node cannot be a named argument
        "Contrast": (contrast if device == "cpu" else A.contrast, A.shift_enhance_range),
        "Sharpness": (sharpness, A.sharpness_kernel),
        "Posterize": (posterize, _posterize_mask),
        "Solarize": (solarize, None),  # the magnitude is the threshold
        "AutoContrast": (A.auto_contrast, None),
        "Equalize": (equalize, None),
        "Invert": (invert, None),
    }


def torchvision_ops(space: dict, device: str = "cpu") -> dict:
    """One policy's operations as DALI augmentations, keyed (and named) by torchvision's names.

    ``space`` is the policy's torchvision table, ``_augmentation_space``: name -> (magnitude of
    each bin, whether its sign is random). Each augmentation gets exactly those magnitudes (DALI's
    ``mag_range`` as an array) and sign rule; operations without a magnitude take none.
    tests/test_data_autoaugment.py compares each with torchvision's ``_apply_op``.
    """
    base = _operations(device)
    ops = {}
    for name, (magnitudes, signed) in space.items():
        aug, to_param = base[name]
        if magnitudes.ndim == 0:
            ops[name] = aug.augmentation(name=name)
        else:
            mags = magnitudes.numpy().astype(np.float32)
            ops[name] = aug.augmentation(mag_range=mags, randomly_negate=bool(signed), mag_to_param=to_param, name=name)
    return ops


def torchvision_imagenet_policy(device: str = "cpu"):
    """torchvision's AutoAugmentPolicy.IMAGENET as a DALI auto_aug Policy for ``device`` data:
    its 25 sub-policies (probabilities, magnitude bins) over ``torchvision_ops`` of its 10-bin table."""
    if device in _POLICIES:
        return _POLICIES[device]
    import torchvision.transforms as T
    from nvidia.dali.auto_aug.core import Policy

    aa = T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)
    # the image size only sizes translations, which the ImageNet table does not use
    ops = torchvision_ops(aa._augmentation_space(10, (1, 1)), device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the table has one p=0 entry, which DALI warns about
        _POLICIES[device] = Policy(
            "torchvision_imagenet",
            num_magnitude_bins=10,
            sub_policies=[[(ops[name], p, mag) for name, p, mag in sub] for sub in aa.policies],
        )
    return _POLICIES[device]


def torchvision_policy_ops(policy: str, size: int, num_ops: int = 2, magnitude: int = 9, device: str = "cpu"):
    """(operations, number of magnitude bins) of torchvision's ``RandAugment(num_ops, magnitude)``
    or ``TrivialAugmentWide()`` (``policy`` randaugment / trivialaugment) for ``size`` x ``size``
    images (RandAugment's translations are a share of the image size): ``torchvision_ops`` of
    its table with its default 31 bins."""
    import torchvision.transforms as T

    if policy == "randaugment":
        tv = T.RandAugment(num_ops=num_ops, magnitude=magnitude)
        space = tv._augmentation_space(tv.num_magnitude_bins, (size, size))
    elif policy == "trivialaugment":
        tv = T.TrivialAugmentWide()
        space = tv._augmentation_space(tv.num_magnitude_bins)
    else:
        raise ValueError(f"no operation table for the policy {policy!r}")
    return torchvision_ops(space, device), tv.num_magnitude_bins


def apply_policy(images, policy: str, device: str, size: int, num_ops: int, magnitude: int, interp):
    """``images`` (uint8 HWC, ``size`` x ``size``, on ``device``) through torchvision's ``policy``
    (``data.augment``) with DALI's samplers: AutoAugment picks one of the 25 sub-policies and runs
    each of its steps with its probability; RandAugment applies ``num_ops`` operations drawn
    uniformly (with replacement) at bin ``magnitude``; TrivialAugmentWide one operation at a
    uniform bin. Signed magnitudes get a random sign; geometric operations pad with
    ``AUTOAUGMENT_FILL`` and sample with ``interp``."""
    from nvidia.dali.auto_aug.auto_augment import apply_auto_augment
    from nvidia.dali.auto_aug.rand_augment import apply_rand_augment
    from nvidia.dali.auto_aug.trivial_augment import apply_trivial_augment

    kwargs = dict(fill_value=AUTOAUGMENT_FILL, interp_type=interp)
    if policy == "autoaugment":
        return apply_auto_augment(torchvision_imagenet_policy(device), images, **kwargs)
    ops, bins = torchvision_policy_ops(policy, size, num_ops, magnitude, device)
    if policy == "randaugment":
        return apply_rand_augment(list(ops.values()), images, n=num_ops, m=magnitude, num_magnitude_bins=bins, **kwargs)
    return apply_trivial_augment(list(ops.values()), images, num_magnitude_bins=bins, **kwargs)


def erasing_region(p: float, size: int):
    """torchvision's ``RandomErasing(p)`` rectangle for each ``size`` x ``size`` image, drawn in
    the graph: (anchor ``[top, left]``, shape ``[h, w]``), float32 pixels, shape 0 when nothing
    is erased.

    The rule of ``RandomErasing.get_params``: up to 10 attempts of an area drawn uniformly from
    ``scale`` x the image area and an aspect ratio log-uniformly from ``ratio`` (``erasing_rule``),
    ``h = round(sqrt(area * ratio))``, ``w = round(sqrt(area / ratio))``; the first with ``h`` and
    ``w`` below the image size is used, its top-left corner uniform over the positions that fit;
    none erases nothing. The 10 attempts are drawn at once and the first that fits is kept.
    Rounding is half up here, half to even in Python's ``round`` (a tie has probability 0).
    """
    import math

    import nvidia.dali.math as dmath

    from .common import erasing_rule

    scale, ratio = erasing_rule()
    attempts = 10
    area = fn.random.uniform(range=list(scale), shape=[attempts]) * float(size * size)
    aspect = dmath.exp(fn.random.uniform(range=[math.log(ratio[0]), math.log(ratio[1])], shape=[attempts]))
    h = dmath.floor(dmath.sqrt(area * aspect) + 0.5)
    w = dmath.floor(dmath.sqrt(area / aspect) + 0.5)
    fits = (h < size) & (w < size)
    k = types.Constant(np.arange(attempts, dtype=np.float32))
    first = k == fn.reductions.min(k + (fits ^ True) * float(attempts))  # one-hot; all false if none fits
    erase = fn.random.coin_flip(probability=p)
    h = fn.reductions.sum(h * first) * erase
    w = fn.reductions.sum(w * first) * erase
    top = dmath.floor(fn.random.uniform(range=[0, 1]) * (size - h + 1))
    left = dmath.floor(fn.random.uniform(range=[0, 1]) * (size - w + 1))
    return fn.stack(top, left), fn.stack(h, w)


# ---------------------------------------------------------------------------------------
# Pipelines (module level: DALI's conditionals need the source file)
# ---------------------------------------------------------------------------------------


@pipeline_def(enable_conditionals=True)
def train_pipeline(
    file_list,
    file_root,
    device,
    crop,
    area,
    ratio,
    hflip,
    augment,
    aa_interp,
    jitter,
    lighting,
    mean,
    std,
    layout,
    hw_decoder_load,
    uint8=False,
    randaugment=(2, 9),
    erasing=0.0,
):
    """The DALI training graph: read, decode the random crop's region, resize, the augmentation
    policy ``augment`` (``apply_policy``; ``randaugment`` = (num_ops, magnitude)), colour jitter
    and lighting, flip and normalise, random erasing with probability ``erasing``; outputs float
    images (``layout``) and the labels. With ``uint8`` it crops and mirrors only: uint8 images,
    the labels, with lighting the per-sample mean, with erasing the rectangles ``[top, left, h,
    w]`` (int32), normalised and erased on the device (``_Normalize``). ``file_list`` None: tar
    shards, whose bytes and labels a ``_Feeder`` gives the external sources ``encoded`` and ``labels``.
    """
    if file_list is None:
        jpegs = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        labels = fn.external_source(name="labels", dtype=types.INT32, ndim=1)
    else:
        jpegs, labels = fn.readers.file(file_list=file_list, file_root=file_root, random_shuffle=False, name="Reader")
    decoder_args = {"hw_decoder_load": hw_decoder_load} if device == "gpu" else {}
    images = fn.decoders.image_random_crop(
        jpegs,
        device="mixed" if device == "gpu" else "cpu",
        output_type=types.RGB,
        random_area=area,
        random_aspect_ratio=ratio,
        num_attempts=10,
        **decoder_args,
    )
    images = fn.resize(images, size=[crop, crop], interp_type=types.INTERP_LINEAR, antialias=True)
    if augment != "none":
        interp = types.INTERP_NN if aa_interp == "nearest" else types.INTERP_LINEAR
        images = apply_policy(images, augment, device, crop, *randaugment, interp)
    if jitter > 0:
        lo, hi = max(0.0, 1.0 - jitter), 1.0 + jitter
        images = fn.color_twist(
            images,
            brightness=fn.random.uniform(range=[lo, hi]),
            contrast=fn.random.uniform(range=[lo, hi]),
            saturation=fn.random.uniform(range=[lo, hi]),
        )
    mean255 = types.Constant(np.asarray(mean, dtype=np.float32) * 255.0)
    if lighting > 0:
        # offset_c = sum_j eigvec[c, j] * alpha_j * eigval_j, folded into the mean: (x + o - m) = (x - (m - o))
        a = fn.random.normal(shape=[3], stddev=lighting) * types.Constant(PCA_EIGVAL)
        offset = (
            a[0] * types.Constant(PCA_EIGVEC[:, 0])
            + a[1] * types.Constant(PCA_EIGVEC[:, 1])
            + a[2] * types.Constant(PCA_EIGVEC[:, 2])
        )
        mean255 = mean255 - offset * 255.0
    mirror = fn.random.coin_flip(probability=0.5) if hflip else 0
    if uint8:  # crop and mirror only, plus the per-sample mean and rectangle when used: `_Normalize`
        images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="HWC", mirror=mirror)
        outputs = (images, labels) + ((mean255,) if lighting > 0 else ())
        if erasing > 0:
            anchor, shape = erasing_region(erasing, crop)
            outputs += (fn.cast(fn.cat(anchor, shape), dtype=types.INT32),)
        return outputs
    images = fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout=layout, mirror=mirror, mean=mean255, std=[s * 255.0 for s in std]
    )
    if erasing > 0:  # after normalisation, as torchvision's RandomErasing: the rectangle is 0
        anchor, shape = erasing_region(erasing, crop)
        images = fn.erase(images, anchor=anchor, shape=shape, axis_names="HW", fill_value=0.0)
    return images, _labels_on(labels, device)


@pipeline_def
def val_pipeline(
    file_list, file_root, device, short, crop, mean, std, layout, hw_decoder_load, uint8=False, shards=None
):
    """The DALI evaluation graph: read in order, decode, resize the short side to ``short``, centre
    crop ``crop``, normalise; as torchvision's ``Resize`` + ``CenterCrop`` (tests/test_data_loaders.py).
    ``shards`` = (tar paths, index paths, image extensions): read tar shards with DALI's
    ``fn.readers.webdataset`` instead of the file list; the labels are then the ``.cls`` members'
    ASCII digits (``_Runner`` parses them).
    """
    if shards is None:
        jpegs, labels = fn.readers.file(
            file_list=file_list, file_root=file_root, random_shuffle=False, pad_last_batch=True, name="Reader"
        )
    else:
        paths, index_paths, exts = shards
        jpegs, labels = fn.readers.webdataset(
            paths=paths,
            index_paths=index_paths,
            ext=[";".join(exts), "cls"],
            missing_component_behavior="error",
            random_shuffle=False,
            pad_last_batch=True,
            name="Reader",
        )
    decoder_args = {"hw_decoder_load": hw_decoder_load} if device == "gpu" else {}
    images = fn.decoders.image(
        jpegs, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB, **decoder_args
    )
    images = fn.resize(images, resize_shorter=short, interp_type=types.INTERP_LINEAR, antialias=True)
    if uint8:
        images = fn.crop_mirror_normalize(
            images, crop=(crop, crop), crop_pos_x=0.5, crop_pos_y=0.5, dtype=types.UINT8, output_layout="HWC"
        )
        return images, labels
    images = fn.crop_mirror_normalize(
        images,
        crop=(crop, crop),
        crop_pos_x=0.5,
        crop_pos_y=0.5,
        dtype=types.FLOAT,
        output_layout=layout,
        mean=[m * 255.0 for m in mean],
        std=[s * 255.0 for s in std],
    )
    return images, labels if shards else _labels_on(labels, device)


def _labels_on(labels, device: str):
    """On the GPU the labels leave the pipeline on the GPU too: no copy from pageable host memory."""
    return labels.gpu() if device == "gpu" else labels


@pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_dynamic=True)
def probe_pipeline():
    """One encoded file in, DALI's CPU decode of it out (the decoder the pipelines above use)."""
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
    return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)


_probe = None  # this process's probe pipeline, built on first use


def dali_decode(path: str | bytes) -> np.ndarray:
    """``path`` (a file or an image's bytes) decoded by DALI's CPU image decoder: HWC uint8 RGB.
    Raises DALI's error when it cannot."""
    global _probe
    if _probe is None:
        _probe = probe_pipeline()
        _probe.build()
    data = np.frombuffer(path, dtype=np.uint8) if isinstance(path, bytes) else np.fromfile(path, dtype=np.uint8)
    _probe.feed_input("encoded", [data])
    try:
        (images,) = _probe.run()
    except Exception:  # noqa: BLE001 - DALI raises RuntimeError or IndexError; the pipeline is spent
        _probe = None
        raise
    return np.array(images.as_array()[0])


def dali_decode_problem(path: str | bytes, compare: bool = True) -> str | None:
    """Why DALI's decoder cannot stand in for ``load_rgb`` on ``path``, or None.

    The file is decoded by DALI (CPU) and, with ``compare``, by ``load_rgb``; images more
    than one grey level apart (the rounding of a 16-bit or float sample) or of different
    sizes count as read differently. ``check_image`` compares the rare files that are not
    JPEG or PNG; for those two it only asks whether DALI can read them (``full`` checks).
    """
    import io

    from PIL import Image

    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
        what = f"a {im.format} image (mode {im.mode})"
    fix = "convert it to JPEG or PNG, or use data.backend=torchvision"
    try:
        ours = dali_decode(path)
    except Exception as e:  # noqa: BLE001 - whatever DALI raises, it cannot read the file
        return f"{what}, which DALI's image decoder cannot read ({_dali_reason(e)}); {fix}"
    if not compare:
        return None
    ref = np.asarray(load_rgb(path))
    if ours.shape != ref.shape:
        return (
            f"{what} that DALI's image decoder reads as {ours.shape[1]}x{ours.shape[0]} pixels, PIL as "
            f"{ref.shape[1]}x{ref.shape[0]}; {fix}"
        )
    levels = int(np.abs(ours.astype(np.int16) - ref).max(initial=0))
    if levels > 1:
        return f"{what} that DALI's image decoder reads differently from PIL (up to {levels} of 255 levels); {fix}"
    return None


# ---------------------------------------------------------------------------------------
# Running pipelines
# ---------------------------------------------------------------------------------------


def resolve_device(name: str, device: torch.device) -> str:
    """``data.dali.device`` for a trainer on ``device`` (``auto``: the rule of ``data.dali_device``)."""
    from . import dali_device

    if name not in ("auto", "cpu", "gpu"):
        raise DataError(f"data.dali.device={name!r} is not one of auto, cpu, gpu.")
    name = dali_device(name, device)
    if name == "gpu" and not torch.cuda.is_available():
        raise DataError(
            "data.dali.device=gpu needs CUDA, which torch cannot see on this machine; "
            "use data.dali.device=cpu (or auto)."
        )
    return name


def _dali_reason(err: Exception) -> str:
    text = str(err)
    m = re.search(r"encountered:\s*\n+(.*?)(?:\nC\+\+ context|\nCurrent pipeline|$)", text, re.S)
    reason = (m.group(1) if m else text).strip().splitlines()
    return reason[0][:300] if reason else "DALI error"


def ship_uint8(dali_device: str, device: torch.device) -> bool:
    """Whether pipelines ship uint8 crops and torch normalises them on ``device``: a CPU
    pipeline feeding a CUDA trainer (a quarter of float32's bytes through the host-to-device
    copy, as the torchvision backend ships them). Every other pairing normalises in DALI."""
    return dali_device == "cpu" and torch.device(device).type == "cuda"


def _pinned(src: torch.Tensor) -> torch.Tensor:
    """A copy of the host tensor ``src`` in page-locked memory, so its copy to the GPU is asynchronous."""
    return torch.empty(src.shape, dtype=src.dtype, pin_memory=True).copy_(src)


class _Normalize:
    """uint8 NHWC crops to the float batch on ``device``: ``(x - mean255) / (255 * std)``, the
    formula of the pipeline's ``crop_mirror_normalize``, with ``mean255`` the pipeline's
    per-sample mean (lighting folded in) or, without lighting, ``255 * mean``; then, with
    ``erasing``, each sample's rectangle set to 0 as the float pipeline's ``fn.erase`` does.
    The pipeline's extra outputs come in that order: the mean with ``lighting``, the rectangle
    with ``erasing``."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool, lighting=False, erasing=False):
        self.device, self.channels_last, self.lighting, self.erasing = device, channels_last, lighting, erasing
        self.mean255 = (torch.tensor(mean, dtype=torch.float32) * 255.0).view(1, 3, 1, 1).to(device)
        self.inv_std255 = (1.0 / (torch.tensor(std, dtype=torch.float32) * 255.0)).view(1, 3, 1, 1).to(device)

    def __call__(self, images: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        nb = self.device.type == "cuda"
        x = images.to(self.device, non_blocking=nb).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        if not self.channels_last:
            x = x.contiguous()
        extras = list(extras)
        mean255 = extras.pop(0) if self.lighting else None
        mean = self.mean255 if mean255 is None else mean255.to(self.device, non_blocking=nb).view(-1, 3, 1, 1)
        x = (x.float() - mean).mul_(self.inv_std255)
        if self.erasing:
            erase_rectangles(x, extras.pop(0).to(self.device, non_blocking=nb))
        return x


class _Ascii:
    """Labels parsed from ``.cls`` members, standing in for the pipeline's labels output."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels


class _Feeder:
    """Fills a shard train pipeline's external sources before each of its runs: the image bytes and
    labels of the next batch of ``order`` (this pipeline's samples, ``batch_size`` per iteration).

    The first run schedules ``depth`` iterations (DALI's prefetch queue) and takes that many batches,
    every later run one more; past the end the batches repeat from the start (iterations the loader
    never asks for, as a file reader runs into its next epoch). Batches are read ``depth + 1`` ahead
    on ``pool`` (threads: ``pread`` releases the GIL, so reads overlap on a network filesystem).
    """

    def __init__(self, split, order, batch_size: int, depth: int, pool):
        self.split, self.batches = split, np.asarray(order).reshape(-1, batch_size)
        self.depth, self.pool = depth, pool
        self.next, self.started = 0, False
        self.pending = []

    def _read(self, b: int):
        images, labels = [], []
        for i in self.batches[b % len(self.batches)]:
            try:
                images.append(np.frombuffer(self.split.open(int(i)), dtype=np.uint8))
            except OSError as e:
                raise DataError(
                    f"Cannot read {self.split.path(int(i))} ({e}). Copy the shard again or remake it "
                    f"(scripts/make_shards.py --check ROOT checks every shard)."
                ) from None
            labels.append(np.array([self.split.labels[i]], dtype=np.int32))
        return images, labels

    def __call__(self, pipe) -> None:
        for _ in range(1 if self.started else self.depth):
            while len(self.pending) < self.depth + 1:
                self.pending.append(self.pool.submit(self._read, self.next + len(self.pending)))
            images, labels = self.pending.pop(0).result()
            pipe.feed_input("encoded", images)
            pipe.feed_input("labels", labels)
            self.next += 1
        self.started = True


class _Runner:
    """Runs one DALI pipeline and turns its outputs into torch tensors on the target device.

    Pipelines run on DALI's dynamic executor, whose outputs stay valid for as long as
    something references them, so batches are handed to torch without a copy (DLPack), as
    DALI's own PyTorch iterator does. Only a CPU pipeline feeding a CUDA trainer copies, every
    output (images, labels, lighting offsets) into pinned memory, so the host-to-device copies
    are asynchronous and overlap the previous step. With ``normalize`` (a ``_Normalize``) the
    pipeline ships uint8 NHWC crops and, when lighting is on, each sample's mean; ``normalize``
    turns them into the float batch on the device.
    """

    def __init__(self, pipe, dali_device: str, device: torch.device, channels_last: bool, normalize=None, feeder=None):
        self.pipe, self.dali_device, self.device, self.channels_last = pipe, dali_device, device, channels_last
        self.normalize, self.feeder = normalize, feeder
        self.ascii_labels = False  # the labels output holds .cls members' digits (a shard val pipeline)
        pipe.build()

    def run(self):
        """The next batch's outputs. A GPU pipeline gets torch's current stream: its outputs are
        ordered on that stream, so DALI reuses their memory only after torch's kernels reading
        them have run (without it, DALI releases them in its own stream's order). A ``feeder``
        fills the pipeline's external sources first."""
        if self.feeder is not None:
            self.feeder(self.pipe)
        if self.dali_device == "gpu":
            return self.pipe.run(torch.cuda.current_stream(self.device))
        return self.pipe.run()

    def to_torch(self, outputs, keep: int | None = None):
        """(images, labels) on the target device: float NCHW (channels_last memory if asked), int64 labels."""
        host_to_cuda = self.dali_device == "cpu" and self.device.type == "cuda"
        if self.ascii_labels:
            digits = outputs[1]
            labels = torch.tensor([int(bytes(np.asarray(digits[i]))) for i in range(len(digits))])
            outputs = [outputs[0], _Ascii(labels)] + list(outputs[2:])
        tensors = []
        for out in outputs:
            if isinstance(out, _Ascii):
                tensors.append(out.labels)
                continue
            with torch.device(self.device if self.dali_device == "gpu" else "cpu"):
                t = torch.from_dlpack(out.as_tensor())
            tensors.append(_pinned(t) if host_to_cuda else t)
        if keep is not None:
            tensors = [t[:keep] for t in tensors]
        images, labels = tensors[0], tensors[1].reshape(-1)
        nb = self.device.type == "cuda"
        labels = labels.to(self.device, non_blocking=nb).long()
        if self.normalize is not None:
            return self.normalize(images, *tensors[2:]), labels
        if self.channels_last:
            images = images.permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW
        return images.to(self.device, non_blocking=nb), labels


LIST_ROOT = "/"  # the readers' file_root: the lists hold absolute paths


def _write_list(path: str, split: Split, indices) -> None:
    """A DALI file list: ``absolute/path label`` per line, relative to LIST_ROOT, in bytes.

    Bytes (``os.fsencode``) carry names that are not UTF-8; absolute paths keep the data
    folder's name out of ``file_root``, a string DALI must encode as UTF-8. Raises DataError
    for a name the list format cannot hold (a line break).
    """
    base = os.path.abspath(split.base)
    prefix = os.fsencode(base).lstrip(b"/") + b"/"
    with open(path, "wb") as f:
        for i in indices:
            rel = split.files[i]
            problem = dali_name_problem(os.path.join(base, rel))
            if problem:
                raise DataError(
                    f"Cannot read the image {os.path.join(base, rel)!r}: {problem}, or set "
                    f"data.skip_bad_images: true to skip it."
                )
            f.write(prefix + os.fsencode(rel) + b" %d\n" % int(split.labels[i]))


class _Base:
    """What both loaders share. ``uint8``: ship uint8 crops and normalise in torch on ``device``
    (None: the rule of ``ship_uint8``; the tests set it to check that path without a GPU)."""

    def __init__(
        self,
        cfg,
        split: Split,
        batch_size: int,
        device: torch.device,
        dali_device: str,
        channels_last: bool,
        tmpdir: str,
        uint8: bool | None = None,
    ):
        self.cfg, self.split, self.batch_size = cfg, split, batch_size
        self.device, self.dali_device, self.channels_last = device, dali_device, channels_last
        self.tmpdir = tmpdir
        self.layout = "HWC" if channels_last else "CHW"
        self.uint8 = ship_uint8(dali_device, device) if uint8 is None else bool(uint8)
        self.bad_images = 0

    @property
    def shards(self) -> bool:
        """Whether the split is tar shards (``shards.ShardSplit``) rather than files."""
        return isinstance(self.split, ShardSplit)

    def _make_runner(self, pipe, lighting: bool = False, erasing: bool = False, feeder=None) -> _Runner:
        """A runner of ``pipe``; ``lighting`` / ``erasing``: its uint8 outputs carry the per-sample
        mean / erased rectangle (a train pipeline with those on); ``feeder``: a shard train pipeline's."""
        normalize = None
        if self.uint8:
            normalize = _Normalize(self.cfg.mean, self.cfg.std, self.device, self.channels_last, lighting, erasing)
        return _Runner(pipe, self.dali_device, self.device, self.channels_last, normalize, feeder)

    def _pipe_kwargs(self, seed: int, threads: int) -> dict:
        dev = self.dali_device
        device_id = (
            (self.device.index if self.device.index is not None else torch.cuda.current_device())
            if dev == "gpu"
            else None
        )
        return dict(
            batch_size=self.batch_size,
            num_threads=threads,
            device_id=device_id,
            seed=seed,
            prefetch_queue_depth=max(1, int(self.cfg.dali.prefetch)),
            exec_dynamic=True,
        )

    def _fail(self, err: Exception, order, first_batch: int) -> DataError:
        """Turn a DALI failure into a DataError naming the file of batches >= first_batch."""
        text = str(err)
        depth = max(1, int(self.cfg.dali.prefetch)) + 1
        lo = first_batch * self.batch_size
        candidates = [int(i) for i in order[lo : lo + depth * self.batch_size]]
        found = None
        for i in candidates:
            if self.split.files[i] in text:
                found = (
                    self.split.files[i],
                    check_image(self.split.open(i), full=True, backend="dali") or _dali_reason(err),
                )
                break
        if found is None:
            for i in candidates:
                reason = check_image(self.split.open(i), full=True, backend="dali")
                if reason:
                    found = (self.split.files[i], reason)
                    break
        check = "make_shards.py --check" if self.shards else "prepare_imagenet.py --check"
        if found is None:
            return DataError(
                f"DALI failed while reading {self.split.source}: {_dali_reason(err)}. "
                f"scripts/{check} ROOT lists unreadable files."
            )
        rel, reason = found
        path = os.path.join(self.split.base, rel)
        if self.cfg.skip_bad_images:
            cache = add_bad_image(self.split, rel, reason, "dali")
            return DataError(
                f"Cannot read the image {path} ({reason}); the pre-scan's cheap checks missed it. "
                f"It has been added to the skip list {cache}: run the same command again to "
                f"continue without it (resume: auto continues from the last checkpoint)."
            )
        return DataError(
            f"Cannot read the image {path} ({reason}). Fix or delete the file "
            f"(scripts/{check} ROOT lists every unreadable file), or set "
            f"data.skip_bad_images: true to skip unreadable files."
        )


class DaliTrainLoader(_Base):
    """``len()`` = steps per epoch; ``set_epoch(epoch, start_step)`` before each epoch.

    On the CPU the epoch's batches are dealt round-robin to ``data.dali.threads`` pipelines
    of one thread each (batch ``b`` comes from pipeline ``b % threads``), the way DataLoader
    workers each make whole batches. One multi-threaded pipeline would instead split every
    operator's batch between its threads and wait for the slowest at each of the ~60
    operators of AutoAugment's conditional branches, many with a handful of samples; on 2
    cores that idles about 10% of the time. On the GPU one pipeline uses all the threads.
    """

    def __init__(
        self, cfg, split, batch_size, rank, world_size, device, dali_device, seed, channels_last, tmpdir, uint8=None
    ):
        super().__init__(cfg, split, batch_size, device, dali_device, channels_last, tmpdir, uint8)
        self.rank, self.world_size, self.seed = rank, world_size, int(seed)
        self.steps = train_steps(len(split), batch_size, world_size)
        threads = max(1, int(cfg.dali.threads))
        self.pipelines = min(threads, self.steps) if dali_device == "cpu" else 1
        self.threads_per_pipeline = 1 if dali_device == "cpu" else threads
        # checked here: the graph is built at the first epoch
        self.augment, self.aa_interp = augment_policy(cfg), autoaugment_interpolation(cfg)
        self.erasing = erasing_probability(cfg)
        self.repeats = repeated_aug(cfg, world_size, rank)
        self.epoch, self.start_step = 0, 0
        self._serialized = {}  # crop size -> the serialized graph at that size
        self._pool = None  # shards: the threads that read the feeders' batches

    def __len__(self):
        return self.steps

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Stand at batch ``start_step`` of ``epoch``: the epoch's pipelines are rebuilt from its seed and
        the batches before ``start_step`` are run and dropped (DALI cannot seek).
        """
        self.epoch, self.start_step = int(epoch), check_start_step(start_step, self.steps)

    def build_pipelines(self, epoch: int):
        """Epoch ``epoch``'s built pipelines and, for each, its samples in the order it reads them.

        The graph is defined once per process and crop size and serialized; each pipeline of
        each epoch is deserialized from the graph of the epoch's crop (``data.train_crop_schedule``)
        with its own seed (under 0.1 s instead of the ~0.8 s that defining the AutoAugment graph
        takes) after its file list has been written to the graph's list path (DALI reads the
        list when the pipeline is built). Every epoch, first or not, goes through the same path,
        so a resumed process reproduces it exactly.
        """
        order = epoch_indices(
            len(self.split), self.batch_size, self.rank, self.world_size, self.seed, epoch, self.repeats
        )
        batches = np.asarray(order).reshape(self.steps, self.batch_size)
        list_path = None if self.shards else os.path.join(self.tmpdir, f"train_rank{self.rank}.txt")
        crop = train_crop_at(self.cfg, epoch)
        if crop not in self._serialized:
            if list_path:
                _write_list(list_path, self.split, batches[0])
            c = self.cfg
            template = train_pipeline(
                file_list=list_path,
                file_root=LIST_ROOT,
                device=self.dali_device,
                crop=crop,
                area=[float(v) for v in c.rrc_scale],
                ratio=[float(v) for v in c.rrc_ratio],
                hflip=bool(c.hflip),
                augment=self.augment,
                aa_interp=self.aa_interp,
                jitter=float(c.color_jitter),
                lighting=float(c.lighting),
                mean=list(c.mean),
                std=list(c.std),
                layout=self.layout,
                hw_decoder_load=float(c.dali.hw_decoder_load),
                uint8=self.uint8,
                randaugment=(int(c.randaugment_num_ops), int(c.randaugment_magnitude)),
                erasing=self.erasing,
                **self._pipe_kwargs(0, self.threads_per_pipeline),
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self._serialized[crop] = template.serialize()
            del template
        from nvidia.dali import Pipeline

        runners, orders = [], []
        for p in range(self.pipelines):
            mine = batches[p :: self.pipelines].reshape(-1)
            feeder = None
            if list_path:
                _write_list(list_path, self.split, mine)
            else:
                feeder = _Feeder(self.split, mine, self.batch_size, max(1, int(self.cfg.dali.prefetch)), self._reader())
            seed = stream_seed(self.seed, epoch, self.rank, 0xDA11, p)
            pipe = Pipeline.deserialize(
                serialized_pipeline=self._serialized[crop], **self._pipe_kwargs(seed, self.threads_per_pipeline)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                runners.append(self._make_runner(pipe, float(self.cfg.lighting) > 0, self.erasing > 0, feeder))
            orders.append(mine)
        return runners, orders

    def _reader(self):
        """The thread pool that reads shard batches (``data.dali.threads`` threads), made on first use."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max(1, int(self.cfg.dali.threads)), thread_name_prefix="shard-reader")
        return self._pool

    def __iter__(self):
        epoch, start, n = self.epoch, self.start_step, self.pipelines
        runners, orders = self.build_pipelines(epoch)
        try:
            for step in range(self.steps):
                p, local = step % n, step // n
                try:
                    out = runners[p].run()
                except RuntimeError as e:
                    raise self._fail(e, orders[p], local) from None
                if step >= start:
                    yield runners[p].to_torch(out)
        finally:
            del runners


class DaliValLoader(_Base):
    """This rank's validation shard through DALI (``common.ValLoader``): in order, the last batch partial."""

    def __init__(
        self, cfg, split, batch_size, rank, world_size, device, dali_device, channels_last, tmpdir, uint8=None
    ):
        super().__init__(cfg, split, batch_size, device, dali_device, channels_last, tmpdir, uint8)
        self.start, self.end = val_shard(len(split), rank, world_size)
        self.n = self.end - self.start
        self.batches = -(-self.n // batch_size)
        self.rank = rank
        self._runner = None
        self._pos = 0  # batches consumed in the reader's current pass

    def __len__(self):
        return self.batches

    def _build(self):
        list_path, shards = os.path.join(self.tmpdir, f"val_rank{self.rank}.txt"), None
        if self.shards:
            shards = self._shard_indexes()
        else:
            _write_list(list_path, self.split, range(self.start, self.end))
        short, crop = eval_sizes(self.cfg.train_crop, self.cfg.eval_crop, self.cfg.eval_ratio)
        c = self.cfg
        pipe = val_pipeline(
            file_list=list_path,
            file_root=LIST_ROOT,
            device=self.dali_device,
            short=short,
            crop=crop,
            mean=list(c.mean),
            std=list(c.std),
            layout=self.layout,
            hw_decoder_load=float(c.dali.hw_decoder_load),
            uint8=self.uint8,
            shards=shards,
            **self._pipe_kwargs(0, max(1, int(c.dali.threads))),
        )
        self._runner = self._make_runner(pipe)
        self._runner.ascii_labels = self.shards

    def _shard_indexes(self):
        """(tar paths, index paths, image extensions) for ``fn.readers.webdataset`` to read this rank's
        val samples in order: one index file per run of consecutive samples in the same tar (one per
        tar the rank's contiguous share touches, as val shards keep the folder's order)."""
        order = np.arange(self.start, self.end)
        cuts = np.flatnonzero(np.diff(self.split.shard[order])) + 1
        paths, indexes = [], []
        for j, run in enumerate(np.split(order, cuts)):
            path = os.path.join(self.tmpdir, f"val_rank{self.rank}_{j}.idx")
            write_dali_index(path, self.split, run)
            paths.append(self.split.tars[int(self.split.shard[run[0]])])
            indexes.append(path)
        return paths, indexes, self.split.image_exts()

    def __iter__(self):
        if self.n == 0:
            return
        if self._runner is None:
            self._build()
        order = np.arange(self.start, self.end)
        while self._pos % self.batches:  # an earlier pass was abandoned: realign to a pass start
            self._run(order)
        for b in range(self.batches):
            out = self._run(order)
            keep = self.n - b * self.batch_size if b == self.batches - 1 else None
            yield self._runner.to_torch(out, keep)

    def _run(self, order):
        try:
            out = self._runner.run()
        except RuntimeError as e:
            self._runner = None
            raise self._fail(e, order, self._pos % self.batches) from None
        self._pos += 1
        return out


def build(
    cfg: DataConfig,
    train: Split | None,
    val: Split,
    batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
    seed: int,
    channels_last: bool,
    uint8: bool | None = None,
) -> tuple[DaliTrainLoader | None, DaliValLoader]:
    """This rank's train and val loaders over ``train`` / ``val`` (``common.TrainLoader`` / ``ValLoader``);
    no train loader when ``train`` is None; ``uint8`` as in ``_Base`` (None: the rule of ``ship_uint8``)."""
    if train is not None:
        check_enough(len(train), batch_size, world_size, train.source)
    dali_device = resolve_device(cfg.dali.device, device)
    if dali_device == "gpu" and device.type != "cuda":
        raise DataError(
            f"data.dali.device=gpu puts batches on the GPU but the trainer runs on {device}; use data.dali.device=cpu."
        )
    tmpdir = tempfile.mkdtemp(prefix="resnest_dali_")
    atexit.register(shutil.rmtree, tmpdir, True)
    train_loader = None
    if train is not None:
        train_loader = DaliTrainLoader(
            cfg, train, batch_size, rank, world_size, device, dali_device, seed, channels_last, tmpdir, uint8
        )
    val_loader = DaliValLoader(
        cfg, val, batch_size, rank, world_size, device, dali_device, channels_last, tmpdir, uint8
    )
    return train_loader, val_loader
