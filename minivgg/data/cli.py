"""`python -m minivgg.data shapes DIR ...` and `python -m minivgg.data baseline ROOT`."""
import argparse
import time

from minivgg.data.baseline import linear_baseline
from minivgg.data.shapes import SHAPES_DEFAULTS, make_shapes


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivgg.data",
                                description="Data sets for minivgg: draw the built-in "
                                            "shapes set; measure a linear baseline.")
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
    b = sub.add_parser("baseline", help="val top-1 of ridge regression on raw pixels")
    b.add_argument("root", help="an image-folder root with train/ and val/")
    b.add_argument("--side", type=int, default=16, help="pixels per side (default 16)")
    args = p.parse_args(argv)
    if args.command == "shapes":
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
