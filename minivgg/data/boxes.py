"""Bounding boxes for localisation (VGG appendix A): reading a split's bboxes.csv, boxes
through every augmentation, the 4-number code the localisation net regresses, IoU.

Two forms of a box:

    corners  (x0, y0, x1, y1): pixel-edge coordinates, the object covers [x0, x1) x
             [y0, y1) (bboxes.csv's form). Resizing, cropping and flipping move pixel
             edges linearly, so a box follows an image exactly.
    code     (cx, cy, w, h): what the net regresses (A.1: "its center coordinates, width,
             and height"), in units of the crop side, the centre measured from the crop's
             centre: cx = ((x0 + x1) / 2 - crop / 2) / crop, w = (x1 - x0) / crop.

Why the crop side: the net sees a crop x crop window, so a box in window units means the
same at any training scale S and test scale Q, and dense evaluation (A.1, protocol 2)
decodes every position's prediction the same way, offset by its window. Why from the
centre: a box around the middle of the window codes as about (0, 0, w, h), so a fresh
last layer (outputs near 0) starts near the targets, and a flip is cx -> -cx. All four
numbers are of order 1, so the Euclidean loss weighs position and size alike.

Augmentation (sect. 3.1, as for classification): rescale (the box scales with the
image), random crop, horizontal flip. A crop can cut the object away, and a window that
shows nothing of it has nothing to regress from: BoxLoader draws the crop uniformly among
the positions that show at least half of the object (min_visible = 0.5 of the most any
crop can show, min(w, crop) x min(h, crop) pixels), as OverFeat (Sermanet et al. 2014,
sect. 4.2) trained its regressor only on windows that overlap the object by half or
more. (On shapes at S = 64, protocol 2 over a 5 x 5 grid: 16% error at 0.5, 20% at 0.25,
23% with any overlap.) The target is the whole box in crop units ("whole", default: it
may reach outside the window; a window that sees part of the object predicts all of it,
which merging the windows' boxes needs) or the box clipped to the crop ("clipped": only
what the window shows; 78% protocol-1 error on shapes against 28%, as the ground truth
is the whole box).
"""
import csv
import os

import numpy as np
from PIL import Image

from minivgg import backend
from minivgg.data.errors import DataError
from minivgg.data.folders import ImageFolder
from minivgg.data.loader import Loader
from minivgg.data.transforms import normalise, pca_lighting, rescale, sample_scale

BOX_TARGETS = ("whole", "clipped")
MIN_VISIBLE = 0.5  # of the object, in every training crop (crop_offsets)
COLUMNS = ("file", "class", "x0", "y0", "x1", "y1")


# -- geometry ------------------------------------------------------------------------------
def rescale_box(box, old_hw, new_hw):
    """Corners of an image of (H, W) resized to (H', W'): x * W'/W, y * H'/H."""
    fy, fx = new_hw[0] / old_hw[0], new_hw[1] / old_hw[1]
    return np.asarray(box, np.float64) * [fx, fy, fx, fy]


def crop_box(box, y, x):
    """Corners in the frame of a crop whose top-left corner is (y, x)."""
    return np.asarray(box, np.float64) - [x, y, x, y]


def clip_box(box, h, w):
    """Corners clipped to [0, w] x [0, h]."""
    x0, y0, x1, y1 = box
    return np.array([min(max(x0, 0), w), min(max(y0, 0), h),
                     min(max(x1, 0), w), min(max(y1, 0), h)], np.float64)


def hflip_box(box, w):
    """Corners mirrored left-right in an image of width w: [x0, x1) -> [w - x1, w - x0)."""
    x0, y0, x1, y1 = box
    return np.array([w - x1, y0, w - x0, y1], np.float64)


def encode(box, crop):
    """Corners in a crop's frame -> code (cx, cy, w, h) in crop units from its centre."""
    x0, y0, x1, y1 = box
    return np.array([((x0 + x1) / 2 - crop / 2) / crop, ((y0 + y1) / 2 - crop / 2) / crop,
                     (x1 - x0) / crop, (y1 - y0) / crop], np.float64)


