"""The paper's measures (sect. 4): top-1 and top-5 error, computed on the device.

One ranking rule everywhere (training's accuracy, evaluate's errors, confusion matrix and
top-5 lists, predict's top classes): classes in descending order of score, ties broken by
position -- the lower class index first, as a stable sort gives -- and NaN below every
number. So an all-equal score vector (an untrained or dead net) puts class 0 first: it is
right for label 0 only, and scores chance, not 100%.
"""
import numpy as np

from minivgg import backend


def top_k_correct(probs, labels, k):
    """How many rows rank their label among the first k: a count that stays on probs'
    device (a 0-d CuPy array on cuda, a NumPy integer on the host).

    probs (N, classes), labels (N,) int, both on the same device; no host sync. The
    ranking is the module's rule (ties by position, NaN last). k larger than the number
    of classes counts every row.
    """
    _check(probs, labels, k)
    xp = backend.array_module(probs)
    labels = labels.reshape(-1, 1).astype(np.int64)
    label_score = xp.take_along_axis(probs, labels, axis=1)          # (N, 1)
    classes = xp.arange(probs.shape[1]).reshape(1, -1)
    return (_ahead(xp, probs, label_score, classes < labels).sum(axis=1) < k).sum()


def _ahead(xp, probs, label_score, before):
    """(N, classes): does each class rank ahead of the row's label?

    A higher score does, and so does an equal one at a lower index (`before`). NaN ranks
    below every number and NaNs among themselves by position: under a NaN label score
    every number is ahead, and the NaNs before it."""
    by_score = (probs > label_score) | ((probs == label_score) & before)
    nan_label = xp.isnan(label_score)
    return xp.where(nan_label, ~xp.isnan(probs) | before, by_score)


def _check(probs, labels, k):
    if backend.is_device_array(probs) != backend.is_device_array(labels):
        raise ValueError(f"top_k_correct: probs on the {backend.location(probs)} but labels on "
                         f"the {backend.location(labels)}; put both on one device")
    if len(probs.shape) != 2 or labels.size != probs.shape[0]:
        raise ValueError(f"top_k_correct: probs of shape {tuple(probs.shape)} and labels of "
                         f"shape {tuple(labels.shape)}: need (N, classes) and (N,)")
    if k < 1:
        raise ValueError(f"top_k_correct: k must be at least 1, got {k}")


def top_classes(probs, k):
    """(N, min(k, classes)) class indices of each row, best first, by the module's rule.

    Host (NumPy) scores; for reports, not for the training loop."""
    probs = np.asarray(probs)
    return np.argsort(-probs, axis=-1, kind="stable")[..., :k]
