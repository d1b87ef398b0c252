"""The Caltech protocol of Appendix B: random splits, a linear SVM, mean class recall.

    draw_splits         per split, `n_train` random images of every class for training
                        and up to `n_test` of the rest (None: all the rest) for testing
                        (Caltech-101: 3 splits, 30 and up to 50; Caltech-256: 60 and the rest)
    holdout             20% of a split's training images, per class, held out to choose
                        the SVM's C ("hyper-parameter selection" in App. B) among
                        0.001, 0.01, ..., 1000 (the best mean class recall; then the SVM
                        is fitted again on all the split's training images)
    mean_class_recall   the mean over classes of the fraction of a class's test images
                        classified as that class (compensates for unequal class sizes)
    average_precision   VOC's AP (2010 onwards): the area under the precision-recall
                        curve with precision made monotone; mean_average_precision
                        averages it over classes, one-vs-rest (the VOC measure)
    run                 the whole protocol for one descriptor matrix

The SVM is scikit-learn's LinearSVC (liblinear: one-vs-rest, hinge loss), an optional
extra (`pip install 'minivgg[features]'`); everything else here is NumPy. Randomness is
a function of (seed, split): the same seed draws the same splits on any machine.
"""
import warnings

import numpy as np

from minivgg.errors import UserError

C_GRID = tuple(10.0 ** np.arange(-3, 4))  # 0.001 ... 1000
EXTRA = "pip install 'minivgg[features]'"


def linear_svc():
    """scikit-learn's LinearSVC class, or a one-line UserError naming the extra."""
    try:
        from sklearn.svm import LinearSVC
    except ImportError:
        raise UserError(f"classify needs scikit-learn (the linear SVM): {EXTRA}") from None
    return LinearSVC


def draw_splits(labels, classes, n_train, n_test=50, n_splits=3, seed=0):
    """[(train_idx, test_idx)] * n_splits: per class, n_train random images for training
    and up to n_test of the others (all of them when n_test is None) for testing.

    A class needs n_train + 1 images (one left to test); fewer is a one-line UserError
    naming it. Split s draws from default_rng([seed, s]), class by class in label order.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(classes))
    for c, n in enumerate(counts):
        if n < n_train + 1:
            raise UserError(f"class {classes[c]!r} has {n} image(s), fewer than "
                            f"--train-per-class {n_train} plus one to test")
    out = []
    for s in range(n_splits):
        rng = np.random.default_rng([seed, s])
        train, test = [], []
        for c in range(len(classes)):
            idx = rng.permutation(np.flatnonzero(labels == c))
            train.append(idx[:n_train])
            test.append(idx[n_train:] if n_test is None else idx[n_train:n_train + n_test])
        out.append((np.sort(np.concatenate(train)), np.sort(np.concatenate(test))))
    return out


def holdout(train_idx, labels, fraction=0.2, key=(0, 0)):
    """(fit_idx, val_idx): round(fraction * n) of each class's training images (at least
    one, and one left to fit) held out at random to choose C; drawn from
    default_rng([seed, split, 1]) for key = (seed, split)."""
    rng = np.random.default_rng([*key, 1])
    fit, val = [], []
    y = np.asarray(labels)[train_idx]
    for c in np.unique(y):
        idx = rng.permutation(train_idx[y == c])
        k = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        val.append(idx[:k])
        fit.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def mean_class_recall(y_true, y_pred, n_classes):
    """Mean over the classes present in y_true of (correct in class) / (images in class)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    total = np.bincount(y_true, minlength=n_classes)
    hit = np.bincount(y_true[y_true == y_pred], minlength=n_classes)
    present = total > 0
    return float(np.mean(hit[present] / total[present]))


