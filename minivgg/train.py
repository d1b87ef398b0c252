"""`python -m minivgg.train --config B`: train a VGG as in paper sect. 3.1.

Mini-batch SGD with momentum on the multinomial logistic loss; weight decay; dropout on
FC1 and FC2; random crops of isotropically rescaled images (S fixed or jittered in
[Smin, Smax]); random flips and AlexNet's PCA colour shift; the training set's mean RGB
subtracted; the learning rate divided by 10 when validation accuracy stops improving, at
most 3 times (--lr-schedule plateau, the `paper` preset; the cpu and cuda presets decay it
along a cosine instead, which suits their short fixed budget). With no data directory it
trains on the built-in "shapes" set.

Writes into --out: metrics.jsonl (one line per epoch), metrics.png (loss, top-1 error and
learning rate), last.npz and best.npz (atomic). Ctrl-C saves last.npz and exits; a NaN or
infinite loss stops with the step number, leaving the last good checkpoint in place.

Several devices (sect. 3.3): `mpirun -n R python -m minivgg.train ...` (or srun, mpiexec)
trains one batch of --batch-size images split over R processes, with the weights one
process would reach (minivgg/distributed.py); rank 0 alone prints and writes.
"""
import argparse
import math
import os
import sys

from minivgg import backend, distributed
from minivgg.device_flags import add_thread_arguments, start_device
from minivgg.errors import UserError, run_cli
from minivgg.helpformat import DefaultsHelpFormatter

# Presets fill in every setting the command line leaves out. `cpu` is small enough to
# train on two cores in under five minutes: width 1/8, 32px crops, batch 32 (twice the
# SGD steps of batch 64 for the same arithmetic: a narrow no-BN net needs steps to get
# going), no dropout (at width 1/8 it delays learning by hundreds of steps), and a
# cosine decay of the learning rate to 0 over the fixed budget. `paper` is sect. 3.1.
PRESETS = {
    "cpu": dict(epochs=18, batch_size=32, lr=0.01, momentum=0.9, weight_decay=5e-4,
                dropout=0.0, scale=None, scale_jitter=(32, 40), crop=32, width=0.125,
                fc_width=128, init="kaiming", normalise="mean-std", data_size=64,
                warmup_steps=100, schedule="cosine", patience=2),
    "cuda": dict(epochs=20, batch_size=128, lr=0.02, momentum=0.9, weight_decay=5e-4,
                 dropout=0.5, scale=None, scale_jitter=(64, 96), crop=64, width=0.5,
                 fc_width=1024, init="kaiming", normalise="mean-std", data_size=96,
                 warmup_steps=100, schedule="cosine", patience=2),
    "paper": dict(epochs=74, batch_size=256, lr=1e-2, momentum=0.9, weight_decay=5e-4,
                  dropout=0.5, scale=256, scale_jitter=None, crop=224, width=1.0,
                  fc_width=4096, init="paper", normalise="mean", data_size=256,
                  warmup_steps=0, schedule="plateau", patience=1),
    # The classic nets of configs.py. `lenet`: LeNet-5 on the built-in digits (32x32 grey,
    # minivgg/data/digits.py) in about a minute on two cores, without flips (a mirrored 2
    # is nearly a 5). `cpu-alexnet`: AlexNet and ZFNet at width 1/4 on the shapes set
    # rescaled to 80-96 px (their big, strided first layers need 63 px at least).
    # `alexnet`: AlexNet sect. 5, for ImageNet-sized data: batch 128, momentum 0.9, weight
    # decay 5e-4, lr 0.01 divided by 10 on a validation plateau (3 times), N(0, 0.01^2)
    # weights with the biases of conv2, conv4, conv5 and fc6, fc7 at 1, dropout 0.5,
    # 224 crops of 256 x 256 images, 90 epochs; the PCA colour shift as every preset.
    "lenet": dict(epochs=12, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-4,
                  dropout=0.0, scale=None, scale_jitter=(32, 36), crop=32, width=1.0,
                  fc_width=84, init="glorot", normalise="mean-std", data_size=32,
                  warmup_steps=50, schedule="cosine", patience=2, dataset="digits",
                  flip=False),
    "cpu-alexnet": dict(epochs=30, batch_size=32, lr=0.01, momentum=0.9, weight_decay=5e-4,
                        dropout=0.0, scale=None, scale_jitter=(80, 96), crop=80,
                        width=0.25, fc_width=256, init="kaiming", normalise="mean-std",
                        data_size=64, warmup_steps=100, schedule="cosine", patience=2),
    "alexnet": dict(epochs=90, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4,
                    dropout=0.5, scale=256, scale_jitter=None, crop=224, width=1.0,
                    fc_width=4096, init="alexnet", normalise="mean", data_size=256,
                    warmup_steps=0, schedule="plateau", patience=1),
    # The nets with branches or without FC layers. `cpu-nin`: NiN at width 1/4 (24 to 96
    # maps, 256 in the last block) on 80 px crops (its 11x11/4 first layer and three
    # pools leave a 2x2 class map), no FC layer, so fc_width 0. `cpu-googlenet`:
    # GoogLeNet at width 1/8 on 96 px crops, the smallest whose 4a map (6x6) still takes
    # the auxiliary heads' 5x5 pool; the heads' FC 256 wide; batch 16: 22 layers without
    # batch norm sit at ln 10 for some 500 steps before they learn (their top features
    # barely depend on the image at first: googlenet.py), so steps count more than
    # images; no dropout before the classifier, as in the other cpu presets (the heads
    # keep their 0.7).
    "cpu-nin": dict(epochs=30, batch_size=32, lr=0.01, momentum=0.9, weight_decay=5e-4,
                    dropout=0.0, scale=None, scale_jitter=(80, 96), crop=80, width=0.25,
                    fc_width=0, init="kaiming", normalise="mean-std", data_size=64,
                    warmup_steps=100, schedule="cosine", patience=2),
    "cpu-googlenet": dict(epochs=10, batch_size=16, lr=0.01, momentum=0.9, weight_decay=5e-4,
                          dropout=0.0, scale=None, scale_jitter=(96, 112), crop=96,
                          width=0.125, fc_width=256, init="kaiming", normalise="mean-std",
                          data_size=64, warmup_steps=100, schedule="cosine", patience=2),
}
# What --preset auto takes for a config: cpu or cuda (VGG), by the device, or the config's.
AUTO_PRESETS = {"LeNet-5": "lenet", "AlexNet": "cpu-alexnet", "AlexNet-1tower": "cpu-alexnet",
                "ZFNet": "cpu-alexnet", "NiN": "cpu-nin", "GoogLeNet": "cpu-googlenet"}


