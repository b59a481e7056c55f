"""The ImageNet folder layout and file lists: which files a split holds, with which labels.

Layout: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>``; class names are the
sorted folder names of ``train/`` and must be the same in ``val/``. Alternatively
``data.train_list`` / ``data.val_list`` name text files with one ``relative/path label`` pair
per line (DALI's file_list format; paths relative to the list file's folder).

Text files (file lists, label files) are read as UTF-8 with or without a byte-order mark;
file names that are not UTF-8 pass through as ``os.listdir`` gives them (surrogate escapes).
Every mistake in the layout raises ``DataError`` naming the folder or file and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import DataConfig
from ..errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".webp")


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
        """The path of file ``i``."""
        return os.path.join(self.base, self.files[i])

    def open(self, i: int) -> str:
        """What ``decode.load_rgb`` reads for file ``i``: its path (a shard split gives the bytes)."""
        return self.path(i)

    def subset(self, keep: np.ndarray) -> Split:
        """The split with only the files at the indices ``keep`` (int64)."""
        return Split(self.name, self.base, [self.files[i] for i in keep], self.labels[keep], self.source)


def open_text(path: str):
    """Open a text file for reading: UTF-8 with or without a byte-order mark.

    Windows tools (and some copies of Kaggle's LOC_val_solution.csv) start files with a BOM;
    bytes that are not UTF-8 (a file name in a list) come through as surrogate escapes, as
    ``os.listdir`` gives such names, so the path still opens.
    """
    return open(path, encoding="utf-8-sig", errors="surrogateescape")


def is_image_name(name: str) -> bool:
    """Whether ``name`` is an image file name this layout reads (not hidden, a known extension)."""
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def list_classes(split_dir: str) -> list[str]:
    """The class folders of a split folder, sorted (hidden folders ignored)."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def list_images(folder: str) -> list[str]:
    """The image files directly in ``folder``, sorted."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if is_image_name(e.name) and e.is_file())


def name_list(items: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` of ``items`` joined with commas, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def scan_split(split_dir: str, name: str, classes: list[str]) -> Split:
    """The ``Split`` of a folder with one sub-folder per class in ``classes`` (labels = their indices).

    Raises DataError when a class folder holds no images.
    """
    files, labels, empty = [], [], []
    for label, cls in enumerate(classes):
        images = list_images(os.path.join(split_dir, cls))
        if not images:
            empty.append(cls)
        files.extend(f"{cls}/{img}" for img in images)
        labels.extend([label] * len(images))
    if empty:
        raise DataError(
            f"{len(empty)} class folder(s) under {split_dir} hold no images ({name_list(empty)}); every class "
            f"needs at least one image with one of the extensions {', '.join(IMG_EXTENSIONS)}. "
            f"Add the images or remove the empty folders from both train/ and val/."
        )
    return Split(name, split_dir, files, np.asarray(labels, dtype=np.int64), split_dir)


def check_layout(root: str, val_only: bool = False) -> tuple[str, str, list[str]]:
    """Validate ``root`` and return (train_dir, val_dir, classes). Raises DataError.

    ``val_only``: only ``val/`` must exist, and the classes are its sorted folder names (the same
    list as ``train/``'s whenever the two agree, as training requires): what evaluating needs."""
    if not root:
        raise DataError(
            "data.root is not set: point it at a folder with train/<class>/* and val/<class>/* "
            "(e.g. data.root=/data/imagenet), or make the demo set with "
            "`python -m resnest_train.data.demo --out data/demo` and use data.root=data/demo."
        )
    if not os.path.isdir(root):
        raise DataError(
            f"data.root={root} does not exist or is not a folder; point it at a folder with "
            f"train/<class>/* and val/<class>/* images."
        )
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    needed = "val/<class>/*" if val_only else "train/<class>/* and val/<class>/*"
    for d in (val_dir,) if val_only else (train_dir, val_dir):
        if not os.path.isdir(d):
            raise DataError(
                f"{d} is missing: data.root={root} must hold {needed}. "
                f"For the official flat val/ folder run scripts/prepare_imagenet.py first."
            )
    if not val_only:
        classes = list_classes(train_dir)
        if not classes:
            raise DataError(
                f"{train_dir} holds no class folders: expected train/<class>/<image> (one folder per class)."
            )
    val_classes = list_classes(val_dir)
    if not val_classes:
        flat = list_images(val_dir)
        hint = (
            f" It holds {len(flat)} images directly: that is the official flat layout; sort them into "
            f"class folders with `python scripts/prepare_imagenet.py --val-dir {val_dir} --labels "
            f"LOC_val_solution.csv`."
            if flat
            else ""
        )
        raise DataError(f"{val_dir} holds no class folders: expected val/<class>/<image>.{hint}")
    if val_only:
        return train_dir, val_dir, val_classes
    if classes != val_classes:
        only_train = sorted(set(classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(classes))
        parts = []
        if only_train:
            parts.append(f"missing from val/: {name_list(only_train)}")
        if only_val:
            parts.append(f"missing from train/: {name_list(only_val)}")
        raise DataError(
            f"The class folders of {train_dir} and {val_dir} differ ({'; '.join(parts)}). "
            f"Both splits need the same class folders, or the labels would not match; "
            f"add or remove folders so they agree."
        )
    return train_dir, val_dir, classes


def read_list(path: str, name: str) -> Split:
    """A ``relative/path label`` list file (paths relative to the list file's folder)."""
    if not os.path.isfile(path):
        raise DataError(
            f"data.{name}_list={path} does not exist; give a text file with one "
            f"'relative/path label' pair per line, or leave data.{name}_list empty."
        )
    base = os.path.dirname(os.path.abspath(path))
    files, labels = [], []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
                raise DataError(f"{path}:{lineno}: expected 'relative/path label' with a label >= 0, got {line!r}.")
            files.append(parts[0])
            labels.append(int(parts[1]))
    if not files:
        raise DataError(f"data.{name}_list={path} lists no images.")
    missing = [f for f in files[:1000] if not os.path.isfile(os.path.join(base, f))]
    if missing:
        raise DataError(
            f"data.{name}_list={path} names files that do not exist, e.g. "
            f"{os.path.join(base, missing[0])} (paths are relative to the list file's folder, "
            f"{base})."
        )
    return Split(name, base, files, np.asarray(labels, dtype=np.int64), path)


def data_format(cfg: DataConfig) -> str:
    """``data.format`` resolved: ``auto`` is shards when ``data.root`` holds a shard manifest
    (``shards.MANIFEST``), else folder. Raises DataError for an unknown name, and for shards with
    list files or without a manifest."""
    from .shards import FORMATS, MANIFEST, is_shards

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise DataError(f"data.format={fmt!r} is not one of {', '.join(FORMATS)}.")
    if fmt == "auto":
        fmt = "shards" if not (cfg.train_list or cfg.val_list) and is_shards(cfg.root) else "folder"
    if fmt == "shards" and (cfg.train_list or cfg.val_list):
        raise DataError("data.format=shards reads data.root's shards; leave data.train_list and data.val_list empty.")
    if fmt == "shards" and not is_shards(cfg.root):
        raise DataError(
            f"data.format=shards but data.root={cfg.root or '(unset)'} holds no {MANIFEST}; make the shards "
            f"with `python scripts/make_shards.py IMAGENET_ROOT OUT` and set data.root=OUT, or use "
            f"data.format: folder."
        )
    return fmt


def load_splits(cfg: DataConfig, val_only: bool = False) -> tuple[list[str], Split | None, Split]:
    """(classes, train, val) from a DataConfig: folder layout, list files or tar shards
    (``data.format``; a shard split is a ``shards.ShardSplit``).

    ``val_only`` (evaluating): train is None, and neither ``train/``, ``data.train_list`` nor the
    train shards are read or need to exist; the classes come from the val split."""
    if data_format(cfg) == "shards":
        from .shards import load_shard_splits

        return load_shard_splits(cfg.root, val_only)
    if cfg.train_list or cfg.val_list:
        if not cfg.val_list or not (cfg.train_list or val_only):
            raise DataError(
                "data.train_list and data.val_list go together: set both list files, or neither "
                "to read the train/ and val/ folders under data.root."
                + (" Evaluating needs data.val_list only." if val_only else "")
            )
        train = None if val_only else read_list(cfg.train_list, "train")
        val = read_list(cfg.val_list, "val")
        n = int(max(split.labels.max() for split in (train, val) if split is not None)) + 1
        classes = [str(i) for i in range(n)]
        if cfg.root and os.path.isdir(os.path.join(cfg.root, "train")):
            folders = list_classes(os.path.join(cfg.root, "train"))
            if len(folders) == n:
                classes = folders
        return classes, train, val
    train_dir, val_dir, classes = check_layout(cfg.root, val_only)
    train = None if val_only else scan_split(train_dir, "train", classes)
    return classes, train, scan_split(val_dir, "val", classes)
