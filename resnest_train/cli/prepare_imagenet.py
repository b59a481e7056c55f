"""`resnest-prepare-imagenet` (and `scripts/prepare_imagenet.py`): prepare and check an ImageNet folder for training.

Sort the official flat val/ folder into class folders, from either label file:

    # Kaggle's ImageNet release: LOC_val_solution.csv (ImageId,PredictionString; synset first)
    python scripts/prepare_imagenet.py --val-dir /data/imagenet/val --labels LOC_val_solution.csv

    # the ILSVRC2012 devkit: ground truth = 1-based class ids, one per image in file-name order,
    # plus the id -> synset mapping of the devkit's data/meta.mat
    python scripts/prepare_imagenet.py --val-dir /data/imagenet/val \\
        --labels ILSVRC2012_validation_ground_truth.txt --synsets ILSVRC2012_devkit_t12/data/meta.mat

--synsets takes meta.mat itself (read with scipy when it is installed) or a text file with one
"n01440764 description" line per class whose line i is the synset of ILSVRC2012_ID i. Beware:
the devkit's ids follow meta.mat's order, which is NOT sorted by synset id, while Kaggle's
LOC_synset_mapping.txt IS sorted; such a sorted file is refused for devkit ids unless you say
--id-order sorted (for ground-truth files that count classes in sorted order).

Images are moved by default (--mode symlink or copy to keep the flat folder; --out to write
the class folders elsewhere); --dry-run only prints what would happen.

Check a dataset (class counts per split, unreadable files, classes missing from one split),
in parallel with a progress bar; exit status 1 when problems are found:

    python scripts/prepare_imagenet.py --check /data/imagenet --workers 16

--check decodes every image (--quick: header and end-of-file checks only) and stores the list
of unreadable files where data.skip_bad_images finds it, so training can skip them at once.
It judges by what the loader reads: --backend dali (the default when DALI is installed, as
data.backend=auto) also decodes with DALI's decoder, which cannot read some files PIL can
(a GIF named .jpg, a 1-bit TIFF); --backend torchvision judges by PIL alone.
"""

import argparse
import os
import sys

from resnest_train.cli import exit_status, print_check


def read_meta_mat(path):
    """Synsets in ILSVRC2012_ID order (1..1000) from the devkit's meta.mat, via scipy."""
    from resnest_train.errors import DataError

    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(
            f"Reading {path} needs scipy (pip install scipy); or pass a text file with one "
            f"'nXXXXXXXX description' line per class in ILSVRC2012_ID order."
        ) from None
    synsets = loadmat(path, squeeze_me=True)["synsets"]
    pairs = sorted((int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in synsets if int(s["num_children"]) == 0)
    return [wnid for _, wnid in pairs]


def prepare(args):
    """Sort the flat val folder into class folders (``--val-dir``, ``--labels``); returns 0."""
    from resnest_train.data import official_val

    synsets = args.synsets
    if synsets.endswith(".mat"):
        import tempfile

        wnids = read_meta_mat(synsets)
        tmp = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        tmp.write("".join(f"{w}\n" for w in wnids))
        tmp.close()
        synsets = tmp.name
    assignments = official_val.val_assignments(args.val_dir, args.labels, synsets, args.id_order)
    counts = official_val.organize_val(args.val_dir, assignments, args.out, args.mode, args.dry_run)
    where = args.out or args.val_dir
    verb = {"move": "moved", "symlink": "linked", "copy": "copied"}[args.mode]
    sizes = sorted(set(counts.values()))
    print(
        f"{'would have ' + verb if args.dry_run else verb} {len(assignments)} images into {len(counts)} class "
        f"folders under {where} ({'-'.join(map(str, sizes[:1] + sizes[-1:]))} per class)"
    )
    if args.dry_run:
        for name, wnid in list(sorted(assignments.items()))[:5]:
            print(f"  {os.path.join(args.val_dir, name)} -> {os.path.join(where, wnid, name)}")
        if len(assignments) > 5:
            print(f"  ... and {len(assignments) - 5} more")
    return 0


def check(args):
    """Check a dataset (``--check ROOT``) and print the report; returns 1 when problems were found, else 0."""
    from resnest_train.data import resolve_backend, scan

    backend = resolve_backend(args.backend)
    report = scan.check_dataset(
        args.check, workers=args.workers, full=not args.quick, progress=not args.no_progress, backend=backend
    )
    print(f"judged by what the {backend} backend can decode")
    return print_check(
        report,
        lambda name, s: (
            f"{name}: {s['images']} images in {s['classes']} classes "
            f"({s['min_per_class']}-{s['max_per_class']} per class), {len(s['bad'])} unreadable"
        ),
        lambda name, f: os.path.join(args.check, name, f),
        args.json,
    )


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status (2 for a user error)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val-dir", help="the flat official val/ folder")
    p.add_argument("--labels", help="LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt")
    p.add_argument("--synsets", default="", help="devkit only: meta.mat or an id-ordered synset text file")
    p.add_argument(
        "--id-order",
        choices=["devkit", "sorted"],
        default="devkit",
        help="what the devkit ground-truth ids count (default: devkit = meta.mat order)",
    )
    p.add_argument("--out", default="", help="write class folders here instead of inside --val-dir")
    p.add_argument("--mode", choices=["move", "symlink", "copy"], default="move")
    p.add_argument("--dry-run", action="store_true", help="print what would happen, change nothing")
    p.add_argument("--check", metavar="ROOT", help="check the dataset in ROOT (train/ and val/)")
    p.add_argument("--workers", type=int, default=0, help="processes for --check (default: all cores)")
    p.add_argument("--quick", action="store_true", help="--check with header/end-of-file checks only")
    p.add_argument(
        "--backend",
        choices=["auto", "dali", "torchvision"],
        default="auto",
        help="--check: judge files by what this data.backend decodes (auto: dali when installed)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", help="--check: also write the full report (per-class counts) here")
    args = p.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # file names that are not UTF-8 print escaped
    if not (args.check or (args.val_dir and args.labels)):
        p.error("give --val-dir and --labels to sort the val images, or --check ROOT")
    return exit_status(lambda: check(args) if args.check else prepare(args))
