"""`python -m minivgg.features extract ...` and `python -m minivgg.features classify ...`."""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

from minivgg import backend
from minivgg.device_flags import add_thread_arguments, start_device
from minivgg.errors import UserError
from minivgg.features import extract as desc
from minivgg.features import protocol, store

SPLIT_NAMES = {"train", "val", "test"}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line and exit status 2, like every bad input."""

    def error(self, message):
        raise UserError(f"{message} (see python -m minivgg.features --help)")


def _test_count(text):
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser():
    p = _Parser(prog="python -m minivgg.features",
                description="Very deep features on another data set (Appendix B): "
                            "descriptors from trained nets, then a linear SVM by the "
                            "Caltech protocol.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract", help="L2-normalised image descriptors from the "
                                       "penultimate layer, into a .npz",
                       description=desc.__doc__, formatter_class=argparse.RawTextHelpFormatter)
    e.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint(s); several are fused by stacking (late fusion, App. B)")
    e.add_argument("--data", help="an image folder DIR/<class>/<image> (default: the built-in\n"
                                  "transfer set, ten shape classes the nets never saw)")
    e.add_argument("--out", default="feats.npz", help="the features file (default %(default)s)")
    e.add_argument("--scales", type=int, nargs="+", metavar="Q",
                   help="smallest image sides Q (default: each net's {Smin, (Smin+Smax)/2,\n"
                        "Smax} or {S-d, S, S+d}, as in Table 4; App. B used 256, 384, 512)")
    e.add_argument("--aggregate", choices=desc.AGGREGATES, default="stack",
                   help="several Q: stack (concatenate; App. B on Caltech) or average\n"
                        "(App. B on VOC). Default: %(default)s")
    e.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="average with the mirrored image's descriptor (default: on)")
    e.add_argument("--batch-size", type=int, default=32,
                   help="images per batch (their mirrors ride along; default %(default)s)")
    e.add_argument("--pixel-side", type=int, default=16,
                   help="side of the raw-pixel baseline's thumbnails (0: none; default\n"
                        "%(default)s)")
    backend.add_device_argument(e)
    add_thread_arguments(e)
    c = sub.add_parser("classify", help="linear SVM, random splits: mean class recall and "
                                        "mAP (Caltech protocol)",
                       description=protocol.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("features", help="a .npz written by extract")
    c.add_argument("--splits", type=int, default=3, help="random splits (default %(default)s)")
    c.add_argument("--train-per-class", type=int, default=30,
                   help="training images per class (default %(default)s)")
    c.add_argument("--test-per-class", type=_test_count, default=50,
                   help="test images per class at most, or 'all' (default %(default)s)")
    c.add_argument("--val-fraction", type=float, default=0.2,
                   help="of the training images, held out to choose C (default %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    c.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also the raw-pixel linear SVM on the same splits (default: on)")
    c.add_argument("--out", help="the JSON report (default: beside the features file)")
    return p


def read_folder(root):
    """DIR/<class>/<image> as an ImageFolder (warnings for unreadable files: one line)."""
    from minivgg.data import ImageFolder, class_folders
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise UserError(f"--data {root} is not a directory")
    classes = class_folders(root)
    if classes and set(classes) <= SPLIT_NAMES:
        raise UserError(f"--data {root} holds the splits {', '.join(classes)}, not classes: "
                        f"give one of them (e.g. {os.path.join(root, classes[0])})")
    ds = ImageFolder(os.path.dirname(root), os.path.basename(root), classes=classes,
                     warn=False, progress=True)
    if ds.skipped:
        print(f"warning: {ds.skipped_line()}", file=sys.stderr)
    return ds, root


class _Images:
    """dataset[i] -> (image, label) seen as images[i] -> image."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0]


