"""The ImageNet folder layout: scanning it, checking it, and repairing the official val split.

Layout: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>``; class names are the
sorted folder names of ``train/`` and must be the same in ``val/``. Alternatively
``data.train_list`` / ``data.val_list`` name text files with one ``relative/path label`` pair
per line (DALI's file_list format; paths relative to the list file's folder).

Decoding. ``load_rgb`` is the one rule for how a file becomes RGB, which both backends
follow: the photo as a person sees it (EXIF orientation applied), 16-bit samples scaled to
8 bits as ``round(v * 255 / 65535)``, float samples taken as [0, 1], alpha dropped (not
composited), every other mode (grayscale, palette, CMYK, 1-bit) converted by PIL. That is
what DALI's image decoder does with the files it reads; the torchvision backend applies it
with PIL. Real ImageNet holds grayscale JPEGs, CMYK JPEGs and a PNG named ``.JPEG``; all
are valid and decode to RGB.

Unreadable files. A file that is empty, not an image, truncated or otherwise undecodable is
"bad", and so is, for the DALI backend, a file DALI's decoder cannot read by the rule above
(a GIF, a 1-bit TIFF...). ``check_image`` decides for a backend: cheaply from the header and
the last bytes (a JPEG must end with its end-of-image marker, a PNG with its IEND chunk;
the rare file that does not is fully decoded to decide), or with ``full=True`` by decoding
every file; for DALI, any file that is neither JPEG nor PNG is also decoded by DALI once and
compared with the rule. ``find_bad_images`` runs it over a split in parallel and caches the
answer per backend next to the data (``<split>/.resnest_scan_<fingerprint>.json``, or under
``~/.cache/resnest_train`` when the data folder is read-only); the fingerprint is the
backend and the list of file names, so adding or removing files triggers a new scan.
Delete the cache file to force one after editing files in place.

Text files (file lists, label files) are read as UTF-8 with or without a byte-order mark;
file names that are not UTF-8 pass through as ``os.listdir`` gives them (surrogate escapes).
"""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .common import fingerprint, log

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".webp")
SCAN_VERSION = 2  # 2: judged per backend
DECODERS = ("torchvision", "dali")  # who judges whether a file can be read: PIL, or DALI's decoder


@dataclass
class Split:
    """One split: files relative to ``base`` with integer labels."""

    name: str  # "train" | "val"
    base: str
    files: list[str]
    labels: np.ndarray  # int64
    source: str  # what the user named: a folder or a list file

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> str:
        return os.path.join(self.base, self.files[i])

    def subset(self, keep: np.ndarray) -> Split:
        return Split(self.name, self.base, [self.files[i] for i in keep], self.labels[keep], self.source)


def open_text(path: str):
    """Open a text file for reading: UTF-8 with or without a byte-order mark.

    Windows tools (and some copies of Kaggle's LOC_val_solution.csv) start files with a BOM;
    bytes that are not UTF-8 (a file name in a list) come through as surrogate escapes, as
    ``os.listdir`` gives such names, so the path still opens.
    """
    return open(path, encoding="utf-8-sig", errors="surrogateescape")


# ---------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------

def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def list_classes(split_dir: str) -> list[str]:
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _list_images(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if _is_image(e.name) and e.is_file())


