"""The paper's measures (sect. 4): top-1 and top-5 error, computed on the device."""
import numpy as np


def top_k_correct(probs, labels, k):
    """How many rows have their label among the k largest scores (a device scalar).

    probs (N, classes), labels (N,) int, both on the same device. Ties are broken by
    position, like argsort. k larger than the number of classes counts every row.
    """
    xp = np if isinstance(probs, np.ndarray) else __import__("cupy")
    k = min(k, probs.shape[1])
    # A label is in the top k when fewer than k classes score strictly higher than it.
    label_score = xp.take_along_axis(probs, labels.reshape(-1, 1).astype(np.int64), axis=1)
    higher = (probs > label_score).sum(axis=1)
    return (higher < k).sum()