def decode(code, crop):
    """Codes (..., 4) -> corners (..., 4) in the crop's frame (any array module)."""
    c = code * crop
    cx, cy = c[..., 0] + crop / 2, c[..., 1] + crop / 2
    hw, hh = c[..., 2] / 2, c[..., 3] / 2
    return backend.array_module(code).stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=-1)


def iou(a, b):
    """Intersection over union of corner boxes (..., 4), broadcast; any array module.
    A box with x1 <= x0 or y1 <= y0 is empty: IoU 0 with everything (0/0 included)."""
    xp = backend.array_module(a)
    iw = xp.maximum(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]), 0)
    ih = xp.maximum(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]), 0)
    inter = iw * ih
    area_a = xp.maximum(a[..., 2] - a[..., 0], 0) * xp.maximum(a[..., 3] - a[..., 1], 0)
    area_b = xp.maximum(b[..., 2] - b[..., 0], 0) * xp.maximum(b[..., 3] - b[..., 1], 0)
    union = area_a + area_b - inter
    return inter / xp.where(union > 0, union, 1)


def crop_offsets(box, H, W, crop, rng, min_visible=MIN_VISIBLE):
    """(y, x) of a crop x crop window of an H x W image, drawn uniformly among the integer
    positions whose window shows at least `min_visible` of the most of the box that any
    window can show (min(w, crop) x min(h, crop) pixels), and some of it at 0: a crop
    that cuts the object away is never drawn. Never empty: the best window shows it all."""
    x0, y0, x1, y1 = box
    xs, ys = np.arange(W - crop + 1), np.arange(H - crop + 1)
    seen_x = np.clip(np.minimum(x1, xs + crop) - np.maximum(x0, xs), 0, None)  # (W-crop+1,)
    seen_y = np.clip(np.minimum(y1, ys + crop) - np.maximum(y0, ys), 0, None)
    seen = seen_y[:, None] * seen_x[None, :]  # visible area of each window, (y, x)
    most = min(x1 - x0, crop) * min(y1 - y0, crop)
    ok = np.flatnonzero((seen >= min_visible * most * (1 - 1e-9)) & (seen > 0))
    k = int(ok[rng.integers(len(ok))])
    return k // len(xs), k % len(xs)


def centre_offsets(H, W, crop):
    """(y, x) of the central crop, as data.center_crop takes it (rounded down)."""
    return (H - crop) // 2, (W - crop) // 2


# -- bboxes.csv ----------------------------------------------------------------------------
def read_boxes(split_dir):
    """{file relative to split_dir: (class name, corners)} from split_dir/bboxes.csv.

    Columns file,class,x0,y0,x1,y1 (more are ignored); one box per file. A missing or
    malformed file, a box with x1 <= x0 or y1 <= y0, a file listed twice: one-line
    DataError naming the file and row.
    """
    path = os.path.join(split_dir, "bboxes.csv")
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"no bboxes.csv in {split_dir}: localisation needs one box per image "
                        f"({','.join(COLUMNS)})") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not rows or any(c not in rows[0] for c in COLUMNS):
        raise DataError(f"{path}: the first line must name the columns {','.join(COLUMNS)}")
    col = {c: rows[0].index(c) for c in COLUMNS}
    out = {}
    for line, row in enumerate(rows[1:], 2):
        if not row:
            continue
        try:
            box = np.array([float(row[col[k]]) for k in ("x0", "y0", "x1", "y1")])
            name, cls = row[col["file"]], row[col["class"]]
        except (ValueError, IndexError):
            raise DataError(f"{path} line {line}: malformed row {','.join(row)!r}") from None
        if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
            raise DataError(f"{path} line {line}: box {box.tolist()} of {name} needs "
                            "x0 < x1 and y0 < y1")
        if name in out:
            raise DataError(f"{path} line {line}: {name} has a second box (one per image)")
        out[name] = (cls, box)
    return out


