"""The built-in transfer set: ten NEW shape classes, for very deep features (Appendix B).

    make_transfer / ensure_transfer   DIR/<class>/NNNNNN.png + bboxes.csv + meta.json,
                                      drawn once (atomically) and cached like shapes
    TRANSFER_OUTLINES, TRANSFER_CLASSES

Appendix B takes nets trained on ILSVRC and asks how well their penultimate activations
describe images of *other* data sets (VOC, Caltech), whose classes the nets never saw.
The default training run (`python -m minivgg.train --config B`) sees all ten classes of
the shapes set, so holding some of them out would need a different training run (and a
smaller training set); instead this set draws ten outlines that the shapes set does not
have -- bowtie, chevron, dumbbell, ell, lightning, pacman, parallelogram, semicircle, tee,
teardrop -- with the shapes set's own renderer (shapes.render_shape: the same
backgrounds, clutter, colours, tilt, size range and noise). So a linear SVM on the
features measures transfer to new categories, not memorisation of trained ones; the
outlines differ from every training outline (tests/test_features.py checks their
overlap).

Layout: one folder per class and no train/val split (the classification protocol draws
its own random splits, as for Caltech-101: 30 training and up to 50 test images per
class, hence 80 images per class by default). `size_range` sets the object's diameter as
a fraction of the image side; the default is the shapes set's (objects of many sizes,
like VOC); (0.75, 0.95) gives objects that fill the image, like Caltech's.
"""
import concurrent.futures
import csv
import json
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from minivgg.data.errors import DataError
from minivgg.data.shapes import SIZE_RANGE, _circle, _normalised, default_cache_dir, render_shape

TRANSFER_VERSION = 1
# The random streams of this set: (seed, STREAM, index). The shapes set uses (seed, 0, i)
# and (seed, 1, i) for train and val, so no transfer image shares a background, clutter
# or colour draw with a training image.
STREAM = 17
TRANSFER_DEFAULTS = dict(size=64, per_class=80, seed=0, size_range=SIZE_RANGE)


def _poly(*pts):
    return np.array(pts, dtype=float)


def _pacman(mouth=np.pi / 2, n=64):
    t = np.linspace(mouth / 2, 2 * np.pi - mouth / 2, n)
    return np.concatenate([[(0.0, 0.0)], np.stack([np.cos(t), np.sin(t)], axis=1)])


def _semicircle(n=48):
    t = np.linspace(np.pi, 2 * np.pi, n)  # the flat side down (image y grows downwards)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _teardrop(n=64):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)  # a disc drawn out to a point above
    return np.stack([np.sin(t) * (1 - np.cos(t)) / 2 * 1.3, -np.cos(t)], axis=1)


# Each class: polygons in unit coordinates, drawn in order (fill False cuts a hole), as in
# shapes.SHAPES; upright (render_shape tilts them by up to 30 degrees).
TRANSFER_OUTLINES = {
    "bowtie": [(_poly((-1, -0.7), (0, 0), (-1, 0.7)), True),
               (_poly((1, -0.7), (0, 0), (1, 0.7)), True)],
    "chevron": [(_poly((-1, -0.6), (0, 0.2), (1, -0.6), (1, 0.1), (0, 0.9), (-1, 0.1)),
                 True)],
    "dumbbell": [(_circle(32, 0.42, -0.6, 0), True), (_circle(32, 0.42, 0.6, 0), True),
                 (_poly((-0.6, -0.14), (0.6, -0.14), (0.6, 0.14), (-0.6, 0.14)), True)],
    "ell": [(_poly((-0.6, -1), (-0.15, -1), (-0.15, 0.55), (0.6, 0.55), (0.6, 1),
                   (-0.6, 1)), True)],
    "lightning": [(_poly((0.2, -1), (-0.55, 0.1), (-0.05, 0.1), (-0.3, 1), (0.55, -0.2),
                         (0.05, -0.2), (0.35, -1)), True)],
    "pacman": [(_pacman(), True)],
    "semicircle": [(_semicircle(), True)],
    "tee": [(_poly((-1, -0.8), (1, -0.8), (1, -0.35), (0.22, -0.35), (0.22, 1),
                   (-0.22, 1), (-0.22, -0.35), (-1, -0.35)), True)],
    "teardrop": [(_teardrop(), True)],
    "parallelogram": [(_poly((-0.3, -0.45), (1, -0.45), (0.3, 0.45), (-1, 0.45)), True)],
}
TRANSFER_OUTLINES = {k: _normalised(v) for k, v in TRANSFER_OUTLINES.items()}
TRANSFER_CLASSES = sorted(TRANSFER_OUTLINES)