def auto_preset(config, device_name):
    """The preset --preset auto means for `config` on the device."""
    return AUTO_PRESETS.get(config, "cuda" if device_name == "cuda" else "cpu")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (exit status 2), like every other bad input:
    its usual usage block buries the message."""

    def error(self, message):
        raise UserError(f"{message} (see python -m minivgg.train --help)")


def _presets(key):
    """' (cpu: 18, cuda: 20, paper: 74)': a setting's value in each preset, for --help."""
    def show(v):
        return "none" if v is None else " ".join(map(str, v)) if isinstance(v, tuple) else v
    return " (" + ", ".join(f"{name}: {show(p[key])}" for name, p in PRESETS.items()) + ")"


def build_parser():
    from minivgg import configs
    p = _Parser(
        prog="python -m minivgg.train",
        description="Train a VGG net (Simonyan & Zisserman, sect. 3.1). Without --data, "
                    "on the built-in shapes set; without --preset, with settings that suit "
                    "the device. Flags override the preset; a flag's presets are listed as "
                    "(cpu: ..., cuda: ..., paper: ...).",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--config",
                   help=f"network configuration of Table 1: {', '.join(configs.names())} "
                        "(default: B, or with --init-from the checkpoint's own)")
    p.add_argument("--data", help="image-folder root with train/<class>/* and val/<class>/* "
                                  "(default: the built-in shapes set, generated once)")
    backend.add_device_argument(p)
    distributed.add_argument(p)
    p.add_argument("--preset", choices=["auto", *PRESETS], default="auto",
                   help="settings: cpu (narrow B, 32px crops, minutes on 2 cores), cuda "
                        "(wider, 64px), paper (sect. 3.1: batch 256, lr 1e-2, crop 224, "
                        "S=256, 74 epochs), lenet (LeNet-5 on the built-in digits), "
                        "cpu-alexnet (AlexNet, ZFNet: width 1/4, 80px crops), alexnet "
                        "(AlexNet sect. 5), cpu-nin (NiN: width 1/4, 80px), cpu-googlenet "
                        "(GoogLeNet: width 1/8, 96px); auto picks lenet for LeNet-5, "
                        "cpu-alexnet for AlexNet and ZFNet, cpu-nin for NiN, cpu-googlenet "
                        "for GoogLeNet, else cpu or cuda by device")
    p.add_argument("--epochs", type=int, help="at most this many epochs" + _presets("epochs"))
    p.add_argument("--batch-size", type=int, help="images per SGD step" + _presets("batch_size"))
    p.add_argument("--lr", type=float, help="initial learning rate" + _presets("lr"))
    p.add_argument("--momentum", type=float, help="SGD momentum" + _presets("momentum"))
    p.add_argument("--weight-decay", type=float,
                   help="L2 penalty multiplier" + _presets("weight_decay"))
    p.add_argument("--dropout", type=float,
                   help="dropout ratio on FC1, FC2" + _presets("dropout"))
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--scale", type=int, metavar="S",
                       help="fixed training scale: smallest image side (sect. 3.1: 256, 384)"
                            + _presets("scale"))
    scale.add_argument("--scale-jitter", type=int, nargs=2, metavar=("SMIN", "SMAX"),
                       help="multi-scale training: S drawn per image from [SMIN, SMAX] "
                            "(sect. 3.1: 256 512)" + _presets("scale_jitter"))
    p.add_argument("--crop", type=int,
                   help="training crop side = network input" + _presets("crop"))
    p.add_argument("--width", type=float,
                   help="multiplier of every conv layer's channels" + _presets("width"))
    p.add_argument("--fc-width", type=int,
                   help="channels of FC1 and FC2" + _presets("fc_width"))
    p.add_argument("--init", choices=["paper", "glorot", "kaiming", "alexnet"],
                   help="weight initialisation (sect. 3.1): paper = N(0, 0.01^2); glorot = "
                        "Glorot & Bengio; kaiming = He et al.; alexnet = N(0, 0.01^2) and "
                        "AlexNet's biases of 1 (its sect. 5)" + _presets("init"))
    p.add_argument("--normalise", choices=["mean", "mean-std"],
                   help="input pre-processing: mean = subtract the training set's mean RGB "
                        "(sect. 2.1, for the paper's init); mean-std = also divide by the "
                        "per-channel std (for glorot/kaiming)" + _presets("normalise"))
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from trained weights. The same config (or --config left out): "
                        "fine-tune, copying every layer but the last, which gets --data's "
                        "classes; the net, its preprocessing and test scale come from CKPT "
                        "(e.g. VGG-16 converted by minivgg.convert). Another --config: "
                        "pre-initialise it from net A's first four conv layers and three FC "
                        "layers (sect. 3.1)")
    p.add_argument("--lr-copied", type=float, default=0.1,
                   help="fine-tuning: the copied layers learn at this times --lr")
    p.add_argument("--freeze", choices=["features", "copied"],
                   help="fine-tuning: do not train the conv layers (features), or any copied "
                        "layer (copied: only the new last layer learns)")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint")
    p.add_argument("--out", default="runs/train", help="directory for checkpoints and logs")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order, "
                                                       "augmentation and dropout")
    p.add_argument("--workers", type=int, default=2, help="data loading threads")
    add_thread_arguments(p)
    p.add_argument("--warmup-steps", type=int,
                   help="raise the learning rate linearly from 0 over this many first steps "
                        "(not in the paper; keeps narrow nets from dying in the first steps)"
                        + _presets("warmup_steps"))
    p.add_argument("--lr-schedule", dest="schedule", choices=["plateau", "cosine"],
                   help="plateau = divide lr by 10 when validation accuracy stops improving "
                        "(sect. 3.1); cosine = lower it every step to 0 at the last epoch "
                        "(not in the paper; best for a short, fixed budget)"
                        + _presets("schedule"))
    p.add_argument("--patience", type=int,
                   help="epochs without a better validation accuracy before the learning "
                        "rate is divided by 10 (sect. 3.1)" + _presets("patience"))
    p.add_argument("--max-decreases", type=int, default=3,
                   help="learning-rate divisions by 10 on plateau (sect. 3.1: 3)")
    p.add_argument("--snapshot-epochs", type=int, nargs="+", metavar="E",
                   help="also keep the weights (no optimizer state) after these epochs, in "
                        "OUT/snapshots/epoch-EEE.npz (0: before training), for ZFNet's "
                        "feature evolution: python -m minivgg.visualise evolution OUT")
    return p


