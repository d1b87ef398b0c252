"""How hard is a data set? A linear classifier (ridge regression) on raw pixels.

Measured on the default shapes set (shapes-v3-64px-5000-1000-seed0): 16x16 pixels, 16.0%
val top-1 (44.3% train); chance is 10%.
"""
import numpy as np

from minivgg.data.folders import ImageFolder
from minivgg.data.transforms import center_crop, rescale


def _pixels(ds, side):
    x = np.empty((len(ds), side * side * 3), dtype=np.float64)
    for i in range(len(ds)):
        img, _ = ds[i]
        x[i] = rescale(center_crop(img, min(img.shape[:2])), side).reshape(-1) / 255.0
    return x, np.asarray(ds.targets)


def linear_baseline(root, side=16, lambdas=(1e-2, 1e-1, 1, 10, 100, 1000)):
    """Val top-1 of closed-form ridge regression on raw pixels (one-hot targets).

    Images are centre-cropped square, downsampled to side x side, scaled to [0, 1] and
    centred; W = (X^T X + lambda I)^-1 X^T Y for each lambda, and the best val accuracy is
    returned (choosing lambda on val flatters the baseline, which is the safe direction).
    Returns dict(accuracy, lambda, chance, train_accuracy).
    """
    train, val = ImageFolder(root, "train"), ImageFolder(root, "val")
    xt, yt = _pixels(train, side)
    xv, yv = _pixels(val, side)
    mu = xt.mean(axis=0)
    xt, xv = xt - mu, xv - mu
    k = len(train.classes)
    Y = np.eye(k)[yt] - 1.0 / k
    gram, xty = xt.T @ xt, xt.T @ Y
    best = None
    for lam in lambdas:
        W = np.linalg.solve(gram + lam * np.eye(len(gram)), xty)
        acc = float(np.mean((xv @ W).argmax(axis=1) == yv))
        if best is None or acc > best["accuracy"]:
            tr = float(np.mean((xt @ W).argmax(axis=1) == yt))
            best = dict(accuracy=acc, train_accuracy=tr, lam=lam, chance=1.0 / k)
    return best
