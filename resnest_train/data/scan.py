"""Unreadable images: checking files for a backend, in parallel, with a cache next to the data.

A file that is empty, not an image, truncated or otherwise undecodable is "bad", and so is,
for the DALI backend, a file DALI's decoder cannot read by the rule of ``decode.load_rgb``
(a GIF, a 1-bit TIFF...). ``check_image`` decides for a backend: cheaply from the header and
the last bytes (a JPEG must end with its end-of-image marker, a PNG with its IEND chunk;
the rare file that does not is fully decoded to decide), or with ``full=True`` by decoding
every file; for DALI, any file that is neither JPEG nor PNG is also decoded by DALI once and
compared with the rule. ``find_bad_images`` runs it over a split in parallel and caches the
answer per backend next to the data (``<split>/.resnest_scan_<fingerprint>.json``, or under
``~/.cache/resnest_train`` when the data folder is read-only); the fingerprint is the
backend and the list of file names, so adding or removing files triggers a new scan.
Delete the cache file to force one after editing files in place. ``check_dataset`` is the
report of ``resnest-prepare-imagenet --check``.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from ..progress import Progress
from ..rundir import read_json, write_json
from .common import fingerprint, log
from .decode import load_rgb, sniff
from .layout import Split, list_classes, list_images, name_list

SCAN_VERSION = 2  # 2: judged per backend
DECODERS = ("torchvision", "dali")  # who judges whether a file can be read: PIL, or DALI's decoder


def _decode(path: str | bytes) -> str | None:
    try:
        load_rgb(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is bad
        return f"cannot be decoded ({type(e).__name__}: {e})"
    return None


def dali_name_problem(path: str) -> str | None:
    """Why DALI cannot be given this file name, or None: its file list is one name per line."""
    if "\n" in path:  # a carriage return or a space is fine (the name ends with its extension)
        return (
            "a file name with a line break, which DALI's file list cannot hold; rename the file, "
            "or use data.backend=torchvision"
        )
    return None


def check_image(path: str | bytes, full: bool = False, backend: str = "torchvision") -> str | None:
    """None when ``backend`` can read ``path`` as an image, else a short reason. ``path`` is a file,
    or an image's bytes (a member of a tar shard).

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
    reason = dali_name_problem(path) if isinstance(path, str) else None
    if reason is None and (full or kind not in ("jpeg", "png")):
        from .dali import dali_decode_problem

        reason = dali_decode_problem(path, compare=kind not in ("jpeg", "png"))
    return reason


def _ends(path: str | bytes) -> tuple[int, bytes, bytes]:
    """(size, first 32 bytes, last 4096 bytes) of a file or of bytes. Raises OSError."""
    if isinstance(path, bytes):
        return len(path), path[:32], path[-4096:]
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(32)
        f.seek(max(0, size - 4096))
        return size, head, f.read()


def _check_pil(path: str | bytes, full: bool) -> tuple[str | None, str | None]:
    """(sniffed kind, reason PIL cannot read the file or None)."""
    kind = None
    try:
        size, head, tail = _ends(path)
        if size == 0:
            return kind, "empty file (0 bytes)"
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
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
            w, h = im.size
        if w <= 0 or h <= 0:
            return kind, f"invalid size {w}x{h}"
    except Exception as e:  # noqa: BLE001
        return kind, f"cannot be decoded ({type(e).__name__}: {e})"
    return kind, None


def _check_chunk(args):
    base, files, full, backend = args
    return [(f, check_image(os.path.join(base, f), full, backend)) for f in files]


