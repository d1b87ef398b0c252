"""ZFNet's feature evolution (Zeiler & Fergus 2013, sect. 4.1, Fig. 4): the features of
one training run at several epochs, a row per epoch.

`python -m minivgg.train ... --snapshot-epochs 0 1 2 5 10` keeps the weights after those
epochs in OUT/snapshots/epoch-EEE.npz (0: the initial weights). This draws, for every
snapshot, the first layer's kernels (as `filters` does, with their colourfulness) and, with
--layer, ZFNet's own picture: for each chosen map, the strongest activation over all the
images, projected to pixels by the deconvnet, at every epoch. "The lower layers of the
model can be seen to converge within a few epochs. However, the upper layers only develop
after a considerable number of epochs" (ZFNet sect. 4.1).
"""
import glob
import os
import re

import numpy as np

from minivgg import figures
from minivgg.errors import UserError
from minivgg.visualise.filters import colourfulness, kernel_image, permutation_p


def snapshots(run_dir):
    """[(epoch, path)] of RUN_DIR/snapshots/epoch-EEE.npz, by epoch; none is an error."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory {run_dir} does not exist")
    found = []
    for path in glob.glob(os.path.join(run_dir, "snapshots", "epoch-*.npz")):
        m = re.fullmatch(r"epoch-(\d+)\.npz", os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    if not found:
        raise UserError(f"no snapshots in {os.path.join(run_dir, 'snapshots')}: train with "
                        "--snapshot-epochs E [E ...] --out RUN_DIR first")
    return sorted(found)


def change(first, now):
    """What training added to the first layer since epoch 0 (first = (0, measurement)):
    the colourfulness of w - w_0 per tower, its permutation p, and ||w - w_0|| / ||w_0||,
    on the kernels as they act on pixels. {} when there is no epoch-0 snapshot, or at it.
    The initial kernels are random, so a trained kernel's colourfulness mixes what was
    learned with what it started from; the change is what was learned."""
    (e0, m0), (e, m) = first, now
    if e0 != 0 or e == 0:
        return {}
    d = m["filters"] - m0["filters"]
    scores = colourfulness(d)
    means = [None if np.isnan(scores).any() else float(scores[g].mean())
             for g in m["groups"]]
    return dict(change=dict(tower_means=means, towers_differ_p=permutation_p(scores,
                                                                            m["groups"]),
                            relative_size=float(np.linalg.norm(d) /
                                                np.linalg.norm(m0["filters"]))))


def draw_filters(rows, path, title, count):
    """rows: [(epoch, filter measurement)]: the first `count` kernels of every epoch."""
    plt = figures.pyplot()
    n = min(count, len(rows[0][1]["filters"]))
    fig, axes = plt.subplots(len(rows), n, figsize=(0.5 * n + 1.3, 0.55 * len(rows) + 0.5),
                             squeeze=False)
    for r, (epoch, m) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(kernel_image(m["filters"][c]), interpolation="nearest")
            axes[r, c].axis("off")
        mean = np.nanmean(m["scores"]) if not np.isnan(m["scores"]).all() else None
        label = f"epoch {epoch}" + (f"\n{mean:.2f}" if mean is not None else "")
        axes[r, 0].text(-0.2, 0.5, label, transform=axes[r, 0].transAxes, fontsize=7,
                        ha="right", va="center")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0.1, 0, 1, 0.94), w_pad=0.1, h_pad=0.1)
    figures.save(fig, path, dpi=80)


def draw_projections(columns, maps, layer, path, title):
    """columns: [(epoch, {k: projection dict})]: a row per map, a column per epoch, each
    the projection over the whole view (ZFNet crops to the receptive field; a view of
    32 pixels is about one receptive field of a deep layer anyway)."""
    from minivgg.visualise.common import display
    plt = figures.pyplot()
    fig, axes = plt.subplots(len(maps), len(columns), squeeze=False,
                             figsize=(0.9 * len(columns) + 0.8, 0.9 * len(maps) + 0.6))
    for c, (epoch, prs) in enumerate(columns):
        axes[0, c].set_title(f"epoch {epoch}", fontsize=7)
        for r, k in enumerate(maps):
            img = display(prs[k]["projection"])  # the whole view: cells of one size
            axes[r, c].imshow(np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img,
                              interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    for r, k in enumerate(maps):
        axes[r, 0].set_ylabel(f"map {k}", fontsize=7)
    fig.suptitle(f"{title}\n{layer}: the strongest activation over the images, projected",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9), w_pad=0.1, h_pad=0.1)
    figures.save(fig, path, dpi=80)
