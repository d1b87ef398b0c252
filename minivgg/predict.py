"""`python -m minivgg.predict CKPT IMAGE [IMAGE ...]`: the top-5 classes of each image.

(or `--weights CKPT IMAGE ...`, e.g. the real VGG-16 made by minivgg.convert: the
checkpoint brings its preprocessing and the ImageNet class names.)

Dense evaluation (paper sect. 3.2) at the checkpoint's test scale: Q = S for a fixed
training scale, (Smin + Smax) / 2 for a jittered one (sect. 4.1, Table 3), or --scale Q;
the posteriors of the image and its mirror are averaged (--no-flip to skip).

--heatmap OUT.png draws, over the rescaled image, where the top class is seen: the dense
class score map (classes x P x Q), soft-maxed over the classes at every position, the top
class's probability. Position (p, q) is the net applied to the crop x crop window whose
top-left corner is (p, q) * jump (jump = 32 for VGG: five 2x2 poolings), so each cell is
drawn centred on its window. One PNG per image; with several images, OUT_0.png, OUT_1.png...

--boxes OUT.png --localiser LOC [LOC ...] draws on each image the box of each of the top
classes (VGG appendix A.1, protocol 2: every box the localisation nets predict at their
test scales, merged greedily and rated by this checkpoint's class scores; --grid N for an
N x N grid of crops instead of the dense view), with the class names. The same file
naming as --heatmap.
"""
import argparse
import os
import sys

import numpy as np

