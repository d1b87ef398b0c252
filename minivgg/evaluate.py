"""`python -m minivgg.evaluate CKPT [CKPT ...] --data DIR`: test as in the paper (sect. 3.2, 4).

    --method dense        sect. 3.2: rescale the image so its smallest side is Q, run the
                          fully-convolutional view (model.dense()) over the whole uncropped
                          image, average the class score map spatially, soft-max; with
                          flips (default), average the posteriors of the image and its mirror.
    --method multi-crop   sect. 3.2 / 4.3: at each scale Q, a 5x5 regular grid of crops of
                          the training crop size, and their mirrors: 50 crops per scale,
                          each through the FC network, posteriors averaged.
    --method both         sect. 4.3: the average of the dense and multi-crop posteriors.
    scales                sect. 4.1 / 4.2: by default one test scale, Q = S (fixed S) or
                          Q = (Smin + Smax) / 2 (jittered S), as in Table 3; --multi-scale
                          takes three, Q = {S - d, S, S + d} or {Smin, (Smin + Smax) / 2,
                          Smax}, as in Table 4; --scales Q1 Q2 ... sets them explicitly.
                          Posteriors are averaged over the scales.
    several CKPTs         sect. 4.4, ConvNet fusion: their posteriors are averaged. They must
                          have the same classes; each uses its own mean RGB, crop and
                          (default) scales, as every net in Table 6 has its own.

d is the paper's 32 pixels at 224-pixel crops, scaled to the crop: round(32 * crop / 224)
(so 5 for 32-pixel crops, where +-32 would be a factor of two); a scale below the crop is
raised to it. Writes into --out (default: the first checkpoint's folder) a JSON file with
everything (errors, per-class accuracy, confusion matrix, every image's top-5) and the
confusion matrix as a PNG; prints the top-1 and top-5 error (sect. 4's measures).

Under MPI (`mpirun -n R python -m minivgg.evaluate ...`, sect. 3.3) each process takes a
contiguous share of the images; rank 0 gathers the posteriors, in order, and alone prints
and writes: the same report as one process.

The functions are small and public, so tests and lessons can call them one by one:
preprocess, default_scales, crop_grid, multicrop_views, posteriors_dense,
posteriors_multicrop, posteriors, fuse, top_k_error, per_class_accuracy, confusion_matrix.
"""
import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from minivgg import backend, data, distributed, figures, metrics
from minivgg.device_flags import add_thread_arguments, start_device
from minivgg.errors import UserError, run_cli

METHODS = ("dense", "multi-crop", "both")


# -- pre-processing and scales ----------------------------------------------------------------
def preprocess(img, meta):
    """uint8 RGB HxWx3 -> float32 HxWx3, the input the checkpoint's weights expect.

    meta is a checkpoint's meta; checkpoint.preprocessing(meta) says what to do: reorder
    the channels (BGR for Caffe's nets), multiply by scale (1/255 for torchvision's), then
    subtract the mean (sect. 2.1) and divide by the std when given. For a checkpoint of
    minivgg.train (mean_rgb, std_rgb) that is exactly what training fed the net,
    data.normalise(img, mean_rgb, std_rgb). None leaves the pixels as they are.
    """
    if meta is None:
        return np.asarray(img, dtype=np.float32)
    from minivgg.checkpoint import preprocessing
    p = preprocessing(meta)
    x = img[..., ::-1] if p["channels"] == "BGR" else img
    if p["scale"] != 1.0:
        x = np.asarray(x, dtype=np.float32) * np.float32(p["scale"])
    return data.normalise(x, p["mean"], p["std"])