class BoxFolder(ImageFolder):
    """An ImageFolder whose every image has one box: dataset[i] -> (image, label) as
    before, and boxes[i] its corners (float64, in the image's pixels).

    Checked here, in one line each (DataError): bboxes.csv (read_boxes), an image without
    a box, a box whose class is not the image's folder, a box outside its image.
    """

    def __init__(self, root, split="train", classes=None, **kwargs):
        super().__init__(root, split, classes, **kwargs)
        folder = os.path.join(self.root, split)
        table = read_boxes(folder)
        self.boxes = np.empty((len(self), 4), np.float64)
        for i, (path, label) in enumerate(self.samples):
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel not in table:
                raise DataError(f"image {rel} has no box in {folder}/bboxes.csv")
            cls, box = table[rel]
            if cls != self.classes[label]:
                raise DataError(f"{folder}/bboxes.csv: {rel} is in class folder "
                                f"{self.classes[label]} but its box says {cls}")
            H, W = self._size(i)
            if box[0] < 0 or box[1] < 0 or box[2] > W or box[3] > H:
                raise DataError(f"{folder}/bboxes.csv: box {box.tolist()} of {rel} is "
                                f"outside the {W}x{H} image")
            self.boxes[i] = box

    def _size(self, i):
        """(H, W) of image i: from the cache, or the file's header (no decoding)."""
        if self.cached:
            return self._images[i].shape[:2]
        with Image.open(self.samples[i][0]) as im:
            return im.size[::-1]


# -- the loader ----------------------------------------------------------------------------
class BoxLoader(Loader):
    """Loader of a BoxFolder: batches (x (B, 3, crop, crop), y (B, 5) float32), where
    y[:, 0] is the class label and y[:, 1:] the box code in the crop (encode).

    Training: rescale to S (fixed or jittered), a crop showing at least min_visible of
    the object (crop_offsets), a horizontal flip, the PCA colour shift, normalisation; the
    box follows each step. Validation: rescale to val_scale and the central crop, as
    protocol 1 of A.1 tests. box_target: "whole" or "clipped" (the module docstring).
    Reproducible per (seed, epoch, index), as Loader.
    """

    TARGET_SHAPE, TARGET_DTYPE = (5,), np.float32

    def __init__(self, dataset, *args, box_target="whole", min_visible=MIN_VISIBLE, **kwargs):
        if not 0 <= min_visible <= 1:
            raise DataError(f"min_visible must be in [0, 1], got {min_visible}")
        if box_target not in BOX_TARGETS:
            raise DataError(f"box_target must be one of {', '.join(BOX_TARGETS)}, got "
                            f"{box_target!r}")
        if not hasattr(dataset, "boxes"):
            raise DataError("BoxLoader needs a dataset with boxes (a BoxFolder)")
        self.box_target, self.min_visible = box_target, float(min_visible)
        super().__init__(dataset, *args, **kwargs)

    def sample(self, index, epoch=0):
        """One sample: (3 x crop x crop float32, [label, cx, cy, w, h] float32)."""
        img, label = self.dataset[index]
        box, crop = self.dataset.boxes[index], self.crop
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, int(index)])
            scaled = rescale(img, sample_scale(self.scale, rng))
            box = rescale_box(box, img.shape[:2], scaled.shape[:2])
            y, x = crop_offsets(box, *scaled.shape[:2], crop, rng, self.min_visible)
            img, box = scaled[y:y + crop, x:x + crop], crop_box(box, y, x)
            if self.flip and rng.random() < 0.5:
                img, box = img[:, ::-1], hflip_box(box, crop)
            pixels = np.asarray(img, dtype=np.float32)
            if self.pca is not None:
                pixels = pca_lighting(pixels, self.pca[0], self.pca[1], rng)
        else:
            scaled = rescale(img, self.val_scale)
            box = rescale_box(box, img.shape[:2], scaled.shape[:2])
            y, x = centre_offsets(*scaled.shape[:2], crop)
            pixels = np.asarray(scaled[y:y + crop, x:x + crop], dtype=np.float32)
            box = crop_box(box, y, x)
        if self.box_target == "clipped":
            box = clip_box(box, crop, crop)
        target = np.concatenate([[label], encode(box, crop)]).astype(np.float32)
        return normalise(pixels, self.mean_rgb, self.std_rgb).transpose(2, 0, 1), target
