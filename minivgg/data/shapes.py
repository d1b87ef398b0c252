"""The built-in "shapes" data set: a seeded, procedurally drawn 10-class image-folder
tree (PNG files and a bboxes.csv per split), cached under $MINIVGG_DATA or ~/.cache/minivgg.

    render_shape(cls, rng)        one image, its object's box and coverage
    make_shapes / ensure_shapes   the whole tree, drawn once (atomically) and cached
    read_bboxes                   a split's boxes

How hard is it? A linear classifier on raw pixels is near chance (see baseline.py),
because the colour, position, tilt and size of the object and the textured, cluttered
background are all random; only the outline tells the class. Objects stand upright,
tilted by up to 30 degrees: with full 360-degree rotation the default CPU run of VGG-B
spent its first three epochs on the ln(10) plateau and ended at 85-93%; upright, it
reaches 97% in the same time.

Default size, 64 px, 500 train + 100 val images per class: 64 px leaves room for training
scales S in [32, 40] and beyond (always a downscale, so anti-aliased) with 32 px crops;
5000 training images are 61 MB decoded (cached in memory) and take about 25 s to draw on
2 cores; 1000 val images measure a 95% accuracy to +-0.7% (one standard error).
"""
import concurrent.futures
import csv
import json
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from minivgg.data.errors import DataError

SHAPES_VERSION = 3
# Object size = diameter of the circle around the shape, as a fraction of the image side:
# more than 3x from smallest to largest, so that the scale at which an object is seen
# varies, as in the paper's motivation for scale jittering (sect. 3.1).
SIZE_RANGE = (0.28, 0.9)
# Objects stand upright, tilted by up to 30 degrees either way: like the objects in photos,
# mostly the right way up (a fully rotated "arrow" is a different, much harder problem).
MAX_TILT = np.pi / 6
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges
SHAPES_DEFAULTS = dict(size=64, n_train=5000, n_val=1000, seed=0)


def _circle(n=48, r=1.0, cx=0.0, cy=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(k, r=1.0, phase=0.0):
    t = phase + np.arange(k) * 2 * np.pi / k
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _star():
    t = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(w=0.32):
    return np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                     (-w, w), (-1, w), (-1, -w), (-w, -w)], dtype=float)


def _heart():
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _arrow():
    # a bold arrow: a thin one is a line at small sizes, easily taken for clutter
    return np.array([(-1, -0.3), (0.1, -0.3), (0.1, -0.75), (1, 0), (0.1, 0.75),
                     (0.1, 0.3), (-1, 0.3)], dtype=float)


def _normalised(parts):
    """Centre the filled parts' bounding box on 0 and scale their farthest point to 1."""
    filled = np.concatenate([p for p, fill in parts if fill])
    centre = (filled.min(axis=0) + filled.max(axis=0)) / 2
    radius = np.linalg.norm(filled - centre, axis=1).max()
    return [((p - centre) / radius, fill) for p, fill in parts]


# Each class: polygons in unit coordinates, drawn in order; fill False cuts a hole.
SHAPES = {
    "arrow": [(_arrow(), True)],
    "circle": [(_circle(64), True)],
    "crescent": [(_circle(64), True), (_circle(64, 0.82, 0.5, 0.0), False)],
    "cross": [(_cross(), True)],
    "diamond": [(np.array([(0, -1), (0.55, 0), (0, 1), (-0.55, 0)], float), True)],
    "heart": [(_heart(), True)],
    "ring": [(_circle(64), True), (_circle(64, 0.55), False)],
    "square": [(_regular(4, 1.0, np.pi / 4), True)],
    "star": [(_star(), True)],
    "triangle": [(_regular(3, 1.0, -np.pi / 2), True)],
}
SHAPES = {k: _normalised(v) for k, v in SHAPES.items()}
SHAPE_CLASSES = sorted(SHAPES)