def default_scales(settings, crop, multi_scale=False):
    """The test scales Q for a net trained with `settings` (sect. 4.1, 4.2).

    Fixed S: [S], or with multi_scale [S - d, S, S + d], d = round(32 * crop / 224) (the
    paper's 32 px at 224 crops). Jittered [Smin, Smax]: [(Smin + Smax) / 2] (Table 3), or
    [Smin, (Smin + Smax) / 2, Smax] (Table 4). Scales below the crop are raised to it.
    """
    jitter, S = settings.get("scale_jitter"), settings.get("scale")
    if jitter is not None:
        lo, hi = (int(v) for v in jitter)
        mid = int(round((lo + hi) / 2))
        qs = [lo, mid, hi] if multi_scale else [mid]
    elif S is not None:
        d = max(1, int(round(32 * crop / 224)))
        qs = [int(S) - d, int(S), int(S) + d] if multi_scale else [int(S)]
    else:
        raise UserError("the checkpoint records no training scale (settings.scale or "
                        "settings.scale_jitter); give the test scale (--scales Q / --scale Q)")
    return sorted(set(max(q, crop) for q in qs))


def check_scales(scales, crop, where=""):
    """A test scale below the crop is a one-line UserError (the net needs >= crop pixels)."""
    for q in scales:
        if q < crop:
            raise UserError(f"scale {q} is smaller than the crop {crop}{where}: the smallest "
                            f"image side Q must be >= the network's input size (sect. 3.2)")


# -- the grid of crops (sect. 3.2: 5x5 regular grid, 2 flips) ---------------------------------
def crop_grid(h, w, crop, n=5):
    """Top-left corners (y0, x0) of an n x n regular grid of crop x crop windows, row-major.

    Offsets are linspace(0, side - crop, n) rounded to the nearest pixel, halves down: the
    corners touch the image's corners and the middle window is data.center_crop's.
    """
    if crop > min(h, w):
        raise UserError(f"crop {crop} is larger than the image ({h}x{w})")

    def offsets(side):
        if n == 1:
            return [(side - crop) // 2]
        return [int(np.ceil(v - 0.5)) for v in np.linspace(0, side - crop, n)]
    return [(y, x) for y in offsets(h) for x in offsets(w)]


def multicrop_views(img, crop, n=5, flip=True):
    """The n*n grid crops of img (HxWxC), then their mirrors: (n*n*(1+flip), crop, crop, C)."""
    h, w = img.shape[:2]
    crops = [img[y:y + crop, x:x + crop] for y, x in crop_grid(h, w, crop, n)]
    if flip:
        crops += [c[:, ::-1] for c in crops]
    return np.stack(crops)


# -- posteriors -------------------------------------------------------------------------------
def softmax(scores):
    """Soft-max over the last axis, in float64 on the host (scores: (N, classes), any device)."""
    z = backend.to_host(scores).astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _nchw(views):
    """(N, H, W, 3) float32 host array -> C-contiguous (N, 3, H, W) on the device."""
    return backend.to_device(np.ascontiguousarray(np.asarray(views).transpose(0, 3, 1, 2)))


def _rescaled(img, q, meta):
    from minivgg.data import rescale
    return preprocess(rescale(img, q), meta)


def posteriors_dense(model, img, scales, flip=True, meta=None):
    """Sect. 3.2, dense evaluation: (classes,) posteriors averaged over scales and flips.

    At each Q the image is rescaled (smallest side Q), the fully-convolutional view runs
    over all of it, the class score map is averaged spatially (sum-pooled), and soft-max
    gives the posteriors; the mirror's posteriors are averaged in (flip=True).
    """
    from minivgg import ops
    from minivgg.tape import Tensor, no_grad
    dense, out = model.dense(), []
    with no_grad():
        for q in scales:
            x = _rescaled(img, q, meta)
            views = np.stack([x, x[:, ::-1]]) if flip else x[None]  # same size: one batch
            scores = ops.global_avg_pool(dense(Tensor(_nchw(views))))
            out.append(softmax(backend.to_host(scores.data)).mean(axis=0))
    return np.mean(out, axis=0)


def posteriors_multicrop(model, img, scales, crop=None, meta=None, flip=True, n=5, batch=50):
    """Sect. 3.2 / 4.3, multi-crop evaluation: (classes,) posteriors averaged over all crops.

    At each Q, the n x n grid of crop x crop windows (crop: the net's input size) and their
    mirrors (2 n^2 = 50 crops per scale) go through the FC network, `batch` at a time;
    their soft-max posteriors are averaged, then averaged over the scales.
    """
    from minivgg.tape import Tensor, no_grad
    crop = crop or model.input_size
    out = []
    with no_grad():
        for q in scales:
            views = multicrop_views(_rescaled(img, q, meta), crop, n, flip)
            probs = [softmax(backend.to_host(model(Tensor(_nchw(views[i:i + batch]))).data))
                     for i in range(0, len(views), batch)]
            out.append(np.concatenate(probs).mean(axis=0))
    return np.mean(out, axis=0)


def fuse(posteriors_list):
    """Sect. 4.4 (and 4.3): the average of several posterior arrays of the same shape."""
    arrays = [np.asarray(p, dtype=np.float64) for p in posteriors_list]
    if not arrays:
        raise ValueError("fuse: nothing to fuse")
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"fuse: shapes differ: {[a.shape for a in arrays]}")
    return np.mean(arrays, axis=0)


