"""The built-in "digits" set for LeNet-5: handwritten-looking digits 0-9, generated (nothing
is downloaded), 32 x 32 grey PNGs in an image-folder tree, cached like the shapes set.

    render_digit(d, rng)           one 32 x 32 uint8 image of digit d
    make_digits / ensure_digits    the whole tree, drawn once (atomically) and cached

Each digit is a few pen strokes (lines and arcs) in a unit box, written as MNIST's are:
white on black, in a 20 x 20 box centred in the 28 x 28 field, which LeNet-5 sees padded
to 32 x 32 (LeCun et al. 1998, sect. III.A). The "hand" is random per image: the pen
drifts along each stroke, the strokes are moved against each other and the digit is bent
out of shape, slanted, rotated, stretched and moved; the pen is 1.5 to 3 pixels wide, its
ink of varying strength; a third of the images get a stray mark; the ink is blurred a
little, the background not quite black and speckled with noise. 6,000 training and 1,000
validation images (a tenth each per class) take a few seconds to draw.

The digits are not mirror images of one another's classes, but a mirrored 2 is close to a
5 (and 6 to a mirrored 9 turned over): the `lenet` training preset therefore turns the
random horizontal flip off.
"""
import concurrent.futures
import json
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from minivgg.data.errors import DataError

DIGITS_VERSION = 2
DIGIT_CLASSES = [str(d) for d in range(10)]
DIGITS_DEFAULTS = dict(size=32, n_train=6000, n_val=1000, seed=0)
SUPERSAMPLE = 4  # strokes are drawn at 4x and box-filtered down: anti-aliased


def _arc(cx, cy, rx, ry, a0, a1, n=16):
    """Points of an elliptic arc from angle a0 to a1 (degrees, counter-clockwise as seen,
    0 = right; y grows downwards in the image)."""
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(t), cy - ry * np.sin(t)], axis=1)


def _line(*points):
    return np.array(points, dtype=np.float64)


# Strokes of each digit in a unit box (x right, y down), each an (n, 2) polyline.
STROKES = {
    0: [_arc(0.5, 0.5, 0.3, 0.45, 0, 360, 28)],
    1: [_line((0.32, 0.22), (0.55, 0.05)), _line((0.55, 0.05), (0.55, 0.95))],
    2: [_arc(0.5, 0.3, 0.28, 0.25, 160, -40), _line((0.7, 0.46), (0.2, 0.95)),
        _line((0.2, 0.95), (0.85, 0.95))],
    3: [_arc(0.48, 0.28, 0.26, 0.23, 150, -90), _arc(0.48, 0.73, 0.3, 0.23, 90, -150)],
    4: [_line((0.62, 0.05), (0.15, 0.65)), _line((0.15, 0.65), (0.88, 0.65)),
        _line((0.66, 0.3), (0.66, 0.97))],
    5: [_line((0.8, 0.05), (0.3, 0.05)), _line((0.3, 0.05), (0.26, 0.45)),
        _arc(0.48, 0.68, 0.3, 0.27, 140, -150)],
    6: [_arc(0.72, 0.55, 0.48, 0.5, 100, 185), _arc(0.5, 0.72, 0.26, 0.24, 0, 360, 24)],
    7: [_line((0.15, 0.05), (0.85, 0.05)), _line((0.85, 0.05), (0.4, 0.97))],
    8: [_arc(0.5, 0.27, 0.22, 0.22, 0, 360, 22), _arc(0.5, 0.72, 0.27, 0.25, 0, 360, 24)],
    9: [_arc(0.5, 0.3, 0.26, 0.25, 0, 360, 24), _line((0.76, 0.3), (0.62, 0.97))],
}


def _hand(strokes, rng, field):
    """The strokes as written by one random hand, in pixels of a `field`-wide image."""
    slant, turn = rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3)  # shear, radians
    sx, sy = rng.uniform(0.6, 1.15), rng.uniform(0.75, 1.15)
    A = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]) @ \
        np.array([[sx, -slant * sy], [0.0, sy]])
    box = field * 20 / 32  # MNIST's 20 x 20 box, in a 32-pixel image
    shift = field / 2 + rng.uniform(-3.0, 3.0, 2) * field / 32
    bend = rng.normal(0, 0.06, (2, 2))  # the whole digit drawn a little out of shape
    out = []
    for s in strokes:
        wobble = np.cumsum(rng.normal(0, 0.02, s.shape), axis=0)  # a drifting pen
        q = s - 0.5
        q = q + (q * q[:, ::-1]) @ bend + wobble + rng.normal(0, 0.03, 2)
        out.append((q @ A.T) * box + shift)
    return out


