"""RandAugment and TrivialAugmentWide in DALI against torchvision's, as AutoAugment is tested.

Operation by operation (tests/test_data_autoaugment.py's method): the same uint8 images go
through each operation of a policy's table at chosen magnitude bins and both signs, in a DALI
pipeline on the CPU and through torchvision's own ``_apply_op`` (PIL, nearest sampling, fill
128). Then the samplers: which operations and magnitudes DALI's policy draws over many images,
against what torchvision's ``RandAugment`` / ``TrivialAugmentWide`` / ``AutoAugment`` draw.
"""

import numpy as np
import pytest
import torch

from test_data_autoaugment import H, W, images, run_dali, run_torchvision

BINS = [9, 30]  # RandAugment's default magnitude and the largest of the 31 bins
COLOUR = [
    "Identity",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
]
GEOMETRIC = ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]
SIGNED = {"Brightness", "Color", "Contrast", "Sharpness"} | set(GEOMETRIC)


def space(policy, size=(H, W)):
    """torchvision's table of ``policy`` for ``size`` images (31 bins, both policies' default)."""
    import torchvision.transforms as T

    if policy == "randaugment":
        return T.RandAugment()._augmentation_space(31, size)
    return T.TrivialAugmentWide()._augmentation_space(31)


def ops(policy):
    from resnest_train.data.dali import torchvision_ops

    return torchvision_ops(space(policy), "cpu")


def cases(names):
    return [
        (policy, n, b, neg)
        for policy in ("randaugment", "trivialaugment")
        for n in names
        for b in BINS
        for neg in ([False, True] if n in SIGNED else [False])
    ]


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_the_tables_are_torchvisions(policy):
    """Same operations, magnitudes of every bin and sign rule as torchvision's table (at the crop size used)."""
    from resnest_train.data.dali import torchvision_policy_ops

    ours, bins = torchvision_policy_ops(policy, 48, num_ops=2, magnitude=9)
    theirs = space(policy, (48, 48))
    assert bins == 31 and sorted(ours) == sorted(theirs) == sorted(COLOUR + GEOMETRIC)
    for name, (mags, signed) in theirs.items():
        aug = ours[name]
        assert aug.name == name and aug.randomly_negate == signed == (name in SIGNED)
        if mags.ndim == 0:
            assert aug.mag_range is None
        else:
            assert np.array_equal(aug.mag_range, mags.numpy().astype(np.float32)), name
    # the policies' own ranges, e.g. TrivialAugmentWide rotates up to 135 degrees and keeps 2..8 bits
    top = {n: float(ours[n].mag_range[-1]) for n in ("Rotate", "ShearX", "TranslateX", "Posterize")}
    if policy == "trivialaugment":
        assert top == {"Rotate": 135.0, "ShearX": pytest.approx(0.99), "TranslateX": 32.0, "Posterize": 2.0}
    else:
        assert top == {
            "Rotate": 30.0,
            "ShearX": pytest.approx(0.3),
            "TranslateX": pytest.approx(150 / 331 * 48),
            "Posterize": 4.0,
        }


@pytest.mark.parametrize("policy,name,magnitude_bin,negative", cases(COLOUR))
def test_colour_operations_match_torchvision(policy, name, magnitude_bin, negative):
    imgs = images()
    ours = run_dali(ops(policy)[name], imgs, magnitude_bin, negative, num_magnitude_bins=31)
    theirs = run_torchvision(name, imgs, magnitude_bin, negative, space=space(policy))
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == np.uint8
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        if name == "Sharpness":
            diff = diff[1:-1, 1:-1]  # PIL leaves the 1-pixel border unfiltered (test_data_autoaugment.py)
        if name == "Equalize":  # OpenCV's vs PIL's lookup table (test_data_autoaugment.py)
            assert diff.max() <= 24 and diff.mean() <= 8, (diff.max(), diff.mean())
        else:  # rounding: PIL truncates its blends and lookup tables, DALI rounds
            assert diff.max() <= 2 and diff.mean() <= 0.6, (name, magnitude_bin, negative, diff.max(), diff.mean())


