"""ZFNet Fig. 2: for a feature map, the images that excite it most, each beside the
deconvnet projection of its strongest activation (deconv.py), cut to the unit's receptive
field.

"For a given feature map, we show the top 9 activations, each projected separately down to
pixel space, revealing the different structures that excite that map" (Zeiler & Fergus
2013, sect. 4). The strength of an image is the largest activation of the map anywhere
in it (the net's view: rescaled to Q, central crop); images are ranked by it, ties by
their order in the folder.
"""
import numpy as np
from tqdm import tqdm

from minivgg.visualise import deconv
from minivgg.visualise.common import batch, display, feature_rows, receptive_box, view


def strengths(net, source, upto, batch_size=64, progress=True):
    """(N, K): the largest activation of every map of layer `upto` in every image."""
    out = []
    for start in tqdm(range(0, len(source), batch_size), desc="activations", unit="batch",
                      disable=not progress, leave=False, dynamic_ncols=True):
        stop = min(start + batch_size, len(source))
        x = batch([view(source.image(i), net) for i in range(start, stop)], net.meta)
        y = deconv.activations(net.model, x, upto)
        out.append(np.asarray(_host_max(y)))
    return np.concatenate(out)


def _host_max(y):
    from minivgg import backend
    return backend.to_host(y).reshape(y.shape[0], y.shape[1], -1).max(axis=2)


def top_images(strength, k, count):
    """The `count` images whose largest activation of map k is highest, highest first
    (ties by index)."""
    s = strength[:, k]
    return [int(i) for i in np.lexsort((np.arange(len(s)), -s))[:count]]


def best_maps(strength, count):
    """The maps whose strongest activation over all the images is largest (dead maps,
    never positive, tell nothing)."""
    peak = strength.max(axis=0)
    return [int(k) for k in np.lexsort((np.arange(len(peak)), -peak))[:count]]


def projections(net, source, upto, k, images):
    """The projections of map k's strongest activation in each of `images`: a list of
    dicts (index, view, projection (H, W, C), value, position, receptive-field box)."""
    views = [view(source.image(i), net) for i in images]
    px, values, p, q = deconv.project_strongest(net.model, batch(views, net.meta), upto, k)
    rows = feature_rows(net.model)
    out = []
    for j, i in enumerate(images):
        out.append(dict(index=i, view=views[j], projection=px[j].transpose(1, 2, 0),
                        value=float(values[j]), position=(int(p[j]), int(q[j])),
                        box=receptive_box(rows, upto, int(p[j]), int(q[j]))))
    return out


def clipped(box, H, W):
    y0, x0, y1, x1 = box
    return max(0, y0), max(0, x0), min(H, y1), min(W, x1)


def patch(a, box):
    """The part of an image (H, W, ...) inside a receptive-field box, clipped to it."""
    y0, x0, y1, x1 = clipped(box, *a.shape[:2])
    return a[y0:y1, x0:x1]


def shown_projection(pr):
    """A projection cut to its receptive field, 0 at mid-grey, as an RGB image."""
    img = display(patch(pr["projection"], pr["box"]))
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def draw(per_map, layer, path, title):
    """per_map: [(k, [projection dicts])]: a row per map, the projections, then the
    image patches they came from."""
    from minivgg import figures
    plt = figures.pyplot()
    n = max(len(prs) for _, prs in per_map)
    cols = 2 * n + 1
    fig, axes = plt.subplots(len(per_map), cols, squeeze=False,
                             figsize=(0.8 * cols + 0.6, 0.85 * len(per_map) + 0.5),
                             gridspec_kw=dict(width_ratios=[1] * n + [0.2] + [1] * n))
    for r, (k, prs) in enumerate(per_map):
        for c in range(cols):
            axes[r, c].axis("off")
        for j, pr in enumerate(prs):
            axes[r, j].imshow(shown_projection(pr), interpolation="nearest")
            axes[r, n + 1 + j].imshow(patch(pr["view"], pr["box"]), interpolation="nearest")
        axes[r, 0].text(-0.15, 0.5, f"map {k}", transform=axes[r, 0].transAxes, fontsize=7,
                        ha="right", va="center")
    axes[0, n // 2].set_title(f"{layer}: deconvnet projections", fontsize=7)
    axes[0, n + 1 + n // 2].set_title("the image patches", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0.04, 0, 1, 0.92), w_pad=0.1, h_pad=0.2)
    figures.save(fig, path, dpi=80)