def settings_from(args, device_name):
    """The preset, overridden by every flag given on the command line."""
    from minivgg import finetune
    config = finetune.resolve_config(args)  # left out: B, or the --init-from checkpoint's
    preset = args.preset if args.preset != "auto" else auto_preset(config, device_name)
    s = dict(PRESETS[preset], preset=preset)
    s.update(finetune.defaults(args))  # fine-tuning: the net and test scale of --init-from
    for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "dropout", "crop",
                "width", "fc_width", "init", "normalise", "warmup_steps", "schedule",
                "patience"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.scale is not None:
        s["scale"], s["scale_jitter"] = args.scale, None
    if args.scale_jitter is not None:
        s["scale"], s["scale_jitter"] = None, tuple(args.scale_jitter)
    check_settings(s)
    return s


# Each float setting: the flag's name and the values it may take. NaN and inf fail every
# comparison, so they are checked first, by name, instead of slipping through to step 2.
FLOAT_RANGES = {"lr": ("positive", lambda v: v > 0),
                "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
                "weight_decay": ("at least 0", lambda v: v >= 0),
                "dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
                "width": ("positive", lambda v: v > 0)}


def _flag(key):
    return "--" + {"schedule": "lr-schedule"}.get(key, key.replace("_", "-"))


def check_settings(s):
    for key in ("epochs", "batch_size", "crop", "patience"):
        if s[key] < 1:
            raise UserError(f"{_flag(key)} must be at least 1, got {s[key]}")
    for key, (what, ok) in FLOAT_RANGES.items():
        if not math.isfinite(s[key]):
            raise UserError(f"{_flag(key)} must be a finite number, got {s[key]}")
        if not ok(s[key]):
            raise UserError(f"{_flag(key)} must be {what}, got {s[key]}")
    if "finetune" in s and not 0 <= s["finetune"]["lr_copied"] <= 1:
        raise UserError(f"--lr-copied must be in [0, 1], got {s['finetune']['lr_copied']}")
    if s["warmup_steps"] < 0:
        raise UserError(f"--warmup-steps must be at least 0, got {s['warmup_steps']}")
    smallest = s["scale"] if s["scale"] is not None else min(s["scale_jitter"])
    if s["scale_jitter"] is not None and s["scale_jitter"][0] > s["scale_jitter"][1]:
        raise UserError(f"--scale-jitter {s['scale_jitter'][0]} {s['scale_jitter'][1]}: "
                        "SMIN must not exceed SMAX")
    if s["crop"] > smallest:
        raise UserError(f"--crop {s['crop']} is larger than the training scale S={smallest}: "
                        "crops are cut from images whose smallest side is S (sect. 3.1)")