@pytest.mark.parametrize("policy,name,magnitude_bin,negative", cases(GEOMETRIC))
def test_geometric_operations_match_torchvision(policy, name, magnitude_bin, negative):
    """Same direction for the same sign, same whole-pixel shifts; pixels differ only along edges."""
    imgs = images()
    ours = run_dali(ops(policy)[name], imgs, magnitude_bin, negative, num_magnitude_bins=31)
    theirs = run_torchvision(name, imgs, magnitude_bin, negative, space=space(policy))
    for a, b, img in zip(ours, theirs, imgs):
        differ = (np.abs(a.astype(np.int16) - b.astype(np.int16)) > 8).any(axis=2)
        assert differ.mean() <= 0.05, (name, magnitude_bin, negative, differ.mean())
        assert (a != img).any(axis=2).mean() > 0.2  # it did move the picture


# ---------------------------------------------------------------------------------------
# The samplers: which operations and magnitudes each image gets
# ---------------------------------------------------------------------------------------

SAMPLES = 1200


def recording(aug, index):
    """``aug`` with its magnitudes and sign rule, whose operation appends (index, signed magnitude)
    to a float record instead of changing an image."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali.auto_aug.core import augmentation

    def record(data, magnitude, fill_value=None, interp_type=None):
        value = types.Constant(np.float32(0)) if magnitude is None else magnitude
        return fn.cat(data, fn.stack(types.Constant(np.float32(index)), value))

    return augmentation(record).augmentation(
        mag_range=aug.mag_range, randomly_negate=aug.randomly_negate, name=aug.name
    )


def dali_draws(policy, monkeypatch, num_ops=2, magnitude=9):
    """(operation name, magnitude) of every operation DALI's ``apply_policy`` applies to SAMPLES images."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from resnest_train.data import dali as D

    names = []
    real = D.torchvision_ops

    def recorded_ops(table, device):
        ops = real(table, device)
        names[:] = list(ops)
        return {name: recording(aug, i) for i, (name, aug) in enumerate(ops.items())}

    monkeypatch.setattr(D, "torchvision_ops", recorded_ops)
    D._POLICIES.clear()  # AutoAugment's policy is cached: build it from the recording operations
    batch = 400

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=7, enable_conditionals=True)
    def pipe():
        start = fn.external_source(source=lambda: [np.zeros(0, np.float32)] * batch, batch=True)
        return D.apply_policy(start, policy, "cpu", 32, num_ops, magnitude, types.INTERP_NN)

    p = pipe()
    p.build()
    draws = []
    for _ in range(SAMPLES // batch):
        (out,) = p.run()
        for i in range(batch):
            rec = np.array(out[i]).reshape(-1, 2)
            draws += [(names[int(k)], float(m)) for k, m in rec]
    D._POLICIES.clear()
    return draws


def torchvision_draws(transform, monkeypatch):
    """(operation name, magnitude) of every operation torchvision's ``transform`` applies to SAMPLES images."""
    import torchvision.transforms.autoaugment as tva

    draws = []
    monkeypatch.setattr(tva, "_apply_op", lambda img, name, magnitude, **_: draws.append((name, magnitude)) or img)
    torch.manual_seed(0)
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    for _ in range(SAMPLES):
        transform(img)
    return draws


def op_shares(draws):
    names, counts = np.unique([n for n, _ in draws], return_counts=True)
    return dict(zip(names, counts / SAMPLES))


def check_same_sampling(ours, theirs, table):
    """Same operations applied as often per image (within 5 standard errors), every magnitude one
    of the table's (signed where it says so), negative about half the time."""
    shares, ref = op_shares(ours), op_shares(theirs)
    assert sorted(shares) == sorted(ref)
    for name, share in ref.items():
        assert abs(shares[name] - share) <= 5 * np.sqrt(2 * max(share, 1e-3) / SAMPLES), (name, shares[name], share)
    for name, m in ours:
        mags, signed = table[name]
        allowed = np.atleast_1d(mags.numpy()).astype(np.float32)
        allowed = np.concatenate([allowed, -allowed]) if signed else allowed
        assert np.isclose(m, allowed, rtol=0, atol=1e-5).any(), (name, m)
    signed = [m for name, m in ours if table[name][1] and m != 0]
    assert abs(np.mean(np.array(signed) < 0) - 0.5) < 0.05
    return shares


def test_randaugment_samples_torchvisions_operations_at_one_magnitude(monkeypatch):
    import torchvision.transforms as T

    ours = dali_draws("randaugment", monkeypatch, num_ops=3, magnitude=12)
    theirs = torchvision_draws(T.RandAugment(num_ops=3, magnitude=12), monkeypatch)
    assert len(ours) == len(theirs) == 3 * SAMPLES  # num_ops operations on every image
    table = space("randaugment", (32, 32))
    shares = check_same_sampling(ours, theirs, table)
    assert all(abs(s - 3 / 14) < 0.06 for s in shares.values())  # uniform over the 14 operations
    for name, m in ours:  # bin 12 only
        mags, _ = table[name]
        assert mags.ndim == 0 or np.isclose(abs(m), float(mags[12]), atol=1e-5), (name, m)


def test_trivialaugment_samples_torchvisions_operations_over_every_bin(monkeypatch):
    import torchvision.transforms as T

    ours = dali_draws("trivialaugment", monkeypatch)
    assert len(ours) == SAMPLES  # one operation per image
    table = space("trivialaugment")
    check_same_sampling(ours, torchvision_draws(T.TrivialAugmentWide(), monkeypatch), table)
    bins = np.array(
        [
            int(np.argmin(np.abs(abs(m) - table[name][0].numpy())))
            for name, m in ours
            if table[name][0].ndim and name != "Posterize"  # Posterize's bins repeat bit counts
        ]
    )
    # uniform over the 31 bins: every bin drawn, mean 15
    assert set(bins.tolist()) == set(range(31)) and abs(bins.mean() - 15) < 1.5


def test_autoaugment_samples_torchvisions_sub_policies(monkeypatch):
    import torchvision.transforms as T

    ours = dali_draws("autoaugment", monkeypatch)
    theirs = torchvision_draws(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET), monkeypatch)
    check_same_sampling(ours, theirs, T.AutoAugment()._augmentation_space(10, (32, 32)))
    assert abs(len(ours) - len(theirs)) < 5 * np.sqrt(len(theirs))  # operations per image


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_gpu_graph_of_the_policy_and_erasing_builds_without_a_gpu(tmp_path, policy):
    """The gpu variant of the training graph (GPU operators, the rectangle drawn on the CPU) is
    defined and checked here; running it needs a GPU."""
    from resnest_train.data import dali as D

    list_file = tmp_path / "list.txt"
    list_file.write_text("a/x.jpg 0\n")
    pipe = D.train_pipeline(
        file_list=str(list_file),
        file_root=str(tmp_path),
        device="gpu",
        crop=32,
        area=[0.08, 1.0],
        ratio=[0.75, 4 / 3],
        hflip=True,
        augment=policy,
        aa_interp="nearest",
        jitter=0.0,
        lighting=0.0,
        mean=[0.5] * 3,
        std=[0.2] * 3,
        layout="CHW",
        hw_decoder_load=0.65,
        randaugment=(2, 9),
        erasing=0.25,
        batch_size=2,
        num_threads=1,
        device_id=0,
        seed=1,
    )
    pipe._build_graph()  # DALI's graph construction; pipe.build() would need CUDA
    devices = {}
    for op in pipe._ops:
        devices.setdefault(op._op.schema_name, set()).add(op._op.device)
    assert devices["Erase"] == {"gpu"} and devices["WarpAffine"] == {"gpu"} and devices["Rotate"] == {"gpu"}
    assert devices["random__Uniform"] == {"cpu"}  # the draws: CPU argument inputs
