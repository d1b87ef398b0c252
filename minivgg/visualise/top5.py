"""AlexNet Fig. 4, left: test images with the five labels the net finds most probable.

"The correct label is written under each image, and the probability assigned to the
correct label is also shown with a red bar (if it happens to be in the top 5)" (AlexNet
sect. 6.1). The posteriors are those `python -m minivgg.evaluate` and `predict` compute:
dense evaluation at the checkpoint's test scale Q with the mirror image (VGG sect. 3.2),
or --method multi-crop / both.
"""
import numpy as np

from minivgg import metrics
from minivgg.visualise.common import class_name


def rank(probs, label, k=5):
    """The k most probable classes (ties by index), and the true label's rank (0 = top;
    None when the label is unknown)."""
    order = metrics.top_classes(probs[None], len(probs))[0]
    where = None if label < 0 else int(np.flatnonzero(order == label)[0])
    return [int(c) for c in order[:k]], where


def entry(path, label, probs, classes, k=5):
    """One image's numbers for the JSON."""
    top, where = rank(probs, label, k)
    return dict(path=path, label=class_name(classes, label),
                top=[[classes[c], float(probs[c])] for c in top],
                label_probability=None if label < 0 else float(probs[label]),
                label_rank=None if where is None else where + 1)


def draw(shown, entries, path, title, columns=4):
    """Each image over its top-5 bars; the true label under the image, its bar red."""
    from minivgg import figures
    plt = figures.pyplot()
    rows = -(-len(shown) // columns)
    cols = min(columns, len(shown))
    fig, axes = plt.subplots(2 * rows, cols, figsize=(2.3 * cols, 3.1 * rows),
                             gridspec_kw=dict(height_ratios=[1.25, 1] * rows), squeeze=False)
    for i in range(rows * cols):
        ax_img, ax_bar = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        ax_img.axis("off")
        if i >= len(shown):
            ax_bar.axis("off")
            continue
        e = entries[i]
        ax_img.imshow(shown[i])
        ax_img.set_title(e["label"], fontsize=8, pad=2)
        _bars(ax_bar, e)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    figures.save(fig, path, dpi=80)


def _bars(ax, e):
    names = [n for n, _ in e["top"]][::-1]
    probs = [p for _, p in e["top"]][::-1]
    colours = ["tab:red" if n == e["label"] else "tab:blue" for n in names]
    ax.barh(range(len(names)), probs, color=colours, height=0.7)
    ax.set_xlim(0, 1)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.tick_params(axis="x", labelsize=6)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