from minivgg import backend, figures, metrics
from minivgg.device_flags import add_thread_arguments, start_device
from minivgg.errors import UserError, run_cli
from minivgg.evaluate import load_net, posteriors_dense, preprocess, softmax


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minivgg.predict",
        description="Classify images with a VGG checkpoint by dense evaluation (sect. 3.2): "
                    "print the top-5 classes with their probabilities; optionally draw the "
                    "top class's dense score map over each image.")
    p.add_argument("inputs", nargs="+", metavar="[CKPT] IMAGE",
                   help="a checkpoint (of minivgg.train or minivgg.convert), then image "
                        "file(s), any Pillow format; with --weights, images only")
    p.add_argument("--weights", metavar="CKPT",
                   help="the checkpoint, e.g. the real VGG-16 converted by minivgg.convert; "
                        "its preprocessing and class names come with it")
    p.add_argument("--scale", type=int, metavar="Q",
                   help="test scale: smallest image side (default: from the checkpoint's "
                        "training scale, Q = S or (Smin+Smax)/2, sect. 4.1)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print (default: %(default)s)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="average in the mirrored image's posteriors (sect. 3.2; default: on)")
    p.add_argument("--heatmap", metavar="OUT.png",
                   help="draw the top class's probability map over each image (PNG)")
    p.add_argument("--boxes", metavar="OUT.png",
                   help="draw the merged box of each top class on each image (PNG; needs "
                        "--localiser; appendix A.1)")
    p.add_argument("--localiser", nargs="+", metavar="LOC",
                   help="localisation checkpoint(s) of python -m minivgg.localise train")
    p.add_argument("--grid", type=int, metavar="N",
                   help="--boxes from an N x N grid of crops per scale, not the dense view")
    backend.add_device_argument(p)
    add_thread_arguments(p)
    return p


def read_images(paths):
    """Decode every image first, so a bad one fails before any work: [(path, HxWx3 uint8)]."""
    from minivgg.data import read_image
    out = []
    for path in paths:
        try:
            out.append((path, read_image(path)))
        except FileNotFoundError:
            raise UserError(f"image {path} not found") from None
        except Exception as e:  # Pillow raises many kinds for a bad file
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot read image {path}: {msg}") from None
    return out


def top_classes(probs, classes, k=5):
    """[(class name, probability)] of the k most probable classes, most probable first.

    Ties and NaNs ranked by metrics' rule (ties by position), as evaluate ranks them."""
    probs = backend.to_host(probs)
    return [(classes[i], float(probs[i])) for i in metrics.top_classes(probs, k)]


def score_map(model, img, q, meta=None):
    """The dense class score map of img rescaled to Q, soft-maxed per position: (K, P, Q)."""
    from minivgg.data import rescale
    from minivgg.tape import Tensor, no_grad
    x = preprocess(rescale(img, q), meta)
    with no_grad():
        s = model.dense()(Tensor(backend.to_device(x.transpose(2, 0, 1)[None])))
    scores = backend.to_host(s.data)[0]              # (K, P, Q)
    return softmax(np.moveaxis(scores, 0, -1)).transpose(2, 0, 1)


def feature_jump(model):
    """Input pixels between neighbouring score-map positions (32 for VGG: 2^5 poolings)."""
    return [r for r in model.summary() if r.index.startswith("features.")][-1].jump


def heatmap_path(out, index, count):
    if count == 1:
        return out
    stem, ext = os.path.splitext(out)
    return f"{stem}_{index}{ext or '.png'}"


def draw_heatmap(img, prob, crop, jump, path, title):
    """prob (P, Q) over the image: cell (p, q) centred on its crop window, bilinear."""
    plt = figures.pyplot()
    H, W = img.shape[:2]
    P, Q = prob.shape
    # Window p covers pixels [p*jump, p*jump + crop); imshow puts pixel i at [i-.5, i+.5].
    lo = crop / 2 - 0.5 - jump / 2
    extent = (lo, lo + Q * jump, lo + P * jump, lo)
    fig, ax = plt.subplots(figsize=(5, 5 * H / W + 0.6))
    ax.imshow(img, extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    im = ax.imshow(prob, extent=extent, cmap="jet", vmin=0, vmax=1, alpha=0.45,
                   interpolation="bilinear")
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    fig.colorbar(im, ax=ax, fraction=0.046, label="probability")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    figures.save(fig, path, dpi=90)


def _heatmap(net, img, q, best, path):
    from minivgg.data import rescale
    prob = score_map(net.model, img, q, net.meta)[best]
    name = net.meta["classes"][best]
    draw_heatmap(rescale(img, q), prob, net.crop, feature_jump(net.model), path,
                 f"{name}: dense score map, Q={q} ({prob.shape[0]}x{prob.shape[1]} positions)")


def checkpoint_and_images(args):
    """(CKPT, [IMAGE]) from `CKPT IMAGE...` or `--weights CKPT IMAGE...`."""
    if args.weights is not None:
        return args.weights, list(args.inputs)
    if len(args.inputs) < 2:
        raise UserError("give a checkpoint and at least one image: CKPT IMAGE [IMAGE ...] or "
                        "--weights CKPT IMAGE [IMAGE ...]")
    return args.inputs[0], list(args.inputs[1:])


def _localisers(args, net):
    """The --localiser nets (checked against the classifier's classes), or []."""
    if not args.localiser:
        return []
    from minivgg.localise import nets as ln
    locs = ln.load_localisers(args.localiser)
    ln.check_classifiers([net], locs[0].meta["classes"])
    if args.grid is not None and args.grid < 1:
        raise UserError(f"--grid must be at least 1, got {args.grid}")
    return locs


def main(argv=None):
    args = build_parser().parse_args(argv)
    ckpt, paths = checkpoint_and_images(args)
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    for flag in ("heatmap", "boxes"):
        out = getattr(args, flag)
        if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise UserError(f"--{flag} {out}: its folder does not exist")
    if bool(args.boxes) != bool(args.localiser):
        raise UserError("--boxes OUT.png and --localiser LOC.npz go together")
    start_device(args)
    net = load_net(ckpt, [args.scale] if args.scale is not None else None)
    localisers = _localisers(args, net)
    q = net.scales[0]
    images = read_images(paths)
    classes = list(net.meta["classes"])
    for i, (path, img) in enumerate(images):
        probs = posteriors_dense(net.model, img, [q], args.flip, net.meta)
        print(f"{path}  (dense, Q={q}{', flip' if args.flip else ''})")
        top = top_classes(probs, classes, args.top)
        width = max(20, *(len(name) for name, _ in top))  # ImageNet's names run to 30
        for rank, (name, p) in enumerate(top, 1):
            print(f"  {rank}. {name:<{width}} {100 * p:6.2f}%")
        if args.heatmap:
            out = heatmap_path(args.heatmap, i, len(images))
            _heatmap(net, img, q, int(metrics.top_classes(probs, 1)[0]), out)
            print(f"  heat map: {out}")
        if localisers:
            from minivgg.localise.draw import predict_boxes
            out = heatmap_path(args.boxes, i, len(images))
            guesses = predict_boxes(localisers, net, img, out, args.top, args.grid)
            best = guesses[0]
            print(f"  boxes: {out} (top: {classes[best[0]]} at "
                  f"{', '.join(f'{v:.0f}' for v in best[1])})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
