"""Localisation nets at test time (VGG appendix A.1, "Testing"): loading them beside their
classifier, and their boxes, in the original image's pixels, from a central crop
(protocol 1) or from every position of the dense view (protocol 2).

A localisation checkpoint is a VGG whose last layer has 4 G outputs (G = 1 for SCR, the
number of classes for PCR), written by `python -m minivgg.localise train`; its settings
record task "localisation" and the regression. Boxes come out as corners (x0, y0, x1, y1)
in pixel edges of the image as read (data/boxes.py), whatever the test scale.
"""
import numpy as np

from minivgg import backend, data
from minivgg.data.boxes import centre_offsets
from minivgg.errors import UserError
from minivgg.evaluate import Net, crop_grid, load_net, preprocess


def is_localiser(net):
    return (net.meta.get("settings") or {}).get("task") == "localisation"


def load_localisers(paths, scales=None):
    """Localisation checkpoints as evaluate.Nets with their test scales (scales: one list
    for all, or a list per net, None for a net's own); one-line UserError for a
    classifier given here or nets of different classes."""
    per_net = scales if scales and isinstance(scales[0], (list, tuple, type(None))) else \
        [scales] * len(paths)
    nets = [load_net(p, q) for p, q in zip(paths, per_net)]
    for net in nets:
        if not is_localiser(net):
            raise UserError(f"{net.path} is not a localisation net (train one with "
                            "python -m minivgg.localise train)")
        if list(net.meta["classes"]) != list(nets[0].meta["classes"]):
            raise UserError(f"{net.path} and {nets[0].path} were trained on other classes")
    return nets


def load_classifiers(paths, classes):
    """The classification nets that give the top-5 classes and rate the boxes: the same
    class list as the localisers (one-line UserError otherwise)."""
    return check_classifiers([load_net(p) for p in paths], classes)


def check_classifiers(nets, classes):
    """nets, after checking that each is a classifier of `classes` (one-line UserError)."""
    for net in nets:
        if is_localiser(net):
            raise UserError(f"--classifier {net.path} is a localisation net, not a classifier")
        if list(net.meta["classes"]) != list(classes):
            raise UserError(f"--classifier {net.path} was trained on other classes than the "
                            f"localisation nets ({len(net.meta['classes'])} vs {len(classes)}, "
                            "or another order)")
    return nets


def group_of(net, label):
    """The group whose box is the box for class `label`: the class (PCR) or 0 (SCR)."""
    return label if net.meta["settings"]["regression"] == "pcr" else 0


def _to_image(corners, offsets, factors):
    """Crop-frame corners (..., 4) -> the original image's pixels: add each window's
    offset (y, x) in the rescaled image (offsets (..., 2), broadcast), then undo the
    rescale (factors fy, fx)."""
    off = np.asarray(offsets, np.float64)
    shift = np.stack([off[..., 1], off[..., 0], off[..., 1], off[..., 0]], axis=-1)
    fy, fx = factors
    return (corners + shift) / np.array([fx, fy, fx, fy])


def _rescaled(img, q):
    scaled = data.rescale(img, q)
    return scaled, (scaled.shape[0] / img.shape[0], scaled.shape[1] / img.shape[1])


def centre_boxes(net, images, labels, q=None, batch=50):
    """Protocol 1 (Table 8): each image rescaled to Q (the net's first test scale), its
    central crop through the net, the box of its ground-truth class. -> (N, 4) corners."""
    from minivgg.tape import Tensor, no_grad
    q, crop, out = q or net.scales[0], net.crop, []
    for i in range(0, len(images), batch):
        views, where = [], []
        for img in images[i:i + batch]:
            scaled, factors = _rescaled(img, q)
            y, x = centre_offsets(*scaled.shape[:2], crop)
            views.append(preprocess(scaled[y:y + crop, x:x + crop], net.meta))
            where.append(((y, x), factors))
        x_nchw = np.ascontiguousarray(np.stack(views).transpose(0, 3, 1, 2))
        with no_grad():
            codes = backend.to_host(net.model(Tensor(backend.to_device(x_nchw))).data)
        for j, (offset, factors) in enumerate(where):
            g = group_of(net, int(labels[i + j]))
            corners = data.decode(codes[j, 4 * g:4 * g + 4].astype(np.float64), crop)
            out.append(_to_image(corners, offset, factors))
    return np.array(out).reshape(-1, 4)


def jump_of(net):
    """Input pixels between neighbouring positions of the dense map (32 for VGG)."""
    return [r for r in net.model.summary() if r.index.startswith("features.")][-1].jump


def dense_boxes(net, img, q):
    """Protocol 2: the net's dense view over the whole image rescaled to Q. Position (p, r)
    of the output map is the net applied to the crop x crop window at (p, r) * jump
    (sect. 3.2), up to the borders: there the window sees its neighbours where a crop
    sees zero padding. Its 4 G outputs decode to G boxes. -> (G, P, R, 4) corners in the
    original image's pixels."""
    from minivgg.tape import Tensor, no_grad
    scaled, factors = _rescaled(img, q)
    x = preprocess(scaled, net.meta).transpose(2, 0, 1)[None]
    with no_grad():
        out = backend.to_host(net.model.dense()(Tensor(backend.to_device(
            np.ascontiguousarray(x)))).data)[0]  # (4G, P, R)
    G, (P, R) = out.shape[0] // 4, out.shape[1:]
    codes = out.reshape(G, 4, P, R).transpose(0, 2, 3, 1).astype(np.float64)  # (G, P, R, 4)
    step = jump_of(net)
    offsets = np.stack(np.meshgrid(np.arange(P) * step, np.arange(R) * step, indexing="ij"),
                       axis=-1)  # (P, R, 2): each window's (y, x)
    return _to_image(data.decode(codes, net.crop), offsets, factors)


def grid_crops(img, q, crop, n, meta):
    """The n x n regular grid of crop x crop windows of img rescaled to Q (evaluate's
    multi-crop grid, sect. 3.2), preprocessed for `meta`: (crops NCHW, [(y, x)], factors)."""
    scaled, factors = _rescaled(img, q)
    where = crop_grid(*scaled.shape[:2], crop, n)
    x = preprocess(scaled, meta)
    views = np.stack([x[y:y + crop, x0:x0 + crop] for y, x0 in where])
    return np.ascontiguousarray(views.transpose(0, 3, 1, 2)), where, factors


def grid_boxes(net, img, q, n):
    """Protocol 2 with windows instead of the dense view: each window of the n x n grid at
    Q through the net, as in training (each crop zero-padded at its own borders). ->
    (G, n*n, 4) corners in the original image's pixels, windows row-major."""
    from minivgg.tape import Tensor, no_grad
    views, where, factors = grid_crops(img, q, net.crop, n, net.meta)
    with no_grad():
        out = backend.to_host(net.model(Tensor(backend.to_device(views))).data)  # (K, 4G)
    codes = out.reshape(len(where), -1, 4).transpose(1, 0, 2).astype(np.float64)  # (G, K, 4)
    return _to_image(data.decode(codes, net.crop), np.array(where), factors)


__all__ = ["Net", "centre_boxes", "check_classifiers", "dense_boxes", "grid_boxes", "grid_crops",
           "group_of", "is_localiser", "jump_of", "load_classifiers",
           "load_localisers"]