class _Layer:
    """Things drawn at SUPERSAMPLE x resolution: premultiplied colour + coverage mask.

    Box-filtering both down gives exact anti-aliased coverage alpha and alpha * colour,
    so compositing is out = out * (1 - alpha) + colour_premultiplied.
    """

    def __init__(self, side, ss=SUPERSAMPLE):
        n = side * ss
        self.side, self.ss = side, ss
        self.rgb, self.mask = Image.new("RGB", (n, n)), Image.new("L", (n, n))
        self.draw_rgb, self.draw_mask = ImageDraw.Draw(self.rgb), ImageDraw.Draw(self.mask)

    def polygon(self, pts, colour, fill=True):
        xy = [tuple(p) for p in (np.asarray(pts) * self.ss)]
        self.draw_rgb.polygon(xy, fill=tuple(colour) if fill else (0, 0, 0))
        self.draw_mask.polygon(xy, fill=255 if fill else 0)

    def ellipse(self, box, colour):
        self.draw_rgb.ellipse([v * self.ss for v in box], fill=tuple(colour))
        self.draw_mask.ellipse([v * self.ss for v in box], fill=255)

    def line(self, pts, colour, width):
        xy = [tuple(p) for p in (np.asarray(pts) * self.ss)]
        w = max(1, round(width * self.ss))
        self.draw_rgb.line(xy, fill=tuple(colour), width=w)
        self.draw_mask.line(xy, fill=255, width=w)

    def composite(self, out, blur=0.0):
        size = (self.side, self.side)
        rgb, mask = self.rgb, self.mask
        if self.ss > 1:
            rgb, mask = rgb.resize(size, Image.BOX), mask.resize(size, Image.BOX)
        if blur > 0:  # soft edges; blurring after the downsampling is 16x cheaper
            f = ImageFilter.GaussianBlur(blur)
            rgb, mask = rgb.filter(f), mask.filter(f)
        a = np.asarray(mask, np.float32)[:, :, None] / 255
        c = np.asarray(rgb, np.float32)
        out *= 1 - a
        out += c


def _colour(rng, lo=0, hi=256):
    return rng.integers(lo, hi, size=3)


def _background(rng, n):
    """A gradient between two random colours plus low-frequency colour noise."""
    c1, c2 = _colour(rng).astype(np.float32), _colour(rng).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
    t = (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) * np.sqrt(0.5) + 0.5
    img = c1 + (c2 - c1) * t[:, :, None]
    k = int(rng.integers(3, 7))  # a k x k grid of random colours, smoothly upsampled
    low = rng.normal(0, rng.uniform(5, 20), size=(k, k, 3)).astype(np.float32)
    chans = [np.asarray(Image.fromarray(low[:, :, c]).resize((n, n), Image.BICUBIC))
             for c in range(3)]
    return img + np.stack(chans, axis=2)


def _clutter(rng, n, out):
    """A few faint blobs, thin lines and small fragments: enough clutter that no pixel
    template works, little enough that a small ConvNet learns the outlines in minutes."""
    blobs = _Layer(n, ss=1)  # blurred anyway: no need to supersample
    for _ in range(rng.integers(0, 3)):
        cx, cy = rng.uniform(0, n, 2)
        rx, ry = rng.uniform(0.05, 0.15, 2) * n
        blobs.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], _colour(rng))
    blobs.composite(out, blur=rng.uniform(0.04, 0.08) * n)
    marks = _Layer(n, ss=2)
    for _ in range(rng.integers(0, 3)):  # long thin lines crossing the image
        pts = rng.uniform(-0.1, 1.1, size=(2, 2)) * n
        marks.line(pts, _colour(rng), width=rng.uniform(0.5, 1.0) * n / 64)
    for _ in range(rng.integers(0, 4)):  # fragments far smaller than any object
        c = rng.uniform(0, n, 2)
        pts = c + rng.uniform(-0.03, 0.03, size=(int(rng.integers(3, 6)), 2)) * n
        marks.polygon(pts, _colour(rng))
    marks.composite(out)