def average_precision(scores, positive):
    """VOC AP (2010 onwards): sum over the positives, in decreasing score order, of
    (1 / n_pos) * the highest precision at this recall or beyond. Ties keep index order
    (a stable sort). NaN when there is no positive."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    monotone = np.maximum.accumulate(precision[::-1])[::-1]  # best precision from here on
    return float(monotone[hits].sum() / n_pos)


def mean_average_precision(scores, y_true, n_classes):
    """One-vs-rest AP of every class present in y_true, averaged (the VOC measure)."""
    y_true = np.asarray(y_true)
    aps = [average_precision(scores[:, c], y_true == c) for c in range(n_classes)
           if (y_true == c).any()]
    return float(np.mean(aps))


def _fit(X, y, C, seed):
    """A LinearSVC fitted to (X, y); returns (model, liblinear converged?)."""
    LinearSVC = linear_svc()
    svm = LinearSVC(C=C, loss="hinge", dual=True, max_iter=20000, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        svm.fit(X, y)
    return svm, not any("converge" in str(w.message).lower() for w in caught)


def _scores(svm, X, n_classes):
    """(N, n_classes) decision values, columns in label order (a class the SVM never saw
    in training cannot happen here: every split trains on every class)."""
    s = svm.decision_function(X)
    if s.ndim == 1:  # two classes: liblinear gives one column, for the second class
        s = np.stack([-s, s], axis=1)
    out = np.full((len(X), n_classes), -np.inf)
    out[:, svm.classes_] = s
    return out


def choose_c(X, y, fit, val, n_classes, grid=C_GRID, seed=0):
    """The C of `grid` with the best mean class recall on val after fitting on fit
    (the smallest C among ties: the most regularised); and every C's recall."""
    recalls = []
    for C in grid:
        svm, _ = _fit(X[fit], y[fit], C, seed)
        recalls.append(mean_class_recall(y[val], svm.predict(X[val]), n_classes))
    return float(grid[int(np.argmax(recalls))]), recalls


def evaluate_split(X, y, train, test, n_classes, val_fraction=0.2, grid=C_GRID, key=(0, 0)):
    """One split: choose C on a held-out part of train, refit on all of train, test.
    key = (seed, split) seeds the hold-out and liblinear's coordinate order."""
    fit, val = holdout(train, y, val_fraction, key)
    svm_seed = key[0] * 1000 + key[1]
    C, recalls = choose_c(X, y, fit, val, n_classes, grid, svm_seed)
    svm, converged = _fit(X[train], y[train], C, svm_seed)
    scores = _scores(svm, X[test], n_classes)
    pred = np.asarray(svm.classes_)[np.argmax(scores[:, svm.classes_], axis=1)]
    hit = np.bincount(y[test][pred == y[test]], minlength=n_classes)
    return dict(C=C, val_recall={f"{c:g}": r for c, r in zip(grid, recalls)},
                recall=mean_class_recall(y[test], pred, n_classes),
                mAP=mean_average_precision(scores, y[test], n_classes),
                per_class_recall=(hit / np.maximum(np.bincount(y[test], minlength=n_classes),
                                                   1)).tolist(),
                n_train=len(train), n_test=len(test), converged=converged)


def summarise(per_split):
    """Mean and sample std (ddof=1; 0 for one split) of recall and mAP over the splits."""
    out = {}
    for key in ("recall", "mAP"):
        v = np.array([r[key] for r in per_split])
        out[key] = float(v.mean())
        out[key + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return out


def run(X, y, splits, n_classes, val_fraction=0.2, grid=C_GRID, seed=0, prepare=None,
        bar=None):
    """The protocol on one descriptor matrix: per-split results and their summary.
    prepare(X, train_idx) -> X, when given, transforms the descriptors per split from
    the training images alone (the pixel baseline centres on their mean)."""
    per_split = []
    for s, (train, test) in enumerate(splits):
        Xs = X if prepare is None else prepare(X, train)
        per_split.append(evaluate_split(Xs, y, train, test, n_classes, val_fraction, grid,
                                        key=(seed, s)))
        if bar is not None:
            bar.update(1)
    return dict(summarise(per_split), splits=per_split)
