"""WebDataset tar shards of an ImageNet folder: writing them, checking them, reading any sample exactly.

Layout (``make_shards``, ``resnest-make-shards ROOT OUT``)::

    OUT/manifest.json                        what identifies the format: classes, counts, checksums
    OUT/train/shard-000000.tar  .idx ...     WebDataset tars and their index files
    OUT/val/shard-000000.tar    .idx ...

A sample is two tar members in a row (WebDataset's convention, as timm's and webdataset's readers
expect): ``KEY.jpg`` (the image file's bytes, unchanged; the extension is the file's own, lower
case, ``jpeg`` written ``jpg``) and ``KEY.cls`` (the label as ASCII digits). ``KEY`` is
``NNNNNNNNN_name``: the sample's position in the folder's sorted order (``layout.scan_split``:
class by class, names sorted) and its file name with every character but letters, digits, ``-``
and ``_`` replaced by ``_``, so a member names the file it came from. That position is the
sample's index in the loaders: a shard set trains on the same epoch plan (``common.py``) as the
folder it was made from, batch for batch. The labels follow from it and the manifest's per-class
counts (the folder lists class by class); ``--check`` compares every ``.cls`` with them.

Train shards are shuffled and balanced: the samples, ordered class by class and randomly within
a class, are dealt round-robin to ``ceil(n / shard_size)`` shards, so every shard holds the same
number of images and of each class (within one), and each shard is shuffled. Val shards keep the
folder's order (cut into equal runs): evaluation reads every image once in any order, and a
rank's contiguous share of the val list is then a contiguous run of members.

Index files: DALI's ``wds2idx`` format v1.2, ``v1.2 N`` then one line per sample, its members in
tar order as ``ext offset size name`` (offset: of the member's data, a multiple of 512). They are
written from the offsets the writer knows, without a second pass over the tar;
tests/test_data_shards.py checks them against DALI's own ``wds2idx`` tool. Both backends read a
sample with one ``pread`` at its offset (exact random access, no scan of the tar); DALI's
``fn.readers.webdataset`` takes them as ``index_paths``.

Tars are written deterministically (members dated 0, owner 0, mode 0444), so the same folder,
shard size and seed give the same bytes and the same checksums.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from ..progress import Progress
from ..rundir import read_json, write_json

MANIFEST = "manifest.json"
FORMAT = "resnest-shards"
VERSION = 1
INDEX_VERSION = "v1.2"  # DALI's wds2idx format
SPLITS = ("train", "val")
DEFAULT_SHARD_SIZE = 1000
# Tars a process keeps open for reading, least recently used closed first: ImageNet's train split
# is 1,282 tars of 1,000 images, more than the usual open-file limit of 1,024 per process
# (``ulimit -n``), which every DataLoader worker would otherwise reach during its first epoch.
MAX_OPEN_TARS = 64
FORMATS = ("auto", "folder", "shards")  # data.format


def shard_name(k: int) -> str:
    """The tar file name of shard ``k``: ``shard-000000.tar``."""
    return f"shard-{k:06d}.tar"


def index_name(tar: str) -> str:
    """The index file name of a tar: ``shard-000000.idx``."""
    return tar[: -len(".tar")] + ".idx"


def sample_key(index: int, relpath: str) -> str:
    """The WebDataset key of the folder's sample ``index`` (``relpath``: ``class/file``)."""
    stem = os.path.splitext(os.path.basename(relpath))[0]
    return f"{index:09d}_{re.sub(r'[^A-Za-z0-9_-]', '_', stem)[:64]}"