def _check_extract(args):
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.pixel_side < 0:
        raise UserError(f"--pixel-side must be at least 0, got {args.pixel_side}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise UserError(f"--out {args.out}: the folder {folder} does not exist")


def cmd_extract(args):
    from tqdm import tqdm

    from minivgg import data, evaluate
    _check_extract(args)
    nets = [evaluate.load_net(p, args.scales, multi_scale=True) for p in args.checkpoints]
    ds, root = read_folder(args.data or data.ensure_transfer())
    images = _Images(ds)
    sizes = [images[i].shape[:2] for i in range(len(images))]
    t0 = time.perf_counter()
    with tqdm(total=len(images) * sum(len(n.scales) for n in nets), desc="features",
              unit="img", dynamic_ncols=True) as bar:
        X, blocks = desc.descriptors(nets, images, sizes, args.aggregate, args.flip,
                                     args.batch_size, bar)
    seconds = time.perf_counter() - t0
    pix = (np.stack([desc.pixels(images[i], args.pixel_side) for i in range(len(images))])
           if args.pixel_side else None)
    info = dict(checkpoints=[os.path.abspath(n.path) for n in nets],
                scales={n.path: n.scales for n in nets}, aggregate=args.aggregate,
                flip=args.flip, data=root, device=backend.device().name,
                seconds=round(seconds, 2), pixel_side=args.pixel_side,
                skipped=list(ds.skipped))
    store.save(args.out, X, ds.targets, ds.classes,
               [os.path.relpath(p, root) for p, _ in ds.samples], blocks, pix, info)
    scales = "; ".join(f"Q={','.join(map(str, n.scales))}" for n in nets)
    print(f"{len(images)} images, {len(ds.classes)} classes: {X.shape[1]}-D descriptors "
          f"({len(nets)} net(s), {scales}, {args.aggregate}, flip "
          f"{'on' if args.flip else 'off'}) in {seconds:.1f} s -> {args.out}")
    return 0


def _pixel_prepare(X, train):
    """Raw pixels in [0, 1], centred on the split's training images' mean."""
    return X - X[train].mean(axis=0)


def _print(results, f, args, n_classes):
    per = f"up to {args.test_per_class}" if args.test_per_class else "all the other"
    n_val = max(1, int(round(args.val_fraction * args.train_per_class)))
    print(f"{len(f['labels'])} images, {n_classes} classes; {args.splits} random split(s) of "
          f"{args.train_per_class} training ({n_val} held out to choose C) and {per} test "
          "images per class")
    print(f"{'':<24}{'mean class recall':>19}{'mAP':>15}   C per split")
    for name, r in results.items():
        cs = ", ".join(f"{s['C']:g}" for s in r["splits"])
        recall = f"{100 * r['recall']:.1f} ± {100 * r['recall_std']:.1f}%"
        mAP = f"{100 * r['mAP']:.1f} ± {100 * r['mAP_std']:.1f}%"
        print(f"{name:<24}{recall:>19}{mAP:>15}   {cs}")
        stalled = [i for i, s in enumerate(r["splits"]) if not s["converged"]]
        if stalled:
            print(f"  (liblinear stopped at its iteration limit in split(s) {stalled}: "
                  "the SVM is close to, not at, its optimum)")


def cmd_classify(args):
    from tqdm import tqdm
    protocol.linear_svc()  # a missing extra is one line, before any work
    if args.splits < 1 or args.train_per_class < 1:
        raise UserError("--splits and --train-per-class must be at least 1")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    f = store.load(args.features)
    y, K = f["labels"], len(f["classes"])
    splits = protocol.draw_splits(y, f["classes"], args.train_per_class, args.test_per_class,
                                  args.splits, args.seed)
    runs = {f"features ({f['features'].shape[1]}-D)": (f["features"].astype(np.float64), None)}
    if args.baseline and f["pixels"] is not None:
        runs[f"raw pixels ({f['pixels'].shape[1]}-D)"] = (f["pixels"] / 255.0, _pixel_prepare)
    results = {}
    with tqdm(total=len(runs) * args.splits, desc="linear SVM", unit="split",
              dynamic_ncols=True) as bar:
        for name, (X, prepare) in runs.items():
            results[name] = protocol.run(X, y, splits, K, args.val_fraction,
                                         seed=args.seed, prepare=prepare, bar=bar)
    _print(results, f, args, K)
    out = args.out or os.path.splitext(args.features)[0] + "_classify.json"
    report = dict(features=os.path.abspath(args.features), classes=f["classes"],
                  extract=f["info"], splits=args.splits, train_per_class=args.train_per_class,
                  test_per_class=args.test_per_class, val_fraction=args.val_fraction,
                  seed=args.seed, results=results)
    try:
        with open(out, "w") as fh:
            json.dump(report, fh, indent=1)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror})") from None
    print(f"wrote {out}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "extract":
        start_device(args)
        return cmd_extract(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's API notices
        return cmd_classify(args)
