"""The first conv layer's kernels as images (AlexNet Fig. 3), and how colourful each is.

AlexNet sect. 6.1: "The kernels on GPU 1 are largely color-agnostic, while the kernels on
GPU 2 are largely color-specific. This kind of specialization occurs during every run."
Its towers are the groups of conv2 (groups=2): conv1's first K/2 kernels feed tower 1,
the others tower 2, so a first layer is split into as many towers as the next conv layer
has groups.

Colourfulness of a kernel w (3 x R x S over R, G, B): how much of it is not the same in
the three channels, relative to its size,

    colourfulness(w) = || w - mean_c(w) || / || w ||      in [0, 1]

0 for a kernel that weighs R, G and B alike (it sees brightness only: colour-agnostic), 1
for one whose channels cancel at every pixel (pure colour opponency, e.g. red minus green).
A random kernel (independent channels) scores about sqrt(2/3) = 0.82. It is measured on
the kernel as it acts on RGB pixels: the weights of a channel divided by the std the
inputs were divided by (and the channels put back in RGB order for a BGR net), so that
"the same in the three channels" means the same in pixel colours.
"""
import numpy as np

from minivgg import backend, nn
from minivgg.visualise.common import display, feature_rows

RANDOM_KERNEL = float(np.sqrt(2 / 3))  # E of the score for independent channels


def first_conv(model):
    """The first conv layer (in definition order, so a net that is not a chain too): its
    weight (K, C, R, S) as a host array, and its name in the summary."""
    names = {r.index: r.name for r in model.summary()}
    for index, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return backend.to_host(m.weight.data).astype(np.float64), names.get(index, index)
    raise ValueError(f"config {model.config} has no conv layer")


def towers(model):
    """How many towers the first layer's kernels feed: the groups of the next conv (of a
    chain; a branching net's first layer feeds one)."""
    if not isinstance(getattr(model, "features", None), nn.Sequential):
        return 1
    convs = [r for r in feature_rows(model) if r.kind == "conv"]
    return convs[1].spec.groups if len(convs) > 1 else 1


def pixel_filters(w, meta):
    """The kernels as they act on RGB pixels 0-255: (K, C, R, S) float64, channels RGB."""
    from minivgg.checkpoint import preprocessing
    p = preprocessing(meta)
    if w.shape[1] != 3:
        return w * p["scale"]
    std = np.ones(3) if p["std"] is None else np.asarray(p["std"], np.float64)
    w = w * (p["scale"] / std)[None, :, None, None]
    return w[:, ::-1] if p["channels"] == "BGR" else w


def colourfulness(f):
    """(K,) scores of kernels f (K, 3, R, S); NaN for kernels of another channel count."""
    if f.shape[1] != 3:
        return np.full(len(f), np.nan)
    grey = f.mean(axis=1, keepdims=True)
    norm = np.sqrt((f ** 2).sum(axis=(1, 2, 3)))
    spread = np.sqrt(((f - grey) ** 2).sum(axis=(1, 2, 3)))
    return np.where(norm > 0, spread / np.where(norm > 0, norm, 1), 0.0)


def tower_split(K, T):
    """The kernel indices of each of T towers (contiguous, as the groups split them)."""
    return [list(range(t * K // T, (t + 1) * K // T)) for t in range(T)]


def permutation_p(scores, groups, n=20000, seed=0):
    """Two towers: the chance that a random split of the same scores into groups of the
    same sizes has a difference of means at least as large (two-sided). None otherwise."""
    if len(groups) != 2 or np.isnan(scores).any():
        return None
    rng = np.random.default_rng(seed)
    a = len(groups[0])
    observed = abs(scores[groups[0]].mean() - scores[groups[1]].mean())
    perms = np.argsort(rng.random((n, len(scores))), axis=1)
    s = scores[perms]
    diffs = np.abs(s[:, :a].mean(axis=1) - s[:, a:].mean(axis=1))
    return float((1 + np.sum(diffs >= observed - 1e-12)) / (n + 1))


def measure(model, meta):
    """Everything the figure and the JSON show: filters, scores, towers, means."""
    w, layer = first_conv(model)
    f = pixel_filters(w, meta)
    scores = colourfulness(f)
    groups = tower_split(len(f), towers(model))
    means = [None if np.isnan(scores).any() else float(scores[g].mean()) for g in groups]
    return dict(layer=layer, filters=f, scores=scores, groups=groups, means=means,
                p_value=permutation_p(scores, groups))


def summary(m):
    """The JSON of a measurement (without the filters themselves)."""
    return dict(layer=m["layer"], shape=list(m["filters"].shape),
                colourfulness=[None if np.isnan(s) else round(float(s), 4)
                               for s in m["scores"]],
                towers=[dict(filters=[g[0], g[-1] + 1], mean_colourfulness=mean)
                        for g, mean in zip(m["groups"], m["means"])],
                towers_differ_p=m["p_value"], random_kernel=RANDOM_KERNEL)


def kernel_image(f):
    """One kernel (C, R, S) as an image (R, S, 3): per-kernel scaling, 0 is mid-grey."""
    img = display(f.transpose(1, 2, 0))
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def draw(m, path, title, columns=12):
    """The kernels in a grid, a block of rows per tower, each kernel's score under it."""
    from minivgg import figures
    plt = figures.pyplot()
    blocks = [(t, g[i:i + columns]) for t, g in enumerate(m["groups"])
              for i in range(0, len(g), columns)]
    cols = min(columns, max(len(b) for _, b in blocks))
    fig, axes = plt.subplots(len(blocks), cols, squeeze=False,
                             figsize=(0.62 * cols + 0.9, 0.8 * len(blocks) + 0.5))
    for r, (t, idx) in enumerate(blocks):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(kernel_image(m["filters"][idx[c]]), interpolation="nearest")
                s = m["scores"][idx[c]]
                if not np.isnan(s):
                    ax.set_title(f"{s:.2f}", fontsize=6, pad=1)
        if len(m["groups"]) > 1 and (r == 0 or blocks[r - 1][0] != t):
            mean = m["means"][t]
            label = f"tower {t + 1}" + (f"\nmean {mean:.2f}" if mean is not None else "")
            axes[r, 0].text(-0.3, 0.5, label, transform=axes[r, 0].transAxes, fontsize=7,
                            ha="right", va="center")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0.06 if len(m["groups"]) > 1 else 0, 0, 1, 0.95))
    figures.save(fig, path, dpi=80)
