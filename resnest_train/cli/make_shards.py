"""`resnest-make-shards` (and `scripts/make_shards.py`): write an ImageNet folder as WebDataset tar shards; check them.

    python scripts/make_shards.py /data/imagenet /data/imagenet-shards --shard-size 1000
    python scripts/make_shards.py --check /data/imagenet-shards

Writes OUT/train/ and OUT/val/ shards (`shard-000000.tar` of `KEY.jpg` + `KEY.cls`, each with a
DALI `wds2idx` index file `shard-000000.idx`) and OUT/manifest.json (classes in the folder's
order, counts, SHA-256 checksums). Train shards are shuffled and balanced (every shard holds the
same number of images of each class, within one); val shards keep the folder's order. Point
data.root at OUT to train from the shards (data.format: auto finds the manifest); both backends
read them and train on the same batches as from the folder. See resnest_train/data/shards.py.

--check verifies the checksums, every tar against its index, the labels, and decodes every image
(--quick: header and end-of-file checks); exit status 1 when problems are found. --backend judges
the images by what that data.backend can decode (auto: dali when installed).
"""

import argparse

from resnest_train.cli import exit_status, print_check


def make(args) -> int:
    """Write the shards (``ROOT OUT``); returns 0."""
    from resnest_train.data.shards import make_shards

    m = make_shards(args.root, args.out, args.shard_size, args.seed, progress=not args.no_progress)
    for name, s in m["splits"].items():
        size = sum(sh["bytes"] for sh in s["shards"])
        print(f"{name}: {s['images']} images in {len(s['shards'])} shard(s), {size / 1e6:.1f} MB")
    print(f"wrote {args.out} ({len(m['classes'])} classes); train with data.root={args.out}")
    return 0


def check(args) -> int:
    """Check the shard set ``--check OUT`` and print the report; returns 1 when problems were found, else 0."""
    from resnest_train.data import resolve_backend
    from resnest_train.data.shards import check_shards

    backend = resolve_backend(args.backend)
    report = check_shards(args.check, args.workers, full=not args.quick, progress=not args.no_progress, backend=backend)
    print(f"judged by what the {backend} backend can decode")
    return print_check(
        report,
        lambda name, s: f"{name}: {s['images']} images in {s['shards']} shard(s), {len(s['bad'])} unreadable",
        lambda name, member: f"{args.check}/{name}/{member}",
        args.json,
    )


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status (2 for a user error)."""
    from resnest_train.data.shards import DEFAULT_SHARD_SIZE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", help="the ImageNet folder: train/<class>/*, val/<class>/*")
    p.add_argument("out", nargs="?", help="a new or empty folder for the shards")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per shard (at most)")
    p.add_argument("--seed", type=int, default=0, help="of the train shards' shuffle")
    p.add_argument("--check", metavar="OUT", help="check the shard set in OUT instead")
    p.add_argument("--quick", action="store_true", help="--check with header/end-of-file image checks only")
    p.add_argument("--workers", type=int, default=0, help="processes for --check (default: all cores)")
    p.add_argument(
        "--backend",
        choices=["auto", "dali", "torchvision"],
        default="auto",
        help="--check: judge images by what this data.backend decodes (auto: dali when installed)",
    )
    p.add_argument("--json", help="--check: also write the full report here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not args.check and not (args.root and args.out):
        p.error("give ROOT and OUT to write shards, or --check OUT")
    return exit_status(lambda: check(args) if args.check else make(args))