def _place(parts, rng, n, d):
    """Tilt (by up to MAX_TILT), stretch a little, scale to diameter d px, and put inside
    the image.

    Object centres stay in the middle 40% of the image where the shape allows, so that a
    random crop of 2/3 of the side (S = 1.5 x crop) still sees most of the object.
    """
    theta = rng.uniform(-MAX_TILT, MAX_TILT)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    stretch = np.diag(rng.uniform(0.9, 1.1, 2))
    m = (d / 2) * rot @ stretch
    moved = [(p @ m.T, fill) for p, fill in parts]
    filled = np.concatenate([p for p, fill in moved if fill])
    lo_xy, hi_xy = 1 - filled.min(axis=0), n - 1 - filled.max(axis=0)  # bbox inside
    centre = []
    for lo, hi in zip(lo_xy, hi_xy):
        a, b = max(lo, 0.3 * n), min(hi, 0.7 * n)
        a, b = (a, b) if a <= b else (lo, max(lo, hi))
        centre.append(rng.uniform(a, b))
    return [(p + np.array(centre), fill) for p, fill in moved]


def _contrasting_colour(rng, region):
    """An object colour far from the mean colour of the background under it."""
    ref = region.reshape(-1, 3).mean(axis=0)
    best, best_dist = None, -1.0
    for _ in range(20):
        c = _colour(rng)
        dist = float(np.linalg.norm(c - ref))
        if dist >= 120:
            return c
        if dist > best_dist:
            best, best_dist = c, dist
    return best


def render_shape(cls, rng, n=64, d=None, outlines=None):
    """One shapes image: (HxWx3 uint8, bbox (x0, y0, x1, y1), object coverage HxW float).

    cls: a class name or index into SHAPE_CLASSES; d: the object's diameter in pixels
    (default: random in SIZE_RANGE). The bbox is in pixel-edge coordinates, the object
    covers [x0, x1) x [y0, y1): the smallest integer box around every pixel it touches.
    outlines: another {name: parts} table like SHAPES (cls then indexes its sorted
    names): the transfer set (transfer.py) draws its new classes with this same renderer.
    """
    table = SHAPES if outlines is None else outlines
    name = sorted(table)[cls] if isinstance(cls, (int, np.integer)) else cls
    d = d if d is not None else rng.uniform(*SIZE_RANGE) * n
    out = _background(rng, n)
    _clutter(rng, n, out)
    obj = _Layer(n)
    parts = _place(table[name], rng, n, d)
    for pts, fill in parts:
        obj.polygon(pts, (255, 255, 255), fill)
    box = obj.mask.getbbox()  # supersampled pixels touched by the object
    bbox = (box[0] // SUPERSAMPLE, box[1] // SUPERSAMPLE,
            -(-box[2] // SUPERSAMPLE), -(-box[3] // SUPERSAMPLE))
    alpha = np.asarray(obj.mask.resize((n, n), Image.BOX), np.float32) / 255
    colour = _contrasting_colour(rng, out[bbox[1]:bbox[3], bbox[0]:bbox[2]])
    # A soft lighting gradient across the object, so it is not one flat colour.
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    g = rng.uniform(-0.3, 0.3, 2)
    shade = 1 + g[0] * (xx - 0.5) + g[1] * (yy - 0.5)
    fg = colour[None, None, :] * shade[:, :, None]
    out = out * (1 - alpha[:, :, None]) + fg * alpha[:, :, None]
    if rng.random() < 0.05:  # sometimes a thin line crosses in front of the object
        front = _Layer(n, ss=2)
        front.line(rng.uniform(0, 1, size=(2, 2)) * n, _colour(rng), width=0.8 * n / 64)
        front.composite(out)
    out += rng.normal(0, rng.uniform(2, 6), size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), bbox, alpha


def shapes_name(size, n_train, n_val, seed):
    """The cache folder's name: every parameter that changes the images is in it."""
    return f"shapes-v{SHAPES_VERSION}-{size}px-{n_train}-{n_val}-seed{seed}"


def _split_jobs(split, n, seed, n_classes=len(SHAPE_CLASSES)):
    """(index, class, diameter fraction, rng key) for each image of a split.

    Classes cycle 0..9, so they are balanced. Sizes are stratified within each class:
    class c's k-th image gets a size from the k-th of its equal slices of SIZE_RANGE (in
    random order), so every class spans the whole range even in a small set.
    """
    split_id = {"train": 0, "val": 1}[split]
    labels = np.arange(n) % n_classes
    sizes = np.empty(n)
    lo, hi = SIZE_RANGE
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, split_id, 1_000_000 + c])
        u = (rng.permutation(len(idx)) + rng.random(len(idx))) / max(len(idx), 1)
        sizes[idx] = lo + (hi - lo) * u
    return [(i, int(labels[i]), float(sizes[i]), [seed, split_id, i]) for i in range(n)]


