"""`python -m minivgg.visualise SUBCOMMAND ...`: the command line (see __init__.py)."""
import argparse

from minivgg import backend
from minivgg.device_flags import add_thread_arguments, start_device
from minivgg.errors import UserError
from minivgg.visualise import commands


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line and exit status 2, like every bad input."""

    def error(self, message):
        raise UserError(f"{message} (see python -m minivgg.visualise --help)")


def _output(p, default):
    p.add_argument("--out", help=f"folder for the PNG and JSON (default: {default})")
    p.add_argument("--colours", type=int, metavar="N", help="write the PNGs with a palette "
                   "of N colours (2-256; a few times smaller, for figures in a repository)")


def _common(p, images=True):
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint of minivgg.train (or "
                   "minivgg.convert): its preprocessing, classes and test scale come with it")
    _output(p, "CKPT's folder/visualise")
    p.add_argument("--scale", type=int, metavar="Q", help="test scale, the smallest image side "
                   "(default: the checkpoint's, as evaluate: Q = S or (Smin + Smax) / 2)")
    if images:
        _images(p)
    backend.add_device_argument(p)
    add_thread_arguments(p)


def _images(p, split="val"):
    p.add_argument("--data", help="an image folder: ROOT/<split>/<class>/*, ROOT/<class>/* or "
                   "images in ROOT (default: the built-in set the checkpoint was trained on)")
    p.add_argument("--split", default=split, help="which split of a train/val tree "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which images are shown (default 0)")


def build_parser():
    from minivgg import visualise
    p = _Parser(prog="python -m minivgg.visualise", description=visualise.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    f = sub.add_parser("filters", help="the first conv layer's kernels, colourfulness per "
                       "kernel and per tower (AlexNet Fig. 3)")
    _common(f, images=False)
    t = sub.add_parser("top5", help="images with their five most probable labels (AlexNet "
                       "Fig. 4, left)")
    _common(t)
    t.add_argument("--count", type=int, default=8, help="images (default %(default)s)")
    t.add_argument("--hardest", type=int, default=0, metavar="N", help="of them, the N "
                   "whose true class the net finds least probable (default: %(default)s)")
    t.add_argument("--method", choices=("dense", "multi-crop", "both"), default="dense",
                   help="as evaluate (VGG sect. 3.2; default %(default)s)")
    t.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="average in the mirror image's posteriors (default: on)")
    n = sub.add_parser("neighbours", help="nearest training images in the last hidden layer "
                       "vs in pixels (AlexNet Fig. 4, right)")
    _common(n)
    n.add_argument("--count", type=int, default=5, help="query images shown (default "
                   "%(default)s; the match rates use every image of --split)")
    n.add_argument("-k", type=int, default=6, help="neighbours per query (default %(default)s)")
    n.add_argument("--database-split", default="train", help="the split searched, of a "
                   "train/val tree (default %(default)s; a plain folder is searched "
                   "against itself)")
    d = sub.add_parser("deconv", help="the top images of feature maps and ZFNet's deconvnet "
                       "projections (ZFNet Fig. 2)")
    _common(d)
    d.add_argument("--layer", help="a conv, ReLU, LRN or pool layer by name (conv3_1, relu5, "
                   "pool2, ...; default: the last conv layer's ReLU)")
    d.add_argument("--maps", type=int, nargs="+", metavar="K",
                   help="feature maps (default: the --count maps with the largest activation)")
    d.add_argument("--count", type=int, default=6, help="maps when --maps is not given "
                   "(default %(default)s)")
    d.add_argument("--top", type=int, default=6, help="images per map (default %(default)s)")
    o = sub.add_parser("occlusion", help="the correct class's probability under a sliding "
                       "grey square (ZFNet Fig. 7)")
    _common(o)
    o.add_argument("--count", type=int, default=3, help="images (default %(default)s)")
    o.add_argument("--size", type=int, help="side of the grey square in pixels of the net's "
                   "view (default: crop / 4)")
    o.add_argument("--stride", type=int, help="pixels between square positions "
                   "(default: crop / 16)")
    e = sub.add_parser("evolution", help="the first layer (and, with --layer, a layer's "
                       "strongest projections) at every snapshot of a run (ZFNet Fig. 4)")
    e.add_argument("run_dir", metavar="RUN_DIR", help="the --out of a train run with "
                   "--snapshot-epochs")
    _output(e, "RUN_DIR/visualise")
    e.add_argument("--scale", type=int, metavar="Q", help="test scale (default: the run's)")
    e.add_argument("--count", type=int, default=16, help="kernels per row (default %(default)s)")
    e.add_argument("--layer", help="also project this layer's strongest activations")
    e.add_argument("--maps", type=int, nargs="+", metavar="K",
                   help="with --layer: its maps (default 0 1 2 3)")
    _images(e)
    backend.add_device_argument(e)
    add_thread_arguments(e)
    return p


def _check(args):
    if args.colours is not None and not 2 <= args.colours <= 256:
        raise UserError(f"--colours must be in 2-256, got {args.colours}")
    if getattr(args, "hardest", 0) < 0:
        raise UserError(f"--hardest must be at least 0, got {args.hardest}")
    for name in ("count", "top", "k"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UserError(f"--{name} must be at least 1, got {v}" if name != "k" else
                            f"-k must be at least 1, got {v}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    _check(args)
    start_device(args)
    return getattr(commands, args.command)(args)
