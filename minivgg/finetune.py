"""Starting a run from trained weights: `train --init-from CKPT` (fine-tuning, sect. 3.1).

Which of two, the configuration decides:

  fine-tuning          --config left out, or the checkpoint's own. Every layer is copied
                       but the last, which gets one output per class of --data and a fresh
                       init (kept when the classes are the checkpoint's own). The copied
                       layers learn at lr * --lr-copied (0.1), or not at all: --freeze
                       features (the conv layers), --freeze copied (all but the last). The
                       net keeps the checkpoint's width, FC width, input size and dropout,
                       its test scale is the default training scale, and its inputs are
                       preprocessed as the checkpoint says, not with --data's statistics:
                       the weights were learned on those numbers.
  pre-initialisation   --config other than the checkpoint's (sect. 3.1: a deeper net from
                       net A): its first four conv layers and three FC layers
                       (VGG.preinitialise_from); everything else as in a fresh run.

The data loader feeds RGB pixels as (pixel - mean_rgb) / std_rgb. fold() writes any
checkpoint's preprocessing that way: scale goes into the mean and std, and a BGR net's
channel order into its first conv, whose input channels are reversed when copied (the
same sums, so the same outputs). The settings record it all (settings["finetune"]), so
--resume rebuilds the same run.
"""
import numpy as np

from minivgg import backend, checkpoint
from minivgg.errors import UserError

FREEZE = ("features", "copied")
KEPT = ("width", "fc_width", "crop")  # fixed by the copied weights' shapes


def resolve_config(args):
    """args.config: as given; else the --resume or --init-from checkpoint's; else B."""
    if args.config is None:
        source = args.resume or args.init_from
        args.config = checkpoint.peek(source)["model"]["config"] if source else "B"
    return args.config


def fold(p):
    """(mean_rgb, std_rgb, flip) such that (pixel - mean_rgb) / std_rgb on RGB pixels, into
    a first conv whose input channels are reversed when flip, computes what preprocessing
    `p` (checkpoint.preprocessing) feeds the original net:
    (x * scale - mean) / std = (x - mean / scale) / (std / scale)."""
    order = slice(None, None, -1) if p["channels"] == "BGR" else slice(None)
    mean = [m / p["scale"] for m in p["mean"]][order]
    if p["std"] is not None:
        std = [s / p["scale"] for s in p["std"]][order]
    else:
        std = None if p["scale"] == 1 else [1 / p["scale"]] * 3
    return mean, std, p["channels"] == "BGR"


def defaults(args):
    """Settings a fine-tuning run takes from its checkpoint ({} for any other run)."""
    if not args.init_from or args.resume:
        return {}
    saved = checkpoint.peek(args.init_from)
    d = saved["model"]
    if args.config != d["config"]:
        return {}  # sect. 3.1 pre-initialisation: a fresh run otherwise
    out = dict(width=d["width"], fc_width=d["fc_width"], crop=d["input_size"],
               dropout=d["dropout"])
    for key in KEPT:
        given = getattr(args, key)
        if given is not None and given != out[key]:
            raise UserError(f"--{key.replace('_', '-')} {given}: fine-tuning keeps the net of "
                            f"{args.init_from} ({key.replace('_', ' ')} {out[key]}); leave it "
                            "out")
    theirs = saved["meta"].get("settings") or {}
    if theirs.get("scale_jitter") is not None:
        out.update(scale=None, scale_jitter=tuple(theirs["scale_jitter"]))
    else:
        out.update(scale=theirs.get("scale") or int(round(d["input_size"] * 256 / 224)),
                   scale_jitter=None)
    try:
        mean, std, flip = fold(checkpoint.preprocessing(saved["meta"]))
    except UserError as e:
        raise UserError(f"--init-from {args.init_from}: {e}") from None
    out["finetune"] = dict(source=args.init_from, mean_rgb=mean, std_rgb=std,
                           flip_channels=flip, lr_copied=args.lr_copied, freeze=args.freeze)
    return out


def last_layer(model):
    """Names of the last layer's weight and bias (the one fine-tuning replaces)."""
    return [n for n, _ in model.named_parameters()][-2:]


def initialise(model, path, settings, classes):
    """Copy the --init-from weights into model: fine-tuning or sect. 3.1; says what it did."""
    ckpt = checkpoint.load(path)
    ft = settings.get("finetune")
    if ft is None:
        copied = model.preinitialise_from(checkpoint.model_from_checkpoint(ckpt))
        print(f"pre-initialised {len(copied)} tensors from {path} (sect. 3.1)")
        return
    keep_last = list(ckpt["meta"].get("classes") or []) == list(classes)
    mine = dict(model.named_parameters())
    names = [n for n in mine if keep_last or n not in last_layer(model)]
    for n in names:
        if n not in ckpt["params"] or backend.shape(ckpt["params"][n]) != mine[n].shape:
            got = ckpt["params"].get(n)
            raise UserError(f"--init-from {path}: tensor {n!r} is "
                            f"{'missing' if got is None else backend.shape(got)}, the net "
                            f"needs {tuple(mine[n].shape)}")
    first = names[0]  # features.0.weight: the first conv, which reads the pixels
    for n in names:
        w = ckpt["params"][n]
        if n == first and ft["flip_channels"]:
            w = np.ascontiguousarray(w[:, ::-1])  # BGR weights, RGB inputs (fold())
        backend.copy_into(mine[n].data, w)
    last = "kept (same classes)" if keep_last else f"new, {len(classes)} outputs"
    print(f"fine-tuning {path}: copied {len(names)} tensors; last layer {last}"
          + ("; first conv's input channels reversed (BGR weights)" if ft["flip_channels"]
             else ""))


def set_learning_rates(model, optimizer, settings):
    """Copied layers at lr * lr_copied, or frozen (no gradient, no update); the last at lr."""
    ft = settings.get("finetune")
    if ft is None:
        return
    last = last_layer(model)
    frozen = 0
    for name, p in model.named_parameters():
        if name in last:
            continue
        if ft["freeze"] == "copied" or (ft["freeze"] == "features" and
                                        name.startswith("features.")):
            p.requires_grad = False  # no gradient is computed: backward stops early
            optimizer.lr_scale[name] = 0.0
            frozen += 1
        else:
            optimizer.lr_scale[name] = ft["lr_copied"]
    learning = "frozen" if ft["freeze"] == "copied" else f"at {ft['lr_copied']:g} x lr"
    print(f"copied layers {learning}" + (f" ({frozen} tensors frozen)" if frozen and
                                         ft["freeze"] != "copied" else ""))
