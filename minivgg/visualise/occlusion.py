"""ZFNet's occlusion sensitivity (Zeiler & Fergus 2013, sect. 4.2, Fig. 7): is the net
looking at the object, or at its surroundings?

A grey square is slid over the image; at every position the net classifies the occluded
image, and the map of the correct class's probability shows where the evidence is: it
drops where the square hides what the net relies on. Beside it, the most probable class
at every position (ZFNet's panel (e)). The grey is the training set's mean colour: 0
after preprocessing, what a mean-subtracted input holds where it carries no signal.

Positions: the square's top-left corner at 0, stride, 2 stride, ... while the square
fits in the view (the crop x crop window the net classifies), so the map has
(crop - size) // stride + 1 cells a side. Size 0 hides nothing: every cell is then the
unoccluded probability (a check of the machinery).
"""
import numpy as np

from minivgg import backend
from minivgg.errors import UserError
from minivgg.visualise.common import probabilities


def check(size, stride, crop):
    """The square and its stride, checked against the view (one-line errors)."""
    if size < 0:
        raise UserError(f"--size must be at least 0, got {size}")
    if stride < 1:
        raise UserError(f"--stride must be at least 1, got {stride}")
    if size > crop:
        raise UserError(f"--size {size} is larger than the image the net sees "
                        f"({crop}x{crop}: the crop at the test scale)")


def starts(crop, size, stride):
    """The square's top-left corners along one side."""
    return list(range(0, crop - size + 1, stride))


def occluded(x, size, corners):
    """Copies of one preprocessed image x (C, H, W) on the host, each with the square of
    side `size` at one (y, x) corner set to 0 (the mean colour): (len(corners), C, H, W)."""
    out = np.repeat(x[None], len(corners), axis=0)
    for i, (y0, x0) in enumerate(corners):
        out[i, :, y0:y0 + size, x0:x0 + size] = 0
    return out


def sensitivity(net, x, label, size, stride, batch=64):
    """The occlusion maps of one image x (1, C, H, W) on the device: (probability of
    `label` (P, Q), most probable class (P, Q), its probability (P, Q)), float64/int."""
    host = backend.to_host(x)[0]
    ys = starts(host.shape[1], size, stride)
    xs = starts(host.shape[2], size, stride)
    corners = [(a, b) for a in ys for b in xs]
    probs = np.concatenate([
        probabilities(net, backend.to_device(occluded(host, size, corners[i:i + batch])))
        for i in range(0, len(corners), batch)])
    shape = (len(ys), len(xs))
    best = probs.argmax(axis=1)
    return (probs[:, label].reshape(shape), best.reshape(shape),
            probs[np.arange(len(probs)), best].reshape(shape))


def cell_extent(P, Q, size, stride):
    """imshow's extent putting cell (i, j) on the centre of its square, in view pixels."""
    c = (size - 1) / 2
    return (c - stride / 2, c + (Q - 0.5) * stride, c + (P - 0.5) * stride, c - stride / 2)


def draw(rows, classes, size, stride, path, title):
    """rows: [(view, probability map, class map, label name, unoccluded p)]."""
    from minivgg import figures
    plt = figures.pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.4, 2.2 * len(rows) + 0.4),
                             squeeze=False)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for r, (img, prob, best, name, p0) in enumerate(rows):
        H, W = img.shape[:2]
        ext = cell_extent(*prob.shape, size, stride)
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(f"{name} (p = {p0:.2f})", fontsize=7)
        im = axes[r, 1].imshow(prob, extent=ext, vmin=0, vmax=1, cmap="jet")
        axes[r, 1].set_title(f"p({name}), {size}px square", fontsize=7)
        fig.colorbar(im, ax=axes[r, 1], fraction=0.046)
        axes[r, 2].imshow(best % cmap.N, extent=ext, cmap=cmap, vmin=0, vmax=cmap.N - 1,
                          interpolation="nearest")
        axes[r, 2].set_title("the most probable class", fontsize=7)
        patches = [plt.Rectangle((0, 0), 1, 1, color=cmap(c % cmap.N))
                   for c in np.unique(best)]
        axes[r, 2].legend(patches, [classes[c] for c in np.unique(best)], fontsize=6,
                          loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        for ax in axes[r]:
            ax.set_xlim(-0.5, W - 0.5)
            ax.set_ylim(H - 0.5, -0.5)
            ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    figures.save(fig, path, dpi=80)