def transfer_name(size, per_class, seed, size_range=SIZE_RANGE):
    """The cache folder's name: every parameter that changes the images is in it."""
    lo, hi = (float(v) for v in size_range)
    tag = "" if (lo, hi) == tuple(SIZE_RANGE) else f"-objects{lo:g}-{hi:g}"
    return f"transfer-v{TRANSFER_VERSION}-{size}px-{per_class}{tag}-seed{seed}"


def _jobs(per_class, seed, size_range):
    """(index, class, diameter fraction, rng key) for each image.

    Sizes are stratified within each class, as in the shapes set: class c's k-th image
    gets a size from the k-th of its equal slices of size_range (in random order).
    """
    n_classes = len(TRANSFER_CLASSES)
    lo, hi = size_range
    out = []
    for c in range(n_classes):
        rng = np.random.default_rng([seed, STREAM, 1_000_000 + c])
        u = (rng.permutation(per_class) + rng.random(per_class)) / per_class
        for k in range(per_class):
            i = k * n_classes + c  # classes interleaved: index i is class i % n_classes
            out.append((i, c, float(lo + (hi - lo) * u[k]), [seed, STREAM, i]))
    return sorted(out)


def _write_one(root, size, job):
    i, c, frac, key = job
    img, bbox, _ = render_shape(c, np.random.default_rng(key), size, d=frac * size,
                                outlines=TRANSFER_OUTLINES)
    rel = f"{TRANSFER_CLASSES[c]}/{i:06d}.png"
    Image.fromarray(img).save(os.path.join(root, rel), compress_level=6)
    return [rel, TRANSFER_CLASSES[c], *bbox, round(frac * size, 2)]


def _check_args(size, per_class, size_range):
    if size < 16:
        raise DataError(f"--size must be >= 16, got {size}")
    if per_class < 1:
        raise DataError(f"--per-class must be at least 1, got {per_class}")
    lo, hi = size_range
    if not 0 < lo <= hi <= 1:
        raise DataError(f"--size-range {lo:g} {hi:g}: need 0 < LO <= HI <= 1 (fractions of "
                        "the image side)")


def make_transfer(root, size=64, per_class=80, seed=0, size_range=SIZE_RANGE, progress=True,
                  workers=2):
    """Draw the transfer set into root (must not exist, or be empty); returns root.

    ROOT/<class>/NNNNNN.png, ROOT/bboxes.csv (file,class,x0,y0,x1,y1,size as in the shapes
    set, file relative to ROOT) and ROOT/meta.json. Drawn into a temporary folder beside
    root and renamed at the end; every image is a function of (seed, index) only.
    """
    root = os.path.abspath(str(root))
    size_range = tuple(float(v) for v in size_range)
    _check_args(size, per_class, size_range)
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise DataError(f"{root} already exists and is not an empty directory")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(root) + "-", dir=parent)
    try:
        _draw(tmp, size, per_class, seed, size_range, progress, workers)
        if os.path.isdir(root):
            os.rmdir(root)  # empty (checked above)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _draw(tmp, size, per_class, seed, size_range, progress, workers):
    t0 = time.perf_counter()
    for c in TRANSFER_CLASSES:
        os.makedirs(os.path.join(tmp, c))
    jobs = _jobs(per_class, seed, size_range)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        rows = pool.map(lambda j: _write_one(tmp, size, j), jobs)
        if progress:
            from tqdm import tqdm
            rows = tqdm(rows, total=len(jobs), desc="drawing the transfer set", unit="img")
        rows = list(rows)
    with open(os.path.join(tmp, "bboxes.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class", "x0", "y0", "x1", "y1", "size"])
        w.writerows(rows)
    meta = dict(dataset="transfer", version=TRANSFER_VERSION, size=size, per_class=per_class,
                seed=seed, classes=TRANSFER_CLASSES, size_range=size_range,
                seconds=round(time.perf_counter() - t0, 2))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def ensure_transfer(size=64, per_class=80, seed=0, size_range=SIZE_RANGE, cache_dir=None,
                    progress=True):
    """The root of the transfer set with these parameters, drawn on first use and cached
    beside the shapes set ($MINIVGG_DATA, else ~/.cache/minivgg)."""
    root = os.path.join(cache_dir or default_cache_dir(),
                        transfer_name(size, per_class, seed, size_range))
    if os.path.isfile(os.path.join(root, "meta.json")):
        return root
    try:
        return make_transfer(root, size, per_class, seed, size_range, progress=progress)
    except (DataError, OSError):
        if os.path.isfile(os.path.join(root, "meta.json")):  # another process won the race
            return root
        raise
