"""`python -m minivgg.localise train | evaluate`: appendix A's localisation, on the command line.

    train     A.1 "Training": a VGG whose last layer regresses boxes (SCR: 4 outputs,
              PCR: 4 per class), initialised from a classification checkpoint of the same
              config (every layer but the last, which is new), initial lr 1e-3, fine-tuning
              all layers or only fc6, fc7 and the new one (--finetune fc, as OverFeat),
              at the classifier's training scale unless --scale says otherwise. The
              trainer of minivgg.train with the Localisation task (tasks.py): progress,
              metrics.jsonl and PNG, last/best, exact --resume, NaN stop, Ctrl-C.
    evaluate  A.1 "Testing": --protocol centre (protocol 1, Table 8) or dense (protocol 2,
              Table 9, with --classifier), at the nets' training scale or --scales.
"""
import argparse
import functools
import json
import os
import sys
import time

import numpy as np

from minivgg import backend
from minivgg.errors import UserError

# A.1's initial learning rate, a tenth of the paper's classification rate, for --preset
# paper. The short budgets of the cpu and cuda presets (EPOCHS, cosine decay to 0) keep
# their preset's rate: 10 epochs of PCR at S = 64 on shapes reached 52% localisation
# error (protocol 1) at 1e-3 and 28% at the cpu preset's 1e-2. EPOCHS: a few minutes on
# 2 cores.
LR, EPOCHS = 1e-3, 10


# -- train ---------------------------------------------------------------------------------
def build_train_parser():
    from minivgg import train
    from minivgg.data import BOX_TARGETS
    from minivgg.data.boxes import MIN_VISIBLE
    p = train.build_parser()
    p.prog = "python -m minivgg.localise train"
    p.description = ("Train a localisation ConvNet (VGG appendix A.1): the net of a "
                     "classification checkpoint (--init-from, required) whose last layer "
                     "predicts a box (centre x, centre y, width, height in crop units), "
                     f"Euclidean loss, {EPOCHS} epochs and lr {LR:g} (--preset paper; the "
                     "preset's own otherwise) unless given. The other flags are "
                     "minivgg.train's.")

    def error(message):
        raise UserError(f"{message} (see python -m minivgg.localise train --help)")
    p.error = error
    for action in p._actions:  # set by --finetune here
        if action.dest in ("freeze", "lr_copied"):
            action.help = argparse.SUPPRESS
    p.add_argument("--regression", choices=("scr", "pcr"), default="pcr",
                   help="single-class (one box for every class) or per-class regression "
                        "(a box per class, the true class's trained) (default: %(default)s)")
    p.add_argument("--finetune", choices=("all", "fc"), default="all",
                   help="layers that learn: all, or fc = fc6, fc7 and the new box layer "
                        "(the conv layers frozen, as Sermanet et al.) (default: %(default)s)")
    p.add_argument("--box-target", choices=BOX_TARGETS, default="whole",
                   help="the regression target: the whole box in crop units (may reach "
                        "outside the crop), or the box clipped to the crop "
                        "(default: %(default)s)")
    p.add_argument("--min-visible", type=float, default=MIN_VISIBLE,
                   help="training crops show at least this fraction of the object (of "
                        "the most a crop can show; 0: any part) (default: %(default)s)")
    p.set_defaults(out="runs/localise")
    return p


def _peek_settings(path):
    """(training settings, config) of a checkpoint, without reading its weights."""
    from minivgg import checkpoint
    saved = checkpoint.peek(path)
    return saved["meta"].get("settings") or {}, saved["model"]["config"]