def render_digit(d, rng, size=32):
    """One size x size uint8 grey image of digit d: white strokes on black."""
    n = size * SUPERSAMPLE
    im = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(im)
    width = max(1, int(round(rng.uniform(1.5, 3.0) * SUPERSAMPLE * size / 32)))
    ink = int(rng.integers(120, 256))
    strokes = _hand(STROKES[d], rng, n)
    if rng.random() < 0.3:  # a stray mark: a short stroke somewhere
        a, b = rng.uniform(0.1, 0.9, 2) * n, rng.uniform(-0.2, 0.2, 2) * n
        strokes.append(np.array([a, a + b]))
    for stroke in strokes:
        pts = [tuple(p) for p in stroke]
        draw.line(pts, fill=ink, width=width, joint="curve")
        for x, y in (pts[0], pts[-1]):  # round pen ends
            r = width / 2
            draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
    im = im.resize((size, size), Image.BOX).filter(ImageFilter.GaussianBlur(0.4))
    x = np.asarray(im, dtype=np.float64) + rng.normal(0, 12, (size, size)) + \
        rng.uniform(0, 40)  # noise, and a background that is not quite black
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def digits_name(size, n_train, n_val, seed):
    """The cache folder's name: every parameter that changes the images is in it."""
    return f"digits-v{DIGITS_VERSION}-{size}px-{n_train}-{n_val}-seed{seed}"


def _write_one(root, split, size, i, seed):
    split_id = {"train": 0, "val": 1}[split]
    d = i % 10  # balanced classes
    img = render_digit(d, np.random.default_rng([seed, split_id, i]), size)
    Image.fromarray(img, mode="L").save(os.path.join(root, split, str(d), f"{i:06d}.png"))


def make_digits(root, size=32, n_train=6000, n_val=1000, seed=0, workers=2):
    """Draw the digits set into root (must not exist, or be empty); returns root.

    ROOT/{train,val}/<digit>/NNNNNN.png (8-bit grey) and ROOT/meta.json, written into a
    temporary folder beside root and renamed at the end. Every image is a function of
    (seed, split, index) only."""
    root = os.path.abspath(str(root))
    if size < 16:
        raise DataError(f"digits need a size >= 16, got {size}")
    if n_train < 1 or n_val < 0:
        raise DataError(f"need at least 1 training image and >= 0 val images, "
                        f"got {n_train} and {n_val}")
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise DataError(f"{root} already exists and is not an empty directory")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(root) + "-", dir=parent)
    try:
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            for split, n in (("train", n_train), ("val", n_val)):
                for c in DIGIT_CLASSES:
                    os.makedirs(os.path.join(tmp, split, c))
                list(pool.map(lambda i: _write_one(tmp, split, size, i, seed), range(n)))
        meta = dict(dataset="digits", version=DIGITS_VERSION, size=size, n_train=n_train,
                    n_val=n_val, seed=seed, classes=DIGIT_CLASSES,
                    seconds=round(time.perf_counter() - t0, 2))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        if os.path.isdir(root):
            os.rmdir(root)  # empty (checked above)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_digits(size=32, n_train=6000, n_val=1000, seed=0, cache_dir=None):
    """The root of the digits set with these parameters, drawn on first use and cached
    (under $MINIVGG_DATA, else ~/.cache/minivgg, as the shapes set)."""
    from minivgg.data.shapes import default_cache_dir
    root = os.path.join(cache_dir or default_cache_dir(), digits_name(size, n_train, n_val,
                                                                      seed))
    if os.path.isfile(os.path.join(root, "meta.json")):
        return root
    try:
        return make_digits(root, size, n_train, n_val, seed)
    except (DataError, OSError):
        if os.path.isfile(os.path.join(root, "meta.json")):  # another process won the race
            return root
        raise
