"""The official ImageNet val split: from a flat folder and a label file to class folders.

The ILSVRC2012 val images come as one flat folder of 50,000 files. Their labels come in one of
two formats: Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the synset first)
or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (1-based class ids in file-name
order, counted in the order of the devkit's ``meta.mat``). ``val_assignments`` reads either;
``organize_val`` moves, links or copies each image into ``<synset>/``. Used by
``resnest-prepare-imagenet``.
"""

from __future__ import annotations

import os

from ..errors import DataError
from .layout import list_images, open_text


def read_kaggle_solution(path: str) -> dict[str, str]:
    """{image id: synset} from Kaggle's LOC_val_solution.csv (ImageId,PredictionString)."""
    out = {}
    with open_text(path) as f:
        header = f.readline().strip().split(",")
        if header[:2] != ["ImageId", "PredictionString"]:
            raise DataError(
                f"{path}: expected the header 'ImageId,PredictionString' of Kaggle's "
                f"LOC_val_solution.csv, got {','.join(header)!r}."
            )
        for lineno, line in enumerate(f, 2):
            line = line.strip()
            if not line:
                continue
            image_id, _, pred = line.partition(",")
            tokens = pred.split()
            if not tokens or not tokens[0].startswith("n"):
                raise DataError(
                    f"{path}:{lineno}: expected a synset id (nXXXXXXXX) as the first token of "
                    f"PredictionString, got {pred[:40]!r}."
                )
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
            f"ILSVRC2012_ID i), or pass --id-order sorted if your ids really count sorted classes."
        )
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
    images = list_images(val_dir)
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
        raise DataError(
            "The devkit ground truth holds class numbers: also pass --synsets with the mapping "
            "from class number to synset id (see --help)."
        )
    wnids = read_devkit_ground_truth(labels, synsets, order)
    if len(wnids) != len(images):
        raise DataError(
            f"{labels} has {len(wnids)} labels but {val_dir} holds {len(images)} images; the "
            f"devkit ground truth labels the 50,000 official images in sorted file-name order."
        )
    return dict(zip(images, wnids))


def organize_val(
    val_dir: str, assignments: dict[str, str], out_dir: str = "", mode: str = "move", dry_run: bool = False
) -> dict[str, int]:
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