def _names(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def scan_split(split_dir: str, name: str, classes: list[str]) -> Split:
    files, labels, empty = [], [], []
    for label, cls in enumerate(classes):
        images = _list_images(os.path.join(split_dir, cls))
        if not images:
            empty.append(cls)
        files.extend(f"{cls}/{img}" for img in images)
        labels.extend([label] * len(images))
    if empty:
        raise DataError(
            f"{len(empty)} class folder(s) under {split_dir} hold no images ({_names(empty)}); every class "
            f"needs at least one image with one of the extensions {', '.join(IMG_EXTENSIONS)}. "
            f"Add the images or remove the empty folders from both train/ and val/.")
    return Split(name, split_dir, files, np.asarray(labels, dtype=np.int64), split_dir)


def check_layout(root: str) -> tuple[str, str, list[str]]:
    """Validate ``root`` and return (train_dir, val_dir, classes). Raises DataError."""
    if not root:
        raise DataError("data.root is not set: point it at a folder with train/<class>/* and val/<class>/* "
                        "(e.g. data.root=/data/imagenet), or make the demo set with "
                        "`python -m resnest_train.data.demo --out data/demo` and use data.root=data/demo.")
    if not os.path.isdir(root):
        raise DataError(f"data.root={root} does not exist or is not a folder; point it at a folder with "
                        f"train/<class>/* and val/<class>/* images.")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    for d in (train_dir, val_dir):
        if not os.path.isdir(d):
            raise DataError(f"{d} is missing: data.root={root} must hold train/<class>/* and val/<class>/*. "
                            f"For the official flat val/ folder run scripts/prepare_imagenet.py first.")
    classes = list_classes(train_dir)
    if not classes:
        raise DataError(f"{train_dir} holds no class folders: expected train/<class>/<image> "
                        f"(one folder per class).")
    val_classes = list_classes(val_dir)
    if not val_classes:
        flat = _list_images(val_dir)
        hint = (f" It holds {len(flat)} images directly: that is the official flat layout; sort them into "
                f"class folders with `python scripts/prepare_imagenet.py --val-dir {val_dir} --labels "
                f"LOC_val_solution.csv`." if flat else "")
        raise DataError(f"{val_dir} holds no class folders: expected val/<class>/<image>.{hint}")
    if classes != val_classes:
        only_train = sorted(set(classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(classes))
        parts = []
        if only_train:
            parts.append(f"missing from val/: {_names(only_train)}")
        if only_val:
            parts.append(f"missing from train/: {_names(only_val)}")
        raise DataError(f"The class folders of {train_dir} and {val_dir} differ ({'; '.join(parts)}). "
                        f"Both splits need the same class folders, or the labels would not match; "
                        f"add or remove folders so they agree.")
    return train_dir, val_dir, classes


def read_list(path: str, name: str) -> Split:
    """A ``relative/path label`` list file (paths relative to the list file's folder)."""
    if not os.path.isfile(path):
        raise DataError(f"data.{name}_list={path} does not exist; give a text file with one "
                        f"'relative/path label' pair per line, or leave data.{name}_list empty.")
    base = os.path.dirname(os.path.abspath(path))
    files, labels = [], []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
                raise DataError(f"{path}:{lineno}: expected 'relative/path label' with a label >= 0, "
                                f"got {line!r}.")
            files.append(parts[0])
            labels.append(int(parts[1]))
    if not files:
        raise DataError(f"data.{name}_list={path} lists no images.")
    missing = [f for f in files[:1000] if not os.path.isfile(os.path.join(base, f))]
    if missing:
        raise DataError(f"data.{name}_list={path} names files that do not exist, e.g. "
                        f"{os.path.join(base, missing[0])} (paths are relative to the list file's folder, "
                        f"{base}).")
    return Split(name, base, files, np.asarray(labels, dtype=np.int64), path)


def load_splits(cfg) -> tuple[list[str], Split, Split]:
    """(classes, train, val) from a DataConfig: folder layout or list files."""
    if cfg.train_list or cfg.val_list:
        if not (cfg.train_list and cfg.val_list):
            raise DataError("data.train_list and data.val_list go together: set both list files, or neither "
                            "to read the train/ and val/ folders under data.root.")
        train, val = read_list(cfg.train_list, "train"), read_list(cfg.val_list, "val")
        n = int(max(train.labels.max(), val.labels.max())) + 1
        classes = [str(i) for i in range(n)]
        if cfg.root and os.path.isdir(os.path.join(cfg.root, "train")):
            folders = list_classes(os.path.join(cfg.root, "train"))
            if len(folders) == n:
                classes = folders
        return classes, train, val
    train_dir, val_dir, classes = check_layout(cfg.root)
    return classes, scan_split(train_dir, "train", classes), scan_split(val_dir, "val", classes)


# ---------------------------------------------------------------------------------------
# Checking images
# ---------------------------------------------------------------------------------------

def sniff(head: bytes) -> str | None:
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"PF", b"Pf"):  # PF, Pf: float PFM
        return "pnm"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def to_rgb(im):
    """The RGB image (PIL, uint8) of a PIL image of any mode, by the rule of the module docstring.

    16-bit samples (modes ``I;16*``, and ``I`` as 16-bit PNG/PNM files open) become
    ``round(v * 255 / 65535)``, float samples (``F``) ``round(clip(v, 0, 1) * 255)``: what
    DALI's decoder (nvImageCodec) makes of such files, measured. PIL's own ``convert`` clips
    instead of scaling (a 16-bit photo turns white). Alpha is dropped, as ``convert`` and DALI
    both do; palette (transparent entry or not), CMYK, 1-bit and the rest go through ``convert``.
    """
    from PIL import Image
    if im.mode == "F":
        a = np.floor(np.clip(np.asarray(im, dtype=np.float32), 0, 1) * np.float32(255) + np.float32(0.5))
        im = Image.fromarray(a.astype(np.uint8), "L")
    elif im.mode == "I" or im.mode.startswith("I;16"):
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        im = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    return im.convert("RGB")


def load_rgb(path: str):
    """Decode ``path`` to an RGB PIL image the way a person sees it: EXIF orientation applied
    (``ImageOps.exif_transpose``, as DALI's decoder does by default), then ``to_rgb``.
    Raises whatever PIL raises for a file it cannot read."""
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        ImageOps.exif_transpose(im, in_place=True)
        return to_rgb(im)


def _decode(path: str) -> str | None:
    try:
        load_rgb(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is bad
        return f"cannot be decoded ({type(e).__name__}: {e})"
    return None


def dali_name_problem(path: str) -> str | None:
    """Why DALI cannot be given this file name, or None: its file list is one name per line."""
    if "\n" in path:  # a carriage return or a space is fine (the name ends with its extension)
        return ("a file name with a line break, which DALI's file list cannot hold; rename the file, "
                "or use data.backend=torchvision")
    return None


def check_image(path: str, full: bool = False, backend: str = "torchvision") -> str | None:
    """None when ``backend`` can read ``path`` as an image, else a short reason.

    Cheap unless ``full`` (every file decoded). ``backend='dali'`` also asks DALI's decoder:
    a file that is neither JPEG nor PNG is always decoded by DALI once and compared with
    ``load_rgb`` (DALI cannot read GIF, 1-bit or 32-bit TIFF, and reads 2-channel TIFF
    differently); JPEG and PNG, which it reads as ``load_rgb`` does in every mode
    (tests/test_data_faults.py), are decoded by DALI only when ``full``. Raises ValueError
    for an unknown backend.
    """
    if backend not in DECODERS:
        raise ValueError(f"backend {backend!r} is not one of {DECODERS}")
    kind, reason = _check_pil(path, full)
    if reason or backend == "torchvision":
        return reason
    reason = dali_name_problem(path)
    if reason is None and (full or kind not in ("jpeg", "png")):
        from .dali import dali_decode_problem
        reason = dali_decode_problem(path, compare=kind not in ("jpeg", "png"))
    return reason


def _check_pil(path: str, full: bool) -> tuple[str | None, str | None]:
    """(sniffed kind, reason PIL cannot read the file or None)."""
    kind = None
    try:
        size = os.path.getsize(path)
        if size == 0:
            return kind, "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 4096))
            tail = f.read()
    except OSError as e:
        return kind, f"cannot be read ({e.strerror or e})"
    kind = sniff(head)
    if kind is None:
        return kind, "not an image (unrecognised header bytes)"
    if full:
        return kind, _decode(path)
    suspicious = False
    if kind == "jpeg":
        suspicious = not tail.rstrip(b"\x00 \t\r\n").endswith(b"\xff\xd9")
    elif kind == "png":
        suspicious = b"IEND" not in tail
    if suspicious:  # truncated, or valid with trailing bytes: a full decode decides
        reason = _decode(path)
        return kind, (f"truncated or corrupt: {reason}" if reason else None)
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
        if w <= 0 or h <= 0:
            return kind, f"invalid size {w}x{h}"
    except Exception as e:  # noqa: BLE001
        return kind, f"cannot be decoded ({type(e).__name__}: {e})"
    return kind, None


def _check_chunk(args):
    base, files, full, backend = args
    return [(f, check_image(os.path.join(base, f), full, backend)) for f in files]


class Progress:
    """A tiny progress bar on stderr: redrawn in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int, desc: str, stream=None, enabled: bool = True):
        self.total, self.desc, self.n = max(int(total), 0), desc, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if self.enabled and (now - self.last >= (0.2 if self.tty else 10.0) or self.n >= self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        el = now - self.start
        rate = self.n / el if el > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        frac = self.n / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        text = (f"{self.desc}: [{bar:<30}] {self.n}/{self.total} {100 * frac:5.1f}% "
                f"{rate:,.0f}/s eta {eta:,.0f}s")
        self.stream.write(("\r" + text) if self.tty else (text + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def check_files(base: str, files: Sequence[str], workers: int = 0, full: bool = False,
                desc: str = "checking images", progress: bool = True,
                backend: str = "torchvision") -> dict[str, str]:
    """{relative path: reason} for every file ``backend`` cannot read, checked in parallel (processes)."""
    workers = workers or min(os.cpu_count() or 1, 32)
    chunk = 64 if full else 256
    jobs = [(base, list(files[i:i + chunk]), full, backend) for i in range(0, len(files), chunk)]
    bar = Progress(len(files), desc, enabled=progress)
    bad: dict[str, str] = {}
    if workers <= 1 or len(files) <= 2 * chunk:
        results = map(_check_chunk, jobs)
        pool = None
    else:
        # spawn: safe even when the caller already started CUDA or DALI threads
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap_unordered(_check_chunk, jobs)
    try:
        for res in results:
            for f, reason in res:
                if reason:
                    bad[f] = reason
            bar.update(len(res))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return dict(sorted(bad.items()))


def _cache_paths(split: Split, fp: str) -> list[str]:
    name = f".resnest_scan_{fp[:16]}.json"
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.join(split.base, name), os.path.join(home, "resnest_train", name)]


def _read_cache(path: str, fp: str) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("version") == SCAN_VERSION and data.get("fingerprint") == fp:
            return data
    except (OSError, ValueError):
        pass
    return None


def _write_json_atomic(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_scan_")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def split_fingerprint(split: Split, backend: str) -> str:
    """Names the scan of ``split`` judged by ``backend``'s decoder (a GIF is bad for DALI only)."""
    return fingerprint([backend, os.path.abspath(split.base)]
                       + [f"{f}\t{label}" for f, label in zip(split.files, split.labels)])


def save_scan(split: Split, bad: dict[str, str], full: bool, backend: str) -> str:
    """Store a scan result where ``find_bad_images`` looks first; returns the path used."""
    fp = split_fingerprint(split, backend)
    data = {"version": SCAN_VERSION, "fingerprint": fp, "backend": backend, "base": os.path.abspath(split.base),
            "checked": len(split), "full": bool(full), "bad": bad}
    for path in _cache_paths(split, fp):
        try:
            _write_json_atomic(path, data)
            return path
        except OSError:
            continue
    return ""


def add_bad_image(split: Split, relpath: str, reason: str, backend: str) -> str:
    """Record one more bad file in the split's scan cache (a file that failed at run time)."""
    fp = split_fingerprint(split, backend)
    data = None
    for path in _cache_paths(split, fp):
        data = _read_cache(path, fp)
        if data:
            break
    bad = dict(data["bad"]) if data else {}
    bad[relpath] = reason
    return save_scan(split, bad, bool(data and data.get("full")), backend)


def find_bad_images(split: Split, workers: int = 0, backend: str = "torchvision") -> tuple[dict[str, str], str]:
    """({relative path: reason}, cache path) for a split, judged by what ``backend`` can read;
    scanned once, then read from the cache.

    Concurrent callers (one per rank) serialise on a lock file: the first scans, the rest
    read its result.
    """
    fp = split_fingerprint(split, backend)
    paths = _cache_paths(split, fp)
    for path in paths:
        data = _read_cache(path, fp)
        if data:
            return data["bad"], path
    lock_dir = split.base if os.access(split.base, os.W_OK) else os.path.dirname(paths[1])
    os.makedirs(lock_dir, exist_ok=True)
    with open(os.path.join(lock_dir, f".resnest_scan_{fp[:16]}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for path in paths:
                data = _read_cache(path, fp)
                if data:
                    return data["bad"], path
            rank0 = int(os.environ.get("RANK", "0")) == 0
            if rank0:
                log.info("data.skip_bad_images: checking the %d %s images once for the %s backend (header "
                         "and end-of-file checks); the result is cached", len(split), split.name, backend)
            bad = check_files(split.base, split.files, workers, desc=f"checking {split.name} images",
                              progress=rank0, backend=backend)
            return bad, save_scan(split, bad, full=False, backend=backend)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------
# The official val split: labels -> class folders
# ---------------------------------------------------------------------------------------

def read_kaggle_solution(path: str) -> dict[str, str]:
    """{image id: synset} from Kaggle's LOC_val_solution.csv (ImageId,PredictionString)."""
    out = {}
    with open_text(path) as f:
        header = f.readline().strip().split(",")
        if header[:2] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path}: expected the header 'ImageId,PredictionString' of Kaggle's "
                            f"LOC_val_solution.csv, got {','.join(header)!r}.")
        for lineno, line in enumerate(f, 2):
            line = line.strip()
            if not line:
                continue
            image_id, _, pred = line.partition(",")
            tokens = pred.split()
            if not tokens or not tokens[0].startswith("n"):
                raise DataError(f"{path}:{lineno}: expected a synset id (nXXXXXXXX) as the first token of "
                                f"PredictionString, got {pred[:40]!r}.")
            out[image_id] = tokens[0]
    return out


def read_synsets(path: str) -> list[str]:
    """Synset ids in file order from a 'n01440764 tench, Tinca tinca' text file."""
    with open_text(path) as f:
        wnids = [line.split()[0] for line in f if line.strip()]
    bad = [w for w in wnids if not (w.startswith("n") and w[1:].isdigit())]
    if bad:
        raise DataError(f"{path}: expected lines 'nXXXXXXXX description', found {bad[0]!r}.")
    return wnids


def read_devkit_ground_truth(gt_path: str, synsets_path: str, order: str = "devkit") -> list[str]:
    """Synset of each val image, in file order, from the devkit's 1-based ILSVRC2012 ids.

    The devkit ids follow the synset order of its meta.mat, which is NOT sorted by synset id;
    Kaggle's LOC_synset_mapping.txt is sorted. ``order='devkit'`` needs a mapping file whose
    line i is the synset with ILSVRC2012_ID i (for example written from meta.mat); a sorted
    file is refused there. ``order='sorted'`` accepts ids that count classes in sorted order.
    """
    wnids = read_synsets(synsets_path)
    if order == "devkit" and wnids == sorted(wnids) and len(wnids) > 1:
        raise DataError(
            f"{synsets_path} is sorted by synset id (like Kaggle's LOC_synset_mapping.txt), but the devkit's "
            f"ILSVRC2012_validation_ground_truth.txt counts classes in the order of the devkit's meta.mat, "
            f"which is not sorted: the labels would be wrong. Give a mapping in meta.mat order (line i = "
            f"ILSVRC2012_ID i), or pass --id-order sorted if your ids really count sorted classes.")
    out = []
    with open_text(gt_path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if not line.isdigit() or not 1 <= int(line) <= len(wnids):
                raise DataError(f"{gt_path}:{lineno}: expected a class id from 1 to {len(wnids)}, got {line!r}.")
            out.append(wnids[int(line) - 1])
    return out


def val_assignments(val_dir: str, labels: str, synsets: str = "", order: str = "devkit") -> dict[str, str]:
    """{file name in val_dir: synset} from either label format."""
    images = _list_images(val_dir)
    if not images:
        raise DataError(f"{val_dir} holds no images directly; nothing to sort (already prepared?).")
    if labels.endswith(".csv"):
        by_id = read_kaggle_solution(labels)
        out, missing = {}, []
        for name in images:
            stem = os.path.splitext(name)[0]
            if stem in by_id:
                out[name] = by_id[stem]
            else:
                missing.append(name)
        if missing:
            raise DataError(f"{labels} has no label for {len(missing)} image(s) in {val_dir}, e.g. {missing[0]}.")
        return out
    if not synsets:
        raise DataError("The devkit ground truth holds class numbers: also pass --synsets with the mapping "
                        "from class number to synset id (see --help).")
    wnids = read_devkit_ground_truth(labels, synsets, order)
    if len(wnids) != len(images):
        raise DataError(f"{labels} has {len(wnids)} labels but {val_dir} holds {len(images)} images; the "
                        f"devkit ground truth labels the 50,000 official images in sorted file-name order.")
    return dict(zip(images, wnids))


def organize_val(val_dir: str, assignments: dict[str, str], out_dir: str = "", mode: str = "move",
                 dry_run: bool = False) -> dict[str, int]:
    """Move / symlink / copy each image into ``out_dir/<synset>/``; returns images per class."""
    import shutil
    out_dir = out_dir or val_dir
    counts: dict[str, int] = {}
    for name, wnid in sorted(assignments.items()):
        counts[wnid] = counts.get(wnid, 0) + 1
        if dry_run:
            continue
        src, dst_dir = os.path.join(val_dir, name), os.path.join(out_dir, wnid)
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, name)
        if mode == "move":
            os.replace(src, dst)
        elif mode == "symlink":
            if not os.path.lexists(dst):
                os.symlink(os.path.abspath(src), dst)
        elif mode == "copy":
            shutil.copy2(src, dst)
        else:
            raise ValueError(mode)
    return dict(sorted(counts.items()))


def check_dataset(root: str, workers: int = 0, full: bool = True, progress: bool = True,
                  write_cache: bool = True, backend: str = "torchvision") -> dict:
    """A report on a dataset in ImageNet layout, judged by what ``backend`` can read; never
    raises for bad images (they are listed)."""
    if not os.path.isdir(root):
        raise DataError(f"{root} does not exist or is not a folder.")
    report: dict = {"root": root, "backend": backend, "splits": {}, "problems": []}
    split_classes = {}
    for name in ("train", "val"):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            report["problems"].append(f"{d} is missing")
            continue
        classes = list_classes(d)
        split_classes[name] = classes
        per_class = {c: len(_list_images(os.path.join(d, c))) for c in classes}
        empty = [c for c, n in per_class.items() if n == 0]
        if empty:
            report["problems"].append(f"{name}: {len(empty)} empty class folder(s): {_names(empty)}")
        flat = _list_images(d)
        if flat:
            report["problems"].append(f"{name}: {len(flat)} image(s) directly in {d}, outside class folders")
        split = Split(name, d, [f"{c}/{f}" for c in classes for f in _list_images(os.path.join(d, c))],
                      np.asarray([i for i, c in enumerate(classes) for _ in range(per_class[c])], dtype=np.int64),
                      d)
        bad = check_files(d, split.files, workers, full=full, desc=f"{name}", progress=progress, backend=backend)
        if bad:
            report["problems"].append(f"{name}: {len(bad)} unreadable file(s)")
        if write_cache and split.files:
            save_scan(split, bad, full, backend)
        counts = list(per_class.values()) or [0]
        report["splits"][name] = {"classes": len(classes), "images": len(split), "min_per_class": min(counts),
                                  "max_per_class": max(counts), "per_class": per_class, "bad": bad}
    if len(split_classes) == 2 and split_classes["train"] != split_classes["val"]:
        tr, va = set(split_classes["train"]), set(split_classes["val"])
        if tr - va:
            report["problems"].append(f"classes missing from val: {_names(sorted(tr - va))}")
        if va - tr:
            report["problems"].append(f"classes missing from train: {_names(sorted(va - tr))}")
    report["ok"] = not report["problems"]
    return report
