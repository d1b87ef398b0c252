"""`python -m minivgg.data shapes DIR ...`, `... transfer DIR ...` and `... baseline ROOT`."""
import argparse
import time

from minivgg.data.baseline import linear_baseline
from minivgg.data.digits import DIGITS_DEFAULTS, make_digits
from minivgg.data.shapes import SHAPES_DEFAULTS, make_shapes
from minivgg.data.transfer import TRANSFER_CLASSES, TRANSFER_DEFAULTS, make_transfer


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivgg.data",
                                description="Data sets for minivgg: draw the built-in "
                                            "shapes set or the transfer set; measure a "
                                            "linear baseline.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("shapes", help="draw the shapes set as an image-folder tree (PNG)")
    s.add_argument("dir", help="the data set root to create (must not exist, or be empty)")
    s.add_argument("--size", type=int, default=SHAPES_DEFAULTS["size"],
                   help="image side in pixels (default %(default)s)")
    s.add_argument("--train", type=int, default=SHAPES_DEFAULTS["n_train"],
                   help="training images, all classes together (default %(default)s)")
    s.add_argument("--val", type=int, default=SHAPES_DEFAULTS["n_val"],
                   help="validation images (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--workers", type=int, default=2, help="drawing threads (default 2)")
    t = sub.add_parser("transfer", help="draw the transfer set (ten new shape classes, "
                                        "DIR/<class>/*, for minivgg.features)")
    t.add_argument("dir", help="the data set root to create (must not exist, or be empty)")
    t.add_argument("--size", type=int, default=TRANSFER_DEFAULTS["size"],
                   help="image side in pixels (default %(default)s)")
    t.add_argument("--per-class", type=int, default=TRANSFER_DEFAULTS["per_class"],
                   help="images per class (default %(default)s: 30 train + 50 test)")
    t.add_argument("--size-range", type=float, nargs=2, metavar=("LO", "HI"),
                   default=TRANSFER_DEFAULTS["size_range"],
                   help="object diameter as a fraction of the side (default %(default)s, "
                        "the shapes set's; 0.75 0.95: objects fill the image)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d = sub.add_parser("digits", help="draw the digits set (LeNet-5's, 32x32 grey PNG)")
    d.add_argument("dir", help="the data set root to create (must not exist, or be empty)")
    d.add_argument("--size", type=int, default=DIGITS_DEFAULTS["size"],
                   help="image side in pixels (default %(default)s)")
    d.add_argument("--train", type=int, default=DIGITS_DEFAULTS["n_train"],
                   help="training images, all classes together (default %(default)s)")
    d.add_argument("--val", type=int, default=DIGITS_DEFAULTS["n_val"],
                   help="validation images (default %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    b = sub.add_parser("baseline", help="val top-1 of ridge regression on raw pixels")
    b.add_argument("root", help="an image-folder root with train/ and val/")
    b.add_argument("--side", type=int, default=16, help="pixels per side (default 16)")
    args = p.parse_args(argv)
    if args.command == "digits":
        t0 = time.perf_counter()
        root = make_digits(args.dir, args.size, args.train, args.val, args.seed)
        print(f"wrote {args.train} + {args.val} images to {root} "
              f"in {time.perf_counter() - t0:.1f} s")
    elif args.command == "transfer":
        t0 = time.perf_counter()
        root = make_transfer(args.dir, args.size, args.per_class, args.seed, args.size_range)
        print(f"wrote {len(TRANSFER_CLASSES) * args.per_class} images to {root} in "
              f"{time.perf_counter() - t0:.1f} s")
    elif args.command == "shapes":
        t0 = time.perf_counter()
        root = make_shapes(args.dir, args.size, args.train, args.val, args.seed,
                           workers=args.workers)
        print(f"wrote {args.train} + {args.val} images to {root} "
              f"in {time.perf_counter() - t0:.1f} s")
    else:
        r = linear_baseline(args.root, args.side)
        print(f"linear baseline (ridge, {args.side}x{args.side} px, lambda {r['lam']:g}): "
              f"val top-1 {100 * r['accuracy']:.1f}%  train {100 * r['train_accuracy']:.1f}%"
              f"  chance {100 * r['chance']:.1f}%")
    return 0