def image_ext(relpath: str) -> str:
    """The member extension of an image file: its own, lower case, with ``jpeg`` as ``jpg``."""
    ext = os.path.splitext(relpath)[1].lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def is_shards(root: str) -> bool:
    """Whether ``root`` is a shard set (it holds ``manifest.json``)."""
    return bool(root) and os.path.isfile(os.path.join(root, MANIFEST))


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def train_shard_plan(labels: np.ndarray, shard_size: int, seed: int) -> list[np.ndarray]:
    """The folder indices of each train shard, in the order written: shuffled and balanced.

    Ordered class by class (randomly within a class) and dealt round-robin to
    ``ceil(n / shard_size)`` shards, every shard gets ``n / shards`` images and ``n_c / shards``
    of each class ``c`` (rounded up or down); each shard is then shuffled.
    """
    n = len(labels)
    shards = max(1, math.ceil(n / shard_size))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5A4D])
    order = np.lexsort((rng.random(n), labels))
    return [rng.permutation(order[k::shards]) for k in range(shards)]


def val_shard_plan(n: int, shard_size: int) -> list[np.ndarray]:
    """The folder indices of each val shard: the folder's order cut into equal runs."""
    return np.array_split(np.arange(n), max(1, math.ceil(n / shard_size)))


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Append ``data`` as member ``name``; returns (offset of its data, size)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - math.ceil(len(data) / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, len(data)


def sha256(path: str) -> str:
    """The SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(path: str, split, indices: np.ndarray) -> dict:
    """Write the samples ``indices`` of the folder ``split`` (a ``layout.Split``) as the tar ``path``
    and its index file; returns the shard's manifest entry."""
    lines = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in indices:
            i = int(i)
            rel = split.files[i]
            key = sample_key(i, rel)
            with open(split.path(i), "rb") as f:
                image = f.read()
            parts = []
            for ext, data in ((image_ext(rel), image), ("cls", b"%d" % int(split.labels[i]))):
                offset, size = _member(tar, f"{key}.{ext}", data)
                parts.append(f"{ext} {offset} {size} {key}.{ext}")
            lines.append(" ".join(parts))
    idx = index_name(path)
    with open(idx, "w") as f:
        f.write(f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines))
    return {
        "tar": os.path.basename(path),
        "index": os.path.basename(idx),
        "images": len(lines),
        "bytes": os.path.getsize(path),
        "sha256": sha256(path),
        "index_sha256": sha256(idx),
    }


def make_shards(root: str, out: str, shard_size: int = DEFAULT_SHARD_SIZE, seed: int = 0, progress=True) -> dict:
    """Write the ImageNet folder ``root`` (``train/<class>/*``, ``val/<class>/*``) as shards under
    ``out`` (module docstring); returns the manifest. Raises DataError for a bad layout, a shard
    size below 1 or an ``out`` that already holds files."""
    from .layout import check_layout, scan_split

    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}.")
    train_dir, val_dir, classes = check_layout(root)
    if os.path.isdir(out) and os.listdir(out):
        raise DataError(f"{out} is not empty; give a new or empty folder for the shards.")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": os.path.abspath(root),
        "classes": classes,
        "shard_size": int(shard_size),
        "seed": int(seed),
        "splits": {},
    }
    for name, d in (("train", train_dir), ("val", val_dir)):
        split = scan_split(d, name, classes)
        if name == "train":
            plan = train_shard_plan(split.labels, shard_size, seed)
        else:
            plan = val_shard_plan(len(split), shard_size)
        os.makedirs(os.path.join(out, name), exist_ok=True)
        bar = Progress(len(split), f"writing {name} shards", unit="img", enabled=progress)
        shards = []
        for k, indices in enumerate(plan):
            shards.append(write_shard(os.path.join(out, name, shard_name(k)), split, indices))
            bar.update(len(indices))
        bar.close()
        manifest["splits"][name] = {
            "images": len(split),
            "per_class": np.bincount(split.labels, minlength=len(classes)).tolist(),
            "shuffled": name == "train",
            "shards": shards,
        }
    write_json(os.path.join(out, MANIFEST), manifest, indent=1)
    return manifest


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def read_manifest(root: str) -> dict:
    """``root/manifest.json``, checked for what the readers rely on. Raises DataError."""
    path = os.path.join(root, MANIFEST)
    m = read_json(path)
    if m is None or m.get("format") != FORMAT:
        raise DataError(
            f"{path} is missing or not a {FORMAT} manifest; make the shards with "
            f"`python scripts/make_shards.py IMAGENET_ROOT {root}`, or set data.format: folder."
        )
    if m.get("version") != VERSION:
        raise DataError(f"{path} has version {m.get('version')}; this code reads version {VERSION}: remake the shards.")
    try:
        for name in SPLITS:
            s = m["splits"][name]
            if len(s["per_class"]) != len(m["classes"]) or sum(s["per_class"]) != s["images"]:
                raise KeyError("per_class")
            if sum(int(sh["images"]) for sh in s["shards"]) != s["images"]:
                raise KeyError("shards")
    except (KeyError, TypeError) as e:
        raise DataError(f"{path} is incomplete or inconsistent ({e}); remake the shards.") from None
    return m


