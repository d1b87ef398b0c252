"""The two testing protocols of VGG appendix A.1, measured as in A.2 (a box is correct when
its IoU with the ground truth exceeds 0.5, the ILSVRC criterion).

    protocol 1 (Table 8)  the central crop, the box of the ground-truth class: the
                          localisation error of the regression alone.
    protocol 2 (Table 9)  the top-5 classes of the classification net(s); for each, every
                          box the localisation nets predict densely over the whole image,
                          at every test scale, pooled over the nets (their union), merged
                          greedily and rated by the classifier's score of that class at
                          each box's window (merge.py). An image is correct when one of its
                          five (class, box) guesses has its class and IoU > 0.5: the top-5
                          localisation error. The first guess alone gives a top-1 error.

The windows of protocol 2 are the dense view's positions (the paper's), or, with grid=n,
an n x n grid of crops at each scale (evaluate's multi-crop grid), each through the FC
net as in training. Not in the paper: for nets whose crop equals the dense map's step
(32 px crops, a 32 px jump) the dense positions tile the image without overlap and every
one of them is a border, where the dense view and a crop see different things; a grid
of overlapping crops is the sliding window that the dense view stands for at 224 px.
"""
import numpy as np
from tqdm import tqdm

from minivgg import backend, data, metrics
from minivgg.errors import UserError
from minivgg.evaluate import fuse, posteriors, softmax
from minivgg.localise.merge import THRESHOLD, best_box
from minivgg.localise.nets import centre_boxes, dense_boxes, grid_boxes, grid_crops, group_of
from minivgg.predict import score_map

IOU_CORRECT = 0.5


def protocol1(net, dataset, q=None, progress=True):
    """-> dict(boxes (N, 4), iou (N,), error): one net, central crops, ground-truth class."""
    images, labels = [], []
    for i in tqdm(range(len(dataset)), desc="reading", unit="img", disable=not progress,
                  leave=False):
        img, label = dataset[i]
        images.append(img)
        labels.append(label)
    boxes = centre_boxes(net, images, np.array(labels), q)
    overlap = data.iou(boxes, dataset.boxes)
    return dict(boxes=boxes, iou=overlap, error=float(np.mean(overlap <= IOU_CORRECT)))


def window_scores(classifiers, img, q, shape):
    """(classes, P, R) soft-max class probabilities at each window of the dense map at Q,
    averaged over the classifiers: what rates each box. Their maps must line up with the
    localisation net's (the same crop size and pooling), which is checked."""
    maps = [score_map(c.model, img, q, c.meta) for c in classifiers]
    for c, m in zip(classifiers, maps):
        if m.shape[1:] != tuple(shape):
            raise UserError(f"at Q={q} the classifier {c.path} gives a {m.shape[1]}x"
                            f"{m.shape[2]} score map and the localisation net a {shape[0]}x"
                            f"{shape[1]} one: use a classifier of the same crop size")
    return np.mean(maps, axis=0)


def grid_scores(classifiers, img, q, n, crop):
    """(classes, n*n): the classifiers' soft-max on each window of the n x n grid at Q,
    averaged; the windows must be their input size (checked)."""
    from minivgg.tape import Tensor, no_grad
    out = []
    for c in classifiers:
        if c.crop != crop:
            raise UserError(f"the classifier {c.path} takes {c.crop}-pixel crops and the "
                            f"localisation net {crop}-pixel ones: use one of the same crop size")
        views, _, _ = grid_crops(img, q, crop, n, c.meta)
        with no_grad():
            out.append(softmax(c.model(Tensor(backend.to_device(views))).data))
    return np.mean(out, axis=0).T


def rated_boxes(net, classifiers, img, q, grid=None):
    """(boxes (G, K, 4), rates (classes, K)): the K windows' boxes of one net at Q, and the
    classifiers' class probabilities on the same windows: the dense view's positions, or
    with grid=n the n x n grid of crops."""
    if grid is None:
        boxes = dense_boxes(net, img, q)  # (G, P, R, 4)
        rates = window_scores(classifiers, img, q, boxes.shape[1:3])
        return boxes.reshape(len(boxes), -1, 4), rates.reshape(len(rates), -1)
    return grid_boxes(net, img, q, grid), grid_scores(classifiers, img, q, grid, net.crop)


def candidate_boxes(localisers, classifiers, img, classes, grid=None):
    """{class: (boxes (n, 4), scores (n,))}: every box of every localiser at each of its
    test scales (their union, A.1), each with its window's score of that class."""
    out = {c: ([], []) for c in classes}
    for net in localisers:
        for q in net.scales:
            boxes, rates = rated_boxes(net, classifiers, img, q, grid)
            for c in classes:
                out[c][0].append(boxes[group_of(net, c)])
                out[c][1].append(rates[c])
    return {c: (np.concatenate(b), np.concatenate(s)) for c, (b, s) in out.items()}


def localise(localisers, classifiers, img, top=5, threshold=THRESHOLD, grid=None):
    """One image's guesses: [(class, box corners, merged score)] for the `top` classes of
    the fused classifiers' posteriors (evaluate.posteriors: dense, flips, their own test
    scales), best class first; and the posteriors."""
    probs = fuse([posteriors(c, img, "dense") for c in classifiers])
    classes = [int(c) for c in metrics.top_classes(probs, top)]
    candidates = candidate_boxes(localisers, classifiers, img, classes, grid)
    guesses = [(c, *best_box(*candidates[c], threshold)) for c in classes]
    return guesses, probs


def protocol2(localisers, classifiers, dataset, top=5, threshold=THRESHOLD, grid=None,
              progress=True):
    """-> dict(guesses [[(class, box, score)] per image], top5_error, top1_error,
    class_top5_error): A.2's top-5 localisation error, and the classification alone."""
    guesses, hit5, hit1, cls5 = [], [], [], []
    for i in tqdm(range(len(dataset)), desc="localising (dense)", unit="img",
                  disable=not progress, dynamic_ncols=True):
        img, label = dataset[i]
        g, _ = localise(localisers, classifiers, img, top, threshold, grid)
        ok = [c == label and data.iou(box, dataset.boxes[i]) > IOU_CORRECT for c, box, _ in g]
        guesses.append(g)
        hit5.append(any(ok))
        hit1.append(ok[0])
        cls5.append(any(c == label for c, _, _ in g))
    return dict(guesses=guesses, top5_error=1 - float(np.mean(hit5)),
                top1_error=1 - float(np.mean(hit1)), class_top5_error=1 - float(np.mean(cls5)))
