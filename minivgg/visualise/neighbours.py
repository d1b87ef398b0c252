"""AlexNet Fig. 4, right: the training images nearest to a test image in the last hidden
layer's activations, beside those nearest in raw pixels.

"If two images produce feature activation vectors with a small Euclidean separation, we
can say that the higher levels of the neural network consider them to be similar ...
Notice that at the pixel level, the retrieved training images are generally not close in
L2 to the query images" (AlexNet sect. 6.1). The activations are the penultimate layer's
(fc7 after its ReLU; 4096-D in AlexNet, fc_width here) on the net's view of each image,
as minivgg.features computes them (Appendix B's descriptors, without the averaging over
flips and scales and without the normalisation: AlexNet compares the raw vectors). The
pixels are that same view's, 0-255.

How often the nearest neighbour has the query's class measures the two distances: the
net's space groups by class, pixel space by colour and layout.
"""
import numpy as np

CHUNK = 256  # query rows per distance block: 256 x 5000 float64 is 10 MB


def nearest(queries, database, k, exclude_self=False):
    """The k nearest database rows of every query row by Euclidean distance, nearest
    first, ties broken by the lower index: (indices (Nq, k), distances (Nq, k)).

    exclude_self: queries[i] is database[i] (one set searched against itself), which is
    then left out of its own neighbours."""
    q, d = np.asarray(queries, np.float64), np.asarray(database, np.float64)
    k = min(k, len(d) - (1 if exclude_self else 0))
    idx, dist = np.empty((len(q), k), np.int64), np.empty((len(q), k))
    dd = (d ** 2).sum(axis=1)
    for start in range(0, len(q), CHUNK):
        block = q[start:start + CHUNK]
        d2 = (block ** 2).sum(axis=1)[:, None] + dd[None, :] - 2 * block @ d.T
        np.maximum(d2, 0, out=d2)  # rounding can make a zero distance slightly negative
        if exclude_self:
            d2[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        for r, row in enumerate(d2):
            idx[start + r] = _smallest(row, k)
        dist[start:start + len(block)] = np.sqrt(np.take_along_axis(
            d2, idx[start:start + len(block)], axis=1))
    return idx, dist


def _smallest(row, k):
    """Indices of the k smallest values, ascending, ties by index: every value up to the
    k-th smallest is a candidate, so a tie across the cut cannot lose the lower index."""
    kth = np.partition(row, k - 1)[k - 1]
    cand = np.flatnonzero(row <= kth)
    return cand[np.lexsort((cand, row[cand]))][:k]


def match_rates(idx, query_labels, db_labels):
    """(nearest-neighbour class match rate, mean match rate over the k neighbours) over
    the queries whose label is known; None when none is."""
    known = query_labels >= 0
    if not known.any():
        return None, None
    same = db_labels[idx[known]] == query_labels[known, None]
    return float(same[:, 0].mean()), float(same.mean())


def draw(rows, path, title):
    """rows: [(query image, [(image, same class?)] by features, [...] by pixels)]."""
    from minivgg import figures
    plt = figures.pyplot()
    k = len(rows[0][1])
    cols = 2 * k + 2  # query, k by features, a gap, k by pixels
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.85 * cols, 0.95 * len(rows) + 0.5),
                             squeeze=False, gridspec_kw=dict(
                                 width_ratios=[1] * (k + 1) + [0.25] + [1] * k))
    for r, (query, by_feat, by_pix) in enumerate(rows):
        cells = [(query, None)] + by_feat + [(None, None)] + by_pix
        for c, (img, same) in enumerate(cells):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.axis("off")
                continue
            ax.imshow(img)
            colour = "black" if same is None else "tab:green" if same else "tab:red"
            for s in ax.spines.values():
                s.set_color(colour)
                s.set_linewidth(2.5 if same is not None else 1)
    axes[0, 0].set_title("query", fontsize=7)
    axes[0, 1 + k // 2].set_title("nearest in the last hidden layer", fontsize=7)
    axes[0, k + 2 + k // 2].set_title("nearest in pixels", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93), w_pad=0.1, h_pad=0.2)
    figures.save(fig, path, dpi=80)