def check_files(
    base: str,
    files: Sequence[str],
    workers: int = 0,
    full: bool = False,
    desc: str = "checking images",
    progress: bool = True,
    backend: str = "torchvision",
) -> dict[str, str]:
    """{relative path: reason} for every file ``backend`` cannot read, checked in parallel (processes)."""
    workers = workers or min(os.cpu_count() or 1, 32)
    chunk = 64 if full else 256
    jobs = [(base, list(files[i : i + chunk]), full, backend) for i in range(0, len(files), chunk)]
    bar = Progress(len(files), desc, unit="img", enabled=progress)
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
    data = read_json(path)
    if data and data.get("version") == SCAN_VERSION and data.get("fingerprint") == fp:
        return data
    return None


def split_fingerprint(split: Split, backend: str) -> str:
    """Names the scan of ``split`` judged by ``backend``'s decoder (a GIF is bad for DALI only)."""
    return fingerprint(
        [backend, os.path.abspath(split.base)] + [f"{f}\t{label}" for f, label in zip(split.files, split.labels)]
    )


def save_scan(split: Split, bad: dict[str, str], full: bool, backend: str) -> str:
    """Store a scan result where ``find_bad_images`` looks first; returns the path used."""
    fp = split_fingerprint(split, backend)
    data = {
        "version": SCAN_VERSION,
        "fingerprint": fp,
        "backend": backend,
        "base": os.path.abspath(split.base),
        "checked": len(split),
        "full": bool(full),
        "bad": bad,
    }
    for path in _cache_paths(split, fp):
        try:
            write_json(path, data, indent=1)
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


def find_bad_images(
    split: Split, workers: int = 0, backend: str = "torchvision", rank: int = 0
) -> tuple[dict[str, str], str]:
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
            rank0 = rank == 0  # only rank 0 reports progress
            if rank0:
                log.info(
                    "data.skip_bad_images: checking the %d %s images once for the %s backend (header "
                    "and end-of-file checks); the result is cached",
                    len(split),
                    split.name,
                    backend,
                )
            desc = f"checking {split.name} images"
            from .shards import ShardSplit, check_members

            if isinstance(split, ShardSplit):  # its tar members' bytes
                bad = check_members(split, workers, desc=desc, progress=rank0, backend=backend)
            else:
                bad = check_files(split.base, split.files, workers, desc=desc, progress=rank0, backend=backend)
            return bad, save_scan(split, bad, full=False, backend=backend)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_dataset(
    root: str,
    workers: int = 0,
    full: bool = True,
    progress: bool = True,
    write_cache: bool = True,
    backend: str = "torchvision",
) -> dict:
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
        per_class = {c: len(list_images(os.path.join(d, c))) for c in classes}
        empty = [c for c, n in per_class.items() if n == 0]
        if empty:
            report["problems"].append(f"{name}: {len(empty)} empty class folder(s): {name_list(empty)}")
        flat = list_images(d)
        if flat:
            report["problems"].append(f"{name}: {len(flat)} image(s) directly in {d}, outside class folders")
        split = Split(
            name,
            d,
            [f"{c}/{f}" for c in classes for f in list_images(os.path.join(d, c))],
            np.asarray([i for i, c in enumerate(classes) for _ in range(per_class[c])], dtype=np.int64),
            d,
        )
        bad = check_files(d, split.files, workers, full=full, desc=f"{name}", progress=progress, backend=backend)
        if bad:
            report["problems"].append(f"{name}: {len(bad)} unreadable file(s)")
        if write_cache and split.files:
            save_scan(split, bad, full, backend)
        counts = list(per_class.values()) or [0]
        report["splits"][name] = {
            "classes": len(classes),
            "images": len(split),
            "min_per_class": min(counts),
            "max_per_class": max(counts),
            "per_class": per_class,
            "bad": bad,
        }
    if len(split_classes) == 2 and split_classes["train"] != split_classes["val"]:
        tr, va = set(split_classes["train"]), set(split_classes["val"])
        if tr - va:
            report["problems"].append(f"classes missing from val: {name_list(sorted(tr - va))}")
        if va - tr:
            report["problems"].append(f"classes missing from train: {name_list(sorted(va - tr))}")
    report["ok"] = not report["problems"]
    return report