def _write_one(root, split, size, job):
    i, c, frac, key = job
    rng = np.random.default_rng(key)
    img, bbox, _ = render_shape(c, rng, size, d=frac * size)
    rel = f"{SHAPE_CLASSES[c]}/{i:06d}.png"
    Image.fromarray(img).save(os.path.join(root, split, rel), compress_level=6)
    return [rel, SHAPE_CLASSES[c], *bbox, round(frac * size, 2)]


def make_shapes(root, size=64, n_train=5000, n_val=1000, seed=0, progress=True, workers=2):
    """Draw the shapes set into root (must not exist, or be empty); returns root.

    ROOT/{train,val}/<class>/NNNNNN.png and ROOT/{train,val}/bboxes.csv with columns
    file,class,x0,y0,x1,y1,size (file relative to the split folder; box in pixel-edge
    coordinates, [x0, x1) x [y0, y1); size = the object's diameter in pixels), plus
    ROOT/meta.json. Written into a temporary folder beside root and renamed at the end,
    so an interrupted run leaves nothing half-done. Every image is a function of (seed,
    split, index) only, so the result is the same for any number of workers.
    """
    root = os.path.abspath(str(root))
    if size < 16:
        raise DataError(f"--size must be >= 16, got {size}")
    if n_train < 1 or n_val < 0:
        raise DataError(f"need at least 1 training image and >= 0 val images, "
                        f"got {n_train} and {n_val}")
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise DataError(f"{root} already exists and is not an empty directory")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(root) + "-", dir=parent)
    try:
        _draw_tree(tmp, size, n_train, n_val, seed, progress, workers)
        if os.path.isdir(root):
            os.rmdir(root)  # empty (checked above)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _draw_tree(tmp, size, n_train, n_val, seed, progress, workers):
    t0 = time.perf_counter()
    splits = [("train", n_train), ("val", n_val)]
    for split, _ in splits:
        for c in SHAPE_CLASSES:
            os.makedirs(os.path.join(tmp, split, c))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_train + n_val, desc="drawing shapes", unit="img")
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for split, n in splits:
            rows = []
            for row in pool.map(lambda j: _write_one(tmp, split, size, j),
                                _split_jobs(split, n, seed)):
                rows.append(row)
                if bar is not None:
                    bar.update(1)
            with open(os.path.join(tmp, split, "bboxes.csv"), "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file", "class", "x0", "y0", "x1", "y1", "size"])
                w.writerows(rows)
    if bar is not None:
        bar.close()
    meta = dict(dataset="shapes", version=SHAPES_VERSION, size=size, n_train=n_train,
                n_val=n_val, seed=seed, classes=SHAPE_CLASSES, size_range=SIZE_RANGE,
                seconds=round(time.perf_counter() - t0, 2))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def default_cache_dir():
    return os.environ.get("MINIVGG_DATA") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "minivgg")


def ensure_shapes(size=64, n_train=5000, n_val=1000, seed=0, cache_dir=None, progress=True):
    """The root of the shapes set with these parameters, drawn on first use and cached.

    cache_dir: default $MINIVGG_DATA, else ~/.cache/minivgg. The folder is complete or
    absent (make_shapes renames a finished temporary folder into place); if another
    process finishes the same set first, its copy is used.
    """
    root = os.path.join(cache_dir or default_cache_dir(), shapes_name(size, n_train, n_val,
                                                                      seed))
    if os.path.isfile(os.path.join(root, "meta.json")):
        return root
    try:
        return make_shapes(root, size, n_train, n_val, seed, progress=progress)
    except (DataError, OSError):
        if os.path.isfile(os.path.join(root, "meta.json")):  # another process won the race
            return root
        raise


def read_bboxes(split_dir):
    """ROOT/<split>/bboxes.csv -> list of dicts (x0..x1 as ints, size as float)."""
    with open(os.path.join(split_dir, "bboxes.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("x0", "y0", "x1", "y1"):
            r[k] = int(r[k])
        r["size"] = float(r["size"])
    return rows