def train_settings(args, device_name):
    """Check the run's source, then minivgg.train's settings with A.1's defaults."""
    from minivgg import finetune, train
    if args.resume:
        saved, _ = _peek_settings(args.resume)
        if saved.get("task") != "localisation":
            raise UserError(f"--resume {args.resume} is not a localisation run")
        args.regression, args.box_target = saved["regression"], saved["box_target"]
        args.min_visible = saved["min_visible"]
    elif not args.init_from:
        raise UserError("--init-from CLS.npz is required: a localisation net starts from a "
                        "classification net of the same config (appendix A.1)")
    else:
        saved, config = _peek_settings(args.init_from)
        if saved.get("task") == "localisation":
            raise UserError(f"--init-from {args.init_from} is a localisation net; start from "
                            "a classifier")
        if finetune.resolve_config(args) != config:
            raise UserError(f"--config {args.config}: localisation starts from the "
                            f"classifier's own net ({config} in {args.init_from})")
    args.freeze = "features" if args.finetune == "fc" else None
    args.lr_copied = 1.0  # A.1: every learning layer at the initial rate
    preset = args.preset if args.preset != "auto" else "cuda" if device_name == "cuda" else "cpu"
    if args.lr is None and preset == "paper":
        args.lr = LR  # else the preset's own rate: see LR
    args.epochs = EPOCHS if args.epochs is None else args.epochs
    s = train.settings_from(args, device_name)
    if not 0 <= args.min_visible <= 1:
        raise UserError(f"--min-visible must be in [0, 1], got {args.min_visible}")
    s.update(task="localisation", regression=args.regression, box_target=args.box_target,
             min_visible=args.min_visible, finetune_layers=args.finetune)
    return s


def train_main(argv):
    from minivgg import configs, train
    from minivgg.device_flags import start_device
    from minivgg.tasks import Localisation
    from minivgg.trainer import Trainer
    args = build_train_parser().parse_args(argv)
    dev = start_device(args)
    s = train_settings(args, dev.name)
    configs.get(args.config)
    train.check_out_dir(args.out)
    print(f"localisation: {args.regression.upper()}, fine-tuning {args.finetune} layers, "
          f"{args.box_target} boxes, lr {s['lr']:g}")
    task = functools.partial(Localisation, regression=args.regression,
                             box_target=args.box_target, min_visible=args.min_visible)
    return Trainer(args, s, task=task).run()


# -- evaluate ------------------------------------------------------------------------------
def build_evaluate_parser():
    from minivgg.device_flags import add_thread_arguments
    p = argparse.ArgumentParser(
        prog="python -m minivgg.localise evaluate",
        description="Test localisation nets as in VGG appendix A: --protocol centre "
                    "(protocol 1, Table 8: central crop, the ground-truth class's box, "
                    "each net alone) or dense (protocol 2, Table 9: the classifier's top-5 "
                    "classes, the nets' boxes from the dense view (or --grid N crops) at "
                    "every scale pooled and merged greedily, top-5 localisation error). "
                    "Correct: IoU > 0.5.")
    p.add_argument("checkpoints", nargs="+", metavar="LOC",
                   help="localisation checkpoint(s) of python -m minivgg.localise train")
    p.add_argument("--classifier", nargs="+", metavar="CLS",
                   help="classification checkpoint(s) of the same classes (protocol 2; "
                        "several are fused)")
    p.add_argument("--protocol", choices=("centre", "dense"), default="dense",
                   help="centre = protocol 1, dense = protocol 2 (default: %(default)s)")
    p.add_argument("--data", required=True,
                   help="image-folder root with SPLIT/<class>/* and SPLIT/bboxes.csv")
    p.add_argument("--split", default="val", help="sub-folder of --data (default: %(default)s)")
    p.add_argument("--scales", type=int, nargs="+", action="append", metavar="Q",
                   help="test scales of the localisation nets: once for every net, or once "
                        "per net in order (--scales 40 --scales 56 64) (default: each net's "
                        "training scale); protocol 1 takes the first")
    p.add_argument("--grid", type=int, metavar="N",
                   help="protocol 2 over an N x N grid of crops per scale (each through "
                        "the FC net, as in training) instead of the dense view's positions")
    p.add_argument("--threshold", type=float, default=None,
                   help="merging: the largest match score that still merges (default 1)")
    p.add_argument("--out", help="folder for the JSON report (default: the first "
                                 "checkpoint's folder)")
    add_thread_arguments(p)
    backend.add_device_argument(p)

    def error(message):
        raise UserError(f"{message} (see python -m minivgg.localise evaluate --help)")
    p.error = error
    return p


def _dataset(args, classes):
    from minivgg.data import BoxFolder
    return BoxFolder(args.data, args.split, classes=classes, warn=False)