def parse_index(path: str) -> list[list[tuple[str, int, int, str]]]:
    """The samples of a wds2idx v1.2 index file: per sample its members ``(ext, offset, size, name)``.
    Raises DataError naming the file and line for a malformed index."""
    try:
        with open(path) as f:
            head = f.readline().split()
            if len(head) != 2 or head[0] != INDEX_VERSION:
                raise ValueError(f"line 1 is not '{INDEX_VERSION} N'")
            samples = []
            for lineno, line in enumerate(f, 2):
                w = line.split()
                if not w or len(w) % 4:
                    raise ValueError(f"line {lineno} is not groups of 'ext offset size name'")
                samples.append([(w[j], int(w[j + 1]), int(w[j + 2]), w[j + 3]) for j in range(0, len(w), 4)])
            if len(samples) != int(head[1]):
                raise ValueError(f"it lists {len(samples)} samples, its header says {head[1]}")
    except (OSError, ValueError) as e:
        raise DataError(f"Cannot use the index file {path}: {e}. Remake the shards (scripts/make_shards.py).") from None
    return samples


@dataclass
class ShardSplit:
    """One split of a shard set, in the folder's sample order; the same interface as ``layout.Split``
    (``files`` name the members as ``shard-000000.tar:KEY.jpg``) plus where each image lies."""

    name: str
    base: str  # OUT/train
    files: list[str]
    labels: np.ndarray  # int64
    source: str
    tars: list[str]  # absolute paths
    shard: np.ndarray  # int64: the tar of each sample
    offset: np.ndarray  # int64: the image member's data offset in its tar
    size: np.ndarray  # int64: its size in bytes
    cls: list[tuple[int, int, str]]  # the .cls member of each sample: (offset, size, name)
    _fds: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)  # tar index -> fd
    _pid: int | None = field(default=None, repr=False, compare=False)  # the process that opened them

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> str:
        """What names sample ``i`` in messages: ``OUT/train/shard-000000.tar:KEY.jpg``."""
        return os.path.join(self.base, self.files[i])

    def member(self, i: int) -> str:
        """The image member name of sample ``i`` (``KEY.jpg``)."""
        return self.files[i].split(":", 1)[1]

    def open(self, i: int) -> bytes:
        """The image bytes of sample ``i``: one ``pread`` from its tar. Each process keeps up to
        ``MAX_OPEN_TARS`` tars open, closing the least recently used. Raises OSError for a
        truncated tar."""
        k = int(self.shard[i])
        if self._pid != os.getpid():  # a forked worker: close the parent's copies, open its own
            self.close()
            self._pid = os.getpid()
        fd = self._fds.get(k)
        if fd is None:
            if len(self._fds) >= MAX_OPEN_TARS:
                os.close(self._fds.popitem(last=False)[1])
            fd = self._fds[k] = os.open(self.tars[k], os.O_RDONLY)
        else:
            self._fds.move_to_end(k)
        data = os.pread(fd, int(self.size[i]), int(self.offset[i]))
        if len(data) != self.size[i]:
            raise OSError(f"{self.tars[k]} ends before the member {self.member(i)}: the shard is truncated")
        return data

    def subset(self, keep: np.ndarray) -> ShardSplit:
        """The split with only the samples at the indices ``keep`` (int64)."""
        return ShardSplit(
            self.name,
            self.base,
            [self.files[i] for i in keep],
            self.labels[keep],
            self.source,
            self.tars,
            self.shard[keep],
            self.offset[keep],
            self.size[keep],
            [self.cls[i] for i in keep],
        )

    def close(self) -> None:
        """Close the tars this process has open."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self):  # DataLoader workers: no descriptors across processes
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = OrderedDict(), None
        return state

    def image_exts(self) -> list[str]:
        """The image member extensions in this split (DALI's reader takes them as ``ext``)."""
        return sorted({f.rsplit(".", 1)[1] for f in self.files})


def load_split(root: str, name: str, manifest: dict) -> ShardSplit:
    """The ``name`` split of the shard set ``root`` from its index files. Raises DataError for a
    missing or truncated tar or an index that does not fit the manifest."""
    entry = manifest["splits"][name]
    base = os.path.join(root, name)
    n = int(entry["images"])
    bounds = np.cumsum(entry["per_class"])
    files: list[str | None] = [None] * n
    shard = np.zeros(n, np.int64)
    offset = np.zeros(n, np.int64)
    size = np.zeros(n, np.int64)
    cls: list = [None] * n
    tars = []
    for k, sh in enumerate(entry["shards"]):
        tar = os.path.join(base, sh["tar"])
        tars.append(os.path.abspath(tar))
        try:
            actual = os.path.getsize(tar)
        except OSError:
            raise DataError(f"The shard {tar} listed in {os.path.join(root, MANIFEST)} is missing.") from None
        if actual != sh["bytes"]:
            raise DataError(
                f"The shard {tar} has {actual} bytes, the manifest says {sh['bytes']}: it is truncated or "
                f"was changed. Copy it again (scripts/make_shards.py --check {root} checks every shard)."
            )
        idx = os.path.join(base, sh["index"])
        for members in parse_index(idx):
            image = [m for m in members if m[0] != "cls"]
            label = [m for m in members if m[0] == "cls"]
            key = members[0][3].split(".", 1)[0]
            head = key.split("_", 1)[0]
            if len(image) != 1 or len(label) != 1 or not head.isdigit() or not int(head) < n:
                raise DataError(f"{idx}: the sample {key} does not have the form of {FORMAT} version {VERSION}.")
            i = int(head)
            if files[i] is not None:
                raise DataError(f"{idx}: the sample index {i} appears twice in the {name} shards.")
            ext, offset[i], size[i], member = image[0]
            files[i], shard[i], cls[i] = f"{sh['tar']}:{member}", k, label[0][1:]
    missing = [i for i, f in enumerate(files) if f is None]
    if missing:
        raise DataError(f"The {name} index files of {root} miss {len(missing)} of {n} samples; remake the shards.")
    labels = np.searchsorted(bounds, np.arange(n), side="right").astype(np.int64)
    return ShardSplit(name, base, files, labels, base, tars, shard, offset, size, cls)


def load_shard_splits(root: str, val_only: bool = False) -> tuple[list[str], ShardSplit | None, ShardSplit]:
    """(classes, train, val) of the shard set ``root``; the classes in the folder's order.
    ``val_only``: train is None and the train shards are not read."""
    manifest = read_manifest(root)
    train = None if val_only else load_split(root, "train", manifest)
    return list(manifest["classes"]), train, load_split(root, "val", manifest)


def write_dali_index(path: str, split: ShardSplit, indices) -> None:
    """An index file for DALI's ``fn.readers.webdataset`` listing the samples ``indices`` (all in
    one tar) in that order, each with its image and ``.cls`` members."""
    lines = []
    for i in indices:
        (co, cs, cname) = split.cls[i]
        ext = split.files[i].rsplit(".", 1)[1]
        lines.append(f"{ext} {split.offset[i]} {split.size[i]} {split.member(i)} cls {co} {cs} {cname}\n")
    with open(path, "w") as f:
        f.write(f"{INDEX_VERSION} {len(lines)}\n" + "".join(lines))


# ---------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------


def _check_members(args):
    from .scan import check_image

    tar, members, full, backend = args
    out = []
    with open(tar, "rb") as f:
        for name, offset, size in members:
            f.seek(offset)
            out.append((name, check_image(f.read(size), full, backend)))
    return out


def check_members(
    split: ShardSplit,
    workers: int = 0,
    full: bool = False,
    desc: str = "checking images",
    progress: bool = True,
    backend: str = "torchvision",
) -> dict[str, str]:
    """{member as in ``split.files``: reason} for every image ``backend`` cannot read (``scan.check_image``
    on its bytes), in parallel processes, a chunk of one tar at a time."""
    import multiprocessing

    workers = workers or min(os.cpu_count() or 1, 32)
    jobs = []
    for k, tar in enumerate(split.tars):
        mine = np.flatnonzero(split.shard == k)
        for lo in range(0, len(mine), 256):
            chunk = [(split.files[i], int(split.offset[i]), int(split.size[i])) for i in mine[lo : lo + 256]]
            jobs.append((tar, chunk, full, backend))
    bar = Progress(len(split), desc, unit="img", enabled=progress)
    bad: dict[str, str] = {}
    pool = None
    if workers > 1 and len(split) > 512:  # as scan.check_files: a pool only pays off for many images
        pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        for res in pool.imap_unordered(_check_members, jobs) if pool else map(_check_members, jobs):
            bad.update({name: reason for name, reason in res if reason})
            bar.update(len(res))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return dict(sorted(bad.items()))


def check_shards(root: str, workers: int = 0, full: bool = True, progress=True, backend="torchvision") -> dict:
    """A report on the shard set ``root`` (``make_shards --check``): checksums of every tar and index
    file, every tar's members against its index, every label against the manifest, and the images
    ``backend`` cannot read (``full``: decoded). Never raises for what it finds; lists it."""
    manifest = read_manifest(root)
    report: dict = {"root": root, "backend": backend, "classes": len(manifest["classes"]), "splits": {}, "problems": []}
    problems = report["problems"]
    for name in SPLITS:
        entry = manifest["splits"][name]
        found = []
        for sh in entry["shards"]:
            tar, idx = os.path.join(root, name, sh["tar"]), os.path.join(root, name, sh["index"])
            for path, digest in ((tar, sh["sha256"]), (idx, sh["index_sha256"])):
                if not os.path.isfile(path):
                    found.append(f"{path} is missing")
                elif sha256(path) != digest:
                    found.append(f"{path}: checksum differs from the manifest (changed or truncated)")
            if not found:
                found += _tar_matches_index(tar, idx)
        problems += found
        if found:
            continue
        try:
            split = load_split(root, name, manifest)
        except DataError as e:
            problems.append(str(e))
            continue
        for i, (offset, size, cname) in enumerate(split.cls):
            with open(split.tars[int(split.shard[i])], "rb") as f:
                f.seek(offset)
                text = f.read(size)
            if text != b"%d" % split.labels[i]:
                problems.append(f"{split.base}/{cname}: label {text!r}, the manifest's counts give {split.labels[i]}")
                break
        bad = check_members(split, workers, full, desc=name, progress=progress, backend=backend)
        if bad:
            problems.append(f"{name}: {len(bad)} unreadable image(s)")
        report["splits"][name] = {"images": len(split), "shards": len(entry["shards"]), "bad": bad}
    report["ok"] = not problems
    return report


def _tar_matches_index(tar: str, idx: str) -> list[str]:
    """Problems where the tar's own headers (read by ``tarfile``) and its index file disagree."""
    with tarfile.open(tar) as t:
        actual = [(m.name, m.offset_data, m.size) for m in t if m.isfile()]
    listed = [(name, offset, size) for members in parse_index(idx) for _, offset, size, name in members]
    if actual != listed:
        return [f"{idx} does not match the members of {tar}; remake the shards"]
    return []