@dataclass
class Net:
    """A loaded checkpoint, ready to evaluate: the model, its meta and its test scales."""
    path: str
    model: object
    meta: dict
    scales: list

    @property
    def crop(self):
        return self.model.input_size


def posteriors(net, img, method="dense", flip=True):
    """One image's (classes,) posteriors from one net by `method` (dense|multi-crop|both)."""
    parts = []
    if method in ("dense", "both"):
        parts.append(posteriors_dense(net.model, img, net.scales, flip, net.meta))
    if method in ("multi-crop", "both"):
        parts.append(posteriors_multicrop(net.model, img, net.scales, net.crop, net.meta,
                                          flip))
    if not parts:
        raise UserError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return fuse(parts)


def evaluate(nets, dataset, method="dense", flip=True, progress=True, world=None):
    """(N, classes) posteriors of every image: each net's, fused (sect. 4.4).

    world (minivgg.distributed, several processes): each evaluates its share of the
    images; rank 0 gets all N rows, in order, the others None."""
    from tqdm import tqdm
    world = world or distributed.World()
    start, stop = world.shard(len(dataset))
    out = np.empty((stop - start, len(nets[0].meta["classes"])), dtype=np.float64)
    for i in tqdm(range(start, stop), desc=f"evaluating ({method})", unit="img",
                  disable=not (progress and world.is_root), dynamic_ncols=True):
        img, _ = dataset[i]
        out[i - start] = fuse([posteriors(net, img, method, flip) for net in nets])
    return world.gather_rows(out)


# -- measures (sect. 4: top-1 and top-5 error) ------------------------------------------------
def top_k_error(probs, labels, k):
    """The fraction of images whose label is not among the k highest posteriors.

    Ties and NaNs are ranked by metrics' rule (ties by position), as everywhere."""
    probs, labels = backend.to_host(probs), backend.to_host(labels)
    return 1.0 - float(metrics.top_k_correct(probs, labels, k)) / len(labels)