def check_out_dir(out):
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--out {out} is not a writable directory ({e.strerror})") from None


def parse(argv=None):
    """The arguments. A bad flag is the same error on every MPI process: rank 0 says it,
    the others exit with the same status in silence (no mpi4py needed to know the rank)."""
    try:
        return build_parser().parse_args(argv)
    except UserError:
        if distributed.launched()[1] != 0:
            sys.exit(2)
        raise


def main(argv=None):
    args = parse(argv)
    world = distributed.init(args.distributed, gpu=args.device in ("auto", "cuda"))
    with world.guard():  # several processes: an error on any one ends them all, in one line
        return _train(args, world)


def _train(args, world):
    dev = start_device(args)
    world.use_device(dev)
    if world.size > 1:
        print(f"distributed: {world.describe()}")
    from minivgg import configs, finetune
    configs.get(finetune.resolve_config(args))  # an unknown config fails here, before any work
    s = settings_from(args, dev.name)
    if args.snapshot_epochs and min(args.snapshot_epochs) < 0:
        raise UserError(f"--snapshot-epochs must be at least 0, got {min(args.snapshot_epochs)}")
    if s["batch_size"] < world.size:
        raise UserError(f"--batch-size {s['batch_size']} is smaller than the {world.size} "
                        "processes: each needs a share of every batch (sect. 3.3)")
    if world.is_root:  # rank 0 alone writes
        check_out_dir(args.out)
    if args.data is None and s.get("dataset") == "digits":  # LeNet-5's built-in set
        from minivgg import data
        args.data = data.ensure_digits(size=s["data_size"])
    from minivgg.trainer import Trainer
    trainer = Trainer(args, s, world=world)
    if not trainer.s.get("flip", True):  # the preset's (or the resumed run's) say
        trainer.train_loader.flip = False
    return trainer.run()


if __name__ == "__main__":
    sys.exit(run_cli(main))
