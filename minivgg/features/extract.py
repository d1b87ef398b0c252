"""Very deep image descriptors (Appendix B, "Generalisation of very deep features").

For one net and one image:

    1. rescale the image so its smallest side is Q (sect. 3.2) and pre-process it as the
       net was trained (evaluate.preprocess: the checkpoint's mean, std, ...);
    2. apply the net densely -- every FC layer as a convolution (model.dense(), sect. 3.2)
       -- minus its last layer: the output is the penultimate layer's map (fc7 after its
       ReLU), fc_width channels (4096 in the paper) at every position;
    3. global average pooling over the positions: one fc_width-D descriptor;
    4. average it with the descriptor of the horizontally flipped image (flip=True);
    5. over several Q: stack (concatenate, in the order the scales are given) or average;
    6. L2-normalise.

Several nets (late fusion, Table 11's "Net-D & Net-E"): each net's descriptor is
L2-normalised as above, then they are stacked in the order the nets are given and the
stack is L2-normalised again (i.e. divided by sqrt(number of nets)), so every net weighs
the same and the result has norm 1. A descriptor that is all zeros (every ReLU dead)
stays zero.

Images that share a size after rescaling go through the net together, `batch_size` at
a time (with their mirrors: 2 x batch_size views); sizes are computed from the image
sizes first, so a set of photos of many aspect ratios never holds more than one batch.
"""
import numpy as np

from minivgg import backend, evaluate, ops
from minivgg.data import center_crop, rescale
from minivgg.errors import UserError
from minivgg.tape import Tensor, no_grad

AGGREGATES = ("stack", "average")


def penultimate(dense, x):
    """The global-average-pooled penultimate map: x (N, 3, H, W) on the device ->
    (N, fc_width) on the device. dense: model.dense(); its last layer (the class scores,
    fc8) is left out, so the map is fc7's after its ReLU (Appendix B)."""
    layers = list(dense.classifier)[:-1]
    with no_grad():
        h = dense.features(Tensor(x))
        for layer in layers:
            h = layer(h)
        return ops.global_avg_pool(h).data


def rescaled_shape(h, w, q):
    """(H, W) of an h x w image rescaled so its smallest side is q, as data.rescale does
    it (the other side rounded), computed without touching pixels: it groups batches."""
    if h <= w:
        return q, max(1, round(w * q / h))
    return max(1, round(h * q / w)), q


def scale_descriptors(net, dense, images, q, flip=True):
    """(B, fc_width) float64 host descriptors of same-size images at one scale Q:
    steps 1-4 of the module docstring (not normalised)."""
    x = np.stack([evaluate.preprocess(rescale(img, q), net.meta) for img in images])
    if flip:  # the mirrors in the same batch: they have the same size
        x = np.concatenate([x, x[:, :, ::-1]])
    g = backend.to_host(penultimate(dense, backend.to_device(x.transpose(0, 3, 1, 2))))
    g = g.astype(np.float64)
    B = len(images)
    return (g[:B] + g[B:]) / 2 if flip else g


def l2_normalise(x):
    """Rows divided by their L2 norm; a row of zeros stays zeros."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def batches(shapes, batch_size):
    """Lists of at most batch_size indices whose images share a shape (first-seen order
    of the shapes, indices ascending within each)."""
    groups = {}
    for i, s in enumerate(shapes):
        groups.setdefault(tuple(s), []).append(i)
    for idx in groups.values():
        for k in range(0, len(idx), batch_size):
            yield idx[k:k + batch_size]


def net_descriptors(net, images, sizes, aggregate="stack", flip=True, batch_size=32,
                    bar=None):
    """One net's L2-normalised descriptors of every image: (N, D * len(scales)) stacked,
    (N, D) averaged; and the blocks [(name, dim)] they are made of, in column order.

    images: a sequence, images[i] -> HxWx3 uint8 (a dataset's images); sizes: their
    (H, W). net: an evaluate.Net (model, meta, scales).
    """
    if aggregate not in AGGREGATES:
        raise UserError(f"unknown aggregate {aggregate!r}: choose one of "
                        f"{', '.join(AGGREGATES)}")
    dense, per_scale = net.model.dense(), []
    for q in net.scales:
        out = None
        for idx in batches([rescaled_shape(h, w, q) for h, w in sizes], batch_size):
            d = scale_descriptors(net, dense, [images[i] for i in idx], q, flip)
            if out is None:
                out = np.empty((len(sizes), d.shape[1]), dtype=np.float64)
            out[idx] = d
            if bar is not None:
                bar.update(len(idx))
        per_scale.append(out)
    D = per_scale[0].shape[1]
    if aggregate == "stack":
        blocks = [(f"{net.path} Q={q}", D) for q in net.scales]
        return l2_normalise(np.concatenate(per_scale, axis=1)), blocks
    name = f"{net.path} Q={','.join(str(q) for q in net.scales)} averaged"
    return l2_normalise(np.mean(per_scale, axis=0)), [(name, D)]


def descriptors(nets, images, sizes, aggregate="stack", flip=True, batch_size=32, bar=None):
    """The image descriptors of Appendix B from one net or several (late fusion):
    (N, D) float32 with unit rows, and its blocks [(name, dim)] in column order."""
    if not len(images):
        raise UserError("no images to describe")
    parts, blocks = [], []
    for net in nets:
        d, b = net_descriptors(net, images, sizes, aggregate, flip, batch_size, bar)
        parts.append(d)
        blocks += b
    return l2_normalise(np.concatenate(parts, axis=1)).astype(np.float32), blocks


def pixels(img, side=16):
    """The raw-pixel baseline's vector: the image's central square, rescaled to side x
    side, flattened (side * side * 3 uint8) -- as data.baseline measures a data set."""
    return rescale(center_crop(img, min(img.shape[:2])), side).reshape(-1)