def confusion_matrix(probs, labels, num_classes):
    """counts[true, predicted] of the top-1 predictions (int64, num_classes x num_classes).

    The prediction is metrics' first-ranked class, so the diagonal agrees with top-1."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    predicted = metrics.top_classes(backend.to_host(probs), 1)[:, 0]
    np.add.at(m, (backend.to_host(labels), predicted), 1)
    return m


def per_class_accuracy(probs, labels, num_classes):
    """Top-1 accuracy of each class (NaN for a class with no image)."""
    m = confusion_matrix(probs, labels, num_classes)
    n = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.diag(m) / np.maximum(n, 1), np.nan)


def plot_confusion(matrix, classes, path, title=""):
    """The row-normalised confusion matrix as a PNG (Agg; written to a temp file, renamed)."""
    plt = figures.pyplot()
    K = len(classes)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(12, 3 + 0.35 * K)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if K <= 40:  # beyond that the names would be unreadable
        ax.set_xticks(range(K), classes, rotation=90)
        ax.set_yticks(range(K), classes)
    if K <= 15:  # small enough to print the counts in the cells
        for t in range(K):
            for q in range(K):
                ax.text(q, t, str(matrix[t, q]), ha="center", va="center", fontsize=8,
                        color="white" if rows[t, q] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    figures.save(fig, path, dpi=90)


# -- the command line ------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minivgg.evaluate",
        description="Evaluate VGG checkpoints as in the paper: dense evaluation (sect. 3.2), "
                    "multi-crop (50 crops per scale, sect. 3.2/4.3) or both (sect. 4.3), at "
                    "one or several test scales (sect. 4.1/4.2), with horizontal flips; "
                    "several checkpoints are fused by averaging posteriors (sect. 4.4). "
                    "Reports top-1 and top-5 error, per-class accuracy and a confusion "
                    "matrix.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint(s) written by minivgg.train or minivgg.convert; several "
                        "are fused (sect. 4.4)")
    p.add_argument("--data", required=True,
                   help="image-folder root holding SPLIT/<class>/<image>")
    p.add_argument("--split", default="val", help="sub-folder of --data to evaluate (default: %(default)s)")
    p.add_argument("--method", choices=METHODS, default="dense",
                   help="dense: fully-convolutional over the whole image (sect. 3.2); "
                        "multi-crop: 5x5 grid x 2 flips per scale (sect. 3.2); both: their "
                        "average (sect. 4.3). Default: %(default)s")
    scales = p.add_mutually_exclusive_group()
    scales.add_argument("--scales", type=int, nargs="+", metavar="Q",
                        help="test scales Q (smallest image side), for every checkpoint. "
                             "Default: one scale from each checkpoint's training scale: "
                             "Q = S, or (Smin+Smax)/2 when jittered (Table 3)")
    scales.add_argument("--multi-scale", action="store_true",
                        help="three scales from the training scale: {S-d, S, S+d} with "
                             "d = 32 px at 224 crops scaled to the crop, or {Smin, "
                             "(Smin+Smax)/2, Smax} when jittered (sect. 4.2, Table 4)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="average in the posteriors of the mirrored image (sect. 3.2; "
                        "default: on)")
    p.add_argument("--out", help="folder for the JSON and the confusion-matrix PNG "
                                 "(default: the first checkpoint's folder)")
    backend.add_device_argument(p)
    add_thread_arguments(p)
    distributed.add_argument(p)
    return p


def load_net(path, scales=None, multi_scale=False):
    """Load a checkpoint as a Net in eval mode, with its test scales (checked vs its crop)."""
    from minivgg import checkpoint
    ckpt = checkpoint.load(path)
    meta = ckpt["meta"]
    if meta.get("classes") is None:
        raise UserError(f"checkpoint {path} records no classes (not written by minivgg.train "
                        "or minivgg.convert?)")
    try:
        checkpoint.preprocessing(meta)  # a checkpoint without one fails here, in one line
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
    crop = int(ckpt["model"]["input_size"])
    if scales is None:
        scales = default_scales(meta.get("settings") or {}, crop, multi_scale)
    check_scales(scales, crop, f" of {path}")
    model = checkpoint.model_from_checkpoint(ckpt)
    model.eval()  # dropout off for the FC network (the dense view has none)
    return Net(path, model, meta, [int(q) for q in scales])


def load_nets(paths, scales=None, multi_scale=False):
    """All checkpoints as Nets; fusion needs the same classes in the same order."""
    nets = [load_net(p, scales, multi_scale) for p in paths]
    first = nets[0]
    for net in nets[1:]:
        if list(net.meta["classes"]) != list(first.meta["classes"]):
            raise UserError(f"cannot fuse {net.path} with {first.path}: their classes differ "
                            f"({len(net.meta['classes'])} vs {len(first.meta['classes'])}, "
                            "or another order)")
    return nets


def _read_dataset(root, split, classes, quiet=False):
    """The ImageFolder, with skipped-file warnings printed as one 'warning:' line (not by
    quiet processes: under MPI, rank 0 says it)."""
    from minivgg.data import ImageFolder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolder(root, split, classes=classes)
    for w in caught if not quiet else []:
        print(f"warning: {w.message}", file=sys.stderr)
    return ds


def _stem(args, nets):
    tag = "-".join(str(q) for q in nets[0].scales)
    fused = f"_fused{len(nets)}" if len(nets) > 1 else ""
    return f"eval_{args.split}_{args.method}_q{tag}{fused}{'' if args.flip else '_noflip'}"


def report(nets, dataset, probs, args, seconds):
    """Everything measured, as a JSON-able dict."""
    classes, labels = list(nets[0].meta["classes"]), dataset.targets
    K = len(classes)
    acc, counts = per_class_accuracy(probs, labels, K), np.bincount(labels, minlength=K)
    top5 = metrics.top_classes(probs, 5)
    return dict(
        checkpoints=[n.path for n in nets], method=args.method, flip=args.flip,
        scales={n.path: n.scales for n in nets}, data=os.path.abspath(args.data),
        split=args.split, device=backend.device().name, seconds=round(seconds, 3),
        n_images=len(labels), skipped=list(dataset.skipped),
        top1_error=top_k_error(probs, labels, 1), top5_error=top_k_error(probs, labels, 5),
        per_class={c: dict(images=int(counts[i]),
                           top1_accuracy=None if np.isnan(acc[i]) else float(acc[i]))
                   for i, c in enumerate(classes)},
        classes=classes, confusion=confusion_matrix(probs, labels, K).tolist(),
        images=[dict(path=p, label=int(y), top5=[int(c) for c in t],
                     top5_probs=[float(probs[i, c]) for c in t])
                for i, ((p, y), t) in enumerate(zip(dataset.samples, top5))])


def _print_summary(r):
    print(f"{r['n_images']} images, method {r['method']}, flip {'on' if r['flip'] else 'off'}, "
          f"scales {', '.join(str(q) for q in r['scales'].values())}, "
          f"{len(r['checkpoints'])} checkpoint(s)")
    print(f"top-1 error {100 * r['top1_error']:.2f}%   top-5 error {100 * r['top5_error']:.2f}%")
    if len(r["classes"]) <= 30:
        for c, v in r["per_class"].items():
            a = "   n/a" if v["top1_accuracy"] is None else f"{100 * v['top1_accuracy']:5.1f}%"
            print(f"  {c:<20} {a}  ({v['images']} images)")


def main(argv=None):
    args = build_parser().parse_args(argv)
    world = distributed.init(args.distributed, gpu=args.device in ("auto", "cuda"))
    with world.guard():  # several processes: an error on any one ends them all
        return _main(args, world)


def _main(args, world):
    dev = start_device(args)
    world.use_device(dev)
    nets = load_nets(args.checkpoints, args.scales, args.multi_scale)
    dataset = _read_dataset(args.data, args.split, nets[0].meta["classes"],
                            quiet=not world.is_root)
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoints[0]))
    try:
        if world.is_root:  # rank 0 alone writes
            os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out} is not a usable directory ({e.strerror})") from None
    t0 = time.perf_counter()
    probs = evaluate(nets, dataset, args.method, args.flip, world=world)
    if probs is None:  # not rank 0: its posteriors went to rank 0
        return 0
    r = report(nets, dataset, probs, args, time.perf_counter() - t0)
    _print_summary(r)
    stem = os.path.join(out, _stem(args, nets))
    with open(stem + ".json", "w") as f:
        json.dump(r, f, indent=1)
    plot_confusion(np.array(r["confusion"]), r["classes"], stem + "_confusion.png",
                   f"{args.method}, Q={nets[0].scales}, top-1 error "
                   f"{100 * r['top1_error']:.1f}%")
    print(f"wrote {stem}.json, {stem}_confusion.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