def _scales(args):
    """One list of test scales per net (None: each net's own), from --scales."""
    given, n = args.scales, len(args.checkpoints)
    if given is None:
        return [None] * n
    if len(given) not in (1, n):
        raise UserError(f"--scales given {len(given)} times for {n} net"
                        f"{'s' if n > 1 else ''}: give it once, or once per net")
    return given * n if len(given) == 1 else given


def evaluate_main(argv):
    from minivgg.localise import nets as ln
    from minivgg.device_flags import start_device
    args = build_evaluate_parser().parse_args(argv)
    if args.protocol == "dense" and not args.classifier:
        raise UserError("--protocol dense needs --classifier CLS.npz: its top-5 classes rate "
                        "the boxes (appendix A.1)")
    if args.grid is not None and args.grid < 1:
        raise UserError(f"--grid must be at least 1, got {args.grid}")
    if args.threshold is not None and not args.threshold >= 0:
        raise UserError(f"--threshold must be a number >= 0, got {args.threshold}")
    start_device(args)
    locs = ln.load_localisers(args.checkpoints, _scales(args))
    classes = list(locs[0].meta["classes"])
    classifiers = ln.load_classifiers(args.classifier, classes) if args.classifier else []
    dataset = _dataset(args, classes)
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoints[0]))
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out} is not a usable directory ({e.strerror})") from None
    t0 = time.perf_counter()
    report = dict(protocol=args.protocol, split=args.split, data=os.path.abspath(args.data),
                  images=len(dataset))
    if args.protocol == "centre":
        report.update(_protocol1(locs, dataset))
    else:
        report.update(_protocol2(args, locs, classifiers, dataset))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    grid = f"_grid{args.grid}" if args.protocol == "dense" and args.grid else ""
    path = os.path.join(out, f"localise_{args.split}_{args.protocol}{grid}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path} ({report['seconds']:.0f} s)")
    return 0


def _protocol1(locs, dataset):
    """Protocol 1 for each net alone: printed, and the report's part."""
    from minivgg.localise import protocols
    nets = {}
    for net in locs:
        r = protocols.protocol1(net, dataset)
        nets[net.path] = dict(scale=net.scales[0], error=r["error"],
                              mean_iou=float(np.mean(r["iou"])))
        print(f"{net.path}: Q={net.scales[0]}, central crop, ground-truth class: "
              f"localisation error {100 * r['error']:.1f}% (mean IoU "
              f"{np.mean(r['iou']):.3f})")
    return dict(nets=nets)


def _protocol2(args, locs, classifiers, dataset):
    """Protocol 2 over the union of every net's boxes: printed, and the report's part."""
    from minivgg.localise import merge, protocols
    threshold = merge.THRESHOLD if args.threshold is None else args.threshold
    r = protocols.protocol2(locs, classifiers, dataset, threshold=threshold, grid=args.grid)
    windows = "dense view" if args.grid is None else f"{args.grid}x{args.grid} crops"
    print(f"{len(dataset)} images, {len(locs)} localisation net(s) at Q = "
          f"{', '.join(str(n.scales) for n in locs)}, {windows}, merged: top-5 localisation "
          f"error {100 * r['top5_error']:.1f}%, top-1 {100 * r['top1_error']:.1f}% "
          f"(classification top-5 error {100 * r['class_top5_error']:.1f}%)")
    return dict(nets={n.path: n.scales for n in locs}, grid=args.grid,
                classifiers=[c.path for c in classifiers], threshold=threshold,
                **{k: r[k] for k in ("top5_error", "top1_error", "class_top5_error")},
                guesses=[[dict(cls=c, box=[float(v) for v in b], score=s) for c, b, s in g]
                         for g in r["guesses"]])


COMMANDS = {"train": train_main, "evaluate": evaluate_main}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nusage: python -m minivgg.localise {train,evaluate} ... (--help on each)")
        return 0
    if not argv:
        raise UserError("give a command: python -m minivgg.localise train | evaluate "
                        "(--help)")
    if argv[0] not in COMMANDS:
        raise UserError(f"unknown command {argv[0]!r}: use train or evaluate")
    return COMMANDS[argv[0]](argv[1:])
