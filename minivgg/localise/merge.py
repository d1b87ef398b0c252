"""The greedy merging of box predictions (VGG appendix A.1, after Sermanet et al., OverFeat,
ICLR 2014, sect. 4.3): many boxes predicted densely, at several scales and by several
nets, become a few, each rated by the class scores of the windows that predicted it.

For one class, given boxes b_1..b_n (corners) and the classification net's score of that
class at the window each came from:

    1. Every box starts as its own group, of one member and its window's score.
    2. Take the two closest groups by match_score (below); ties go to the pair that comes
       first (row-major: i, then j) in the current order: the boxes not yet merged, in
       the order they were given, then the groups in the order they were formed.
    3. If their score exceeds the threshold, stop. Otherwise replace them by one group:
       its box the average of all its members' coordinates (the two boxes weighted by
       their member counts, so a group's box is the plain mean of the predictions in it,
       whatever the merging order), its score the sum of theirs (OverFeat accumulates
       the class outputs of the windows behind a box). Back to 2.
    4. The class's box is the group with the highest score.

match_score(a, b) = |centre_a - centre_b| / s + (1 - IoU(a, b)), s the mean side of the
two boxes: OverFeat's measure combines the distance between the centres with the boxes'
overlap. It is 0 for identical boxes, and at least 1 for boxes that do not overlap;
the default threshold 1 merges what overlaps and is close relative to its size: two
boxes of the same size shifted by a quarter of their side score 0.25 + 0.4 = 0.65 and
merge, by half their side 0.5 + 0.67 = 1.17 and do not.
"""
import numpy as np

from minivgg.data.boxes import iou

THRESHOLD = 1.0


def match_score(a, b):
    """(..., 4) corners, broadcast -> the distance of A.1's merging (0: identical)."""
    ca = (a[..., :2] + a[..., 2:]) / 2
    cb = (b[..., :2] + b[..., 2:]) / 2
    side = ((a[..., 2:] - a[..., :2]).sum(-1) + (b[..., 2:] - b[..., :2]).sum(-1)) / 4
    dist = np.linalg.norm(ca - cb, axis=-1) / np.maximum(side, 1e-12)
    return dist + 1 - iou(a, b)


def _closest_pair(boxes):
    """(score, i, j), i < j, of the closest two boxes; the first pair in row-major order
    among equals (np.argmin returns the first minimum)."""
    n = len(boxes)
    d = match_score(boxes[:, None, :], boxes[None, :, :])
    d[np.tril_indices(n)] = np.inf  # each pair once, never a box with itself
    k = int(np.argmin(d))
    return d.flat[k], k // n, k % n


def greedy_merge(boxes, scores, threshold=THRESHOLD, trace=None):
    """Merge boxes (n, 4) rated scores (n,) as the module says.

    -> (merged boxes (m, 4), their scores (m,), members: a list of m index lists into the
    input), m <= n, in the order the groups were formed. trace: a list that gets one
    (i, j, score) per merge (the lesson prints them).
    """
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.array(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"greedy_merge: {len(boxes)} boxes but {len(scores)} scores")
    members = [[i] for i in range(len(boxes))]
    while len(boxes) > 1:
        d, i, j = _closest_pair(boxes)
        if not d <= threshold:  # NaN boxes never merge
            break
        if trace is not None:
            trace.append((i, j, float(d)))
        ni, nj = len(members[i]), len(members[j])
        merged = (ni * boxes[i] + nj * boxes[j]) / (ni + nj)
        keep = [k for k in range(len(boxes)) if k not in (i, j)]
        boxes = np.vstack([boxes[keep], merged[None]])
        scores = np.concatenate([scores[keep], [scores[i] + scores[j]]])
        members = [members[k] for k in keep] + [members[i] + members[j]]
    return boxes, scores, members


def best_box(boxes, scores, threshold=THRESHOLD):
    """Step 4: the merged box with the highest score (the first among equals), its score."""
    merged, rated, _ = greedy_merge(boxes, scores, threshold)
    k = int(np.argmax(rated))
    return merged[k], float(rated[k])
