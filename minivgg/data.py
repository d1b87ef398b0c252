"""Data: image folders read with Pillow, the built-in "shapes" set, the paper's augmentation.

    ImageFolder(root, split)      ROOT/train/<class>/*, ROOT/val/<class>/* (torchvision's
                                  layout); any Pillow mode -> RGB uint8; unreadable files
                                  skipped, counted, one warning
    make_shapes / ensure_shapes   a seeded, procedurally drawn 10-class set (PNG tree +
                                  bboxes.csv), cached under $MINIVGG_DATA or ~/.cache/minivgg
    rescale, random_crop, center_crop, hflip, pca_lighting, subtract_mean
                                  the training-time transforms (VGG sect. 3.1, AlexNet 4.1)
    rgb_statistics                mean RGB and the PCA of RGB pixels, from the training set
    Loader                        shuffled, augmented NCHW float32 batches, prepared in
                                  background threads; reproducible per (seed, epoch, index)
    linear_baseline               ridge regression on raw pixels: how hard is a data set?

The pipeline of one training sample (VGG sect. 3.1 "Training image size", sect. 2.1):
isotropic rescale so the smallest side is S (fixed, or drawn per image from
[Smin, Smax]: scale jittering) -> a random crop x crop patch -> a random horizontal flip
-> AlexNet's PCA colour shift (sect. 4.1 of Krizhevsky et al.) -> subtract the training
set's mean RGB (VGG sect. 2.1). Validation: rescale to a fixed `val_scale`, centre crop,
mean subtraction, nothing random.

Command line:

    python -m minivgg.data shapes DIR --size 64 --train 5000 --val 1000 --seed 0
    python -m minivgg.data baseline ROOT          # ridge regression on raw pixels

How hard is "shapes"? A linear classifier on raw pixels (`linear_baseline`) is near
chance, because the colour, position, tilt and size of the object and the textured,
cluttered background are all random; only the outline tells the class. Measured on the
default set (shapes-v3-64px-5000-1000-seed0): ridge regression on 16x16 pixels 16.0% val
top-1 (44.3% train); chance is 10%. Objects stand upright, tilted by up to 30 degrees:
with full 360-degree rotation the default CPU run of VGG-B spent its first three epochs
on the ln(10) plateau and ended at 85-93%; upright, it reaches 97% in the same time.

    python -m minivgg.data shapes /tmp/shapes && python -m minivgg.data baseline /tmp/shapes

Default size, 64 px, 500 train + 100 val images per class: 64 px leaves room for training
scales S in [32, 40] and beyond (always a downscale, so anti-aliased) with 32 px crops;
5000 training images are 61 MB decoded (cached in memory) and take about 25 s to draw on
2 cores; 1000 val images measure a 95% accuracy to +-0.7% (one standard error).
"""
import argparse
import collections
import concurrent.futures
import csv
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from minivgg.errors import UserError, run_cli

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm")

# Decoded images are kept in memory when they fit: the sets used here are small, and a
# 64x64 PNG costs more to decode than to augment.
CACHE_LIMIT_MB = 1024


class DataError(UserError, ValueError):
    """Bad data or a bad data argument: a one-line UserError that is also a ValueError."""


class SkippedImagesWarning(UserWarning):
    """Some files in an image folder could not be decoded and were left out."""


# ============================================================================================
# Image folders
# ============================================================================================
def to_rgb(im):
    """A Pillow image of any mode -> HxWx3 uint8 RGB array.

    - 16-bit greyscale (I;16*, and I, which is how 16-bit PNG/TIFF used to open) is scaled
      by 255/65535 (rounded), not clipped: Pillow's own convert() clips to 0..255, which
      would turn almost every 16-bit image white.
    - F (float) is clipped to 0..255 (Pillow's convention).
    - Transparency (RGBA, LA, PA, P with a transparent index) is composited onto black,
      i.e. colour * alpha (premultiplied): a transparent pixel has no colour to show.
    - CMYK, YCbCr, P, 1, L: Pillow's convert("RGB").
    """
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if mode == "F":
            a = np.clip(a, 0, 255)
        else:
            a = np.clip(a.astype(np.float64), 0, 65535) * (255.0 / 65535.0)
        g = np.rint(a).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        if mode in ("La", "RGBa"):  # already premultiplied
            return rgba[:, :, :3].astype(np.uint8)
        return np.rint(rgba[:, :, :3] * (rgba[:, :, 3:] / 255.0)).astype(np.uint8)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def read_image(path):
    """Decode one file fully (load(), so a truncated file fails here) -> HxWx3 uint8 RGB.

    EXIF orientation is applied, so a portrait photo stored sideways comes out upright.
    Raises whatever Pillow raises for a bad file; ImageFolder turns that into a skip.
    """
    with Image.open(path) as im:
        im.load()
        if im.format in ("JPEG", "TIFF", "WEBP", "PNG") and im.getexif().get(0x0112, 1) != 1:
            im = ImageOps.exif_transpose(im)
        return to_rgb(im)


def _list_class(folder):
    """Image files under one class folder (recursively, sorted; hidden files ignored)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                out.append(os.path.join(dirpath, f))
    return out


def _class_dirs(folder):
    return sorted(d for d in os.listdir(folder)
                  if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


class ImageFolder:
    """ROOT/<split>/<class>/<image>: labels are the index of the class name, sorted.

    The classes are those of ROOT/train when it exists (for every split, so that a label
    means the same class in train and val), else those of the split; `classes` overrides.

    Every file is decoded once here, with load(), so that unreadable and truncated files
    are found now (skipped, counted in `skipped`, one SkippedImagesWarning), not in the
    middle of an epoch. The decoded RGB uint8 arrays are kept in memory when `cache` is
    True, or when it is "auto" and they fit in `cache_limit_mb`.

    Attributes: root, split, classes, class_to_idx, samples [(path, label)], targets
    (int32), skipped [paths]. dataset[i] -> (HxWx3 uint8 array, int label).
    """

    def __init__(self, root, split="train", classes=None, cache="auto",
                 cache_limit_mb=CACHE_LIMIT_MB, workers=2, progress=False):
        self.root, self.split = str(root), split
        folder = os.path.join(self.root, split)
        if not os.path.isdir(self.root):
            raise DataError(f"data root {self.root} does not exist or is not a directory")
        if not os.path.isdir(folder):
            raise DataError(f"no {split!r} split in {self.root}: expected a directory {folder}")
        self.classes = list(classes) if classes is not None else self._default_classes(folder)
        if not self.classes:
            raise DataError(f"no class folders in {folder}: expected {folder}/<class>/<image>")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        files = self._list_files(folder)
        self._cache_limit = (math.inf if cache is True else 0 if cache is False
                             else cache_limit_mb * 2**20)
        self._scan(files, folder, workers, progress)

    def _default_classes(self, folder):
        train = os.path.join(self.root, "train")
        return _class_dirs(train if os.path.isdir(train) else folder)

    def _list_files(self, folder):
        """[(path, label)]; an empty class folder or an unknown class is an error."""
        present = _class_dirs(folder)
        unknown = [c for c in present if c not in self.class_to_idx]
        if unknown:
            raise DataError(f"class folder {os.path.join(folder, unknown[0])} is not one of "
                            f"the training classes ({len(self.classes)} in "
                            f"{os.path.join(self.root, 'train')})")
        files = []
        for c in present:
            paths = _list_class(os.path.join(folder, c))
            if not paths:
                raise DataError(f"class folder {os.path.join(folder, c)} has no image files "
                                f"({', '.join(IMAGE_EXTENSIONS[:5])}, ...)")
            files += [(p, self.class_to_idx[c]) for p in paths]
        return files

    def _scan(self, files, folder, workers, progress):
        """Decode every file once: keep the readable ones, cache them if they fit."""
        def decode(path):
            try:
                return read_image(path)
            except Exception:  # any failure to decode is a bad file (Pillow raises many kinds)
                return None

        self.samples, self.skipped, images, nbytes = [], [], [], 0
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            decoded = pool.map(decode, [p for p, _ in files])
            if progress:
                from tqdm import tqdm
                decoded = tqdm(decoded, total=len(files), desc=f"reading {folder}", unit="img")
            for (path, label), img in zip(files, decoded):
                if img is None:
                    self.skipped.append(path)
                    continue
                self.samples.append((path, label))
                nbytes += img.nbytes
                if images is not None and nbytes <= self._cache_limit:
                    img.flags.writeable = False  # shared with every epoch: never edit it
                    images.append(img)
                else:
                    images = None  # over the limit: read from disk each time instead
        self._images = images
        self._check_readable(folder)

    def _check_readable(self, folder):
        if not self.samples:
            raise DataError(f"no readable image in {folder} "
                            f"({len(self.skipped)} file(s) could not be decoded)")
        have = set(label for _, label in self.samples)
        for c in _class_dirs(folder):
            if self.class_to_idx[c] not in have:
                raise DataError(f"class folder {os.path.join(folder, c)} has no readable image")
        if self.skipped:
            names = ", ".join(os.path.relpath(p, self.root) for p in self.skipped[:3])
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            warnings.warn(f"skipped {len(self.skipped)} unreadable image(s) in {folder}: "
                          f"{names}{more}", SkippedImagesWarning, stacklevel=3)
        self.targets = np.array([label for _, label in self.samples], dtype=np.int32)

    @property
    def cached(self):
        return self._images is not None

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        if self._images is not None:
            return self._images[i], label
        try:
            return read_image(path), label
        except Exception as e:
            raise DataError(f"cannot read image {path}: {e}") from None

    def __repr__(self):
        return (f"ImageFolder({self.root!r}, {self.split!r}: {len(self)} images, "
                f"{len(self.classes)} classes, {len(self.skipped)} skipped)")


class ArrayDataset:
    """In-memory images (a list of HxWx3 uint8 arrays or an NxHxWx3 array) and labels."""

    def __init__(self, images, labels, classes=None):
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.targets = images, np.asarray(labels, dtype=np.int32)
        n = int(self.targets.max()) + 1 if len(self.targets) else 0
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


# ============================================================================================
# Transforms (VGG sect. 3.1 and 2.1; AlexNet sect. 4.1)
# ============================================================================================
def sample_scale(scale, rng):
    """S for one image: a fixed int S, or (Smin, Smax) -> uniform integer in [Smin, Smax]."""
    if isinstance(scale, (tuple, list)):
        lo, hi = scale
        return int(rng.integers(lo, hi + 1))
    return int(scale)


def rescale(img, S, resample=Image.BILINEAR):
    """Isotropic rescale so the smallest side is exactly S (sect. 3.1, "training scale").

    The other side is rounded, keeping the aspect ratio. uint8 images go through Pillow as
    RGB; float32 images channel by channel (mode F). Pillow widens the filter when it
    shrinks, so downscaling is anti-aliased. Pillow releases the GIL while resizing, which
    is what lets Loader's threads run in parallel.
    """
    H, W = img.shape[:2]
    if S < 1:
        raise DataError(f"rescale: S must be >= 1, got {S}")
    if H <= W:
        size = (max(1, round(W * S / H)), S)   # Pillow's size is (width, height)
    else:
        size = (S, max(1, round(H * S / W)))
    if size == (W, H):
        return img
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize(size, resample))
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c], np.float32))
                        .resize(size, resample)) for c in range(img.shape[2])]
    return np.stack(chans, axis=2)


def _check_crop(img, crop):
    H, W = img.shape[:2]
    if crop > min(H, W):
        raise DataError(f"crop {crop} is larger than the image ({H}x{W}); "
                        f"rescale to a smallest side >= {crop} first")


def random_crop(img, crop, rng):
    """A crop x crop patch at a uniformly random position (AlexNet 4.1, VGG 3.1)."""
    _check_crop(img, crop)
    H, W = img.shape[:2]
    y = int(rng.integers(0, H - crop + 1))
    x = int(rng.integers(0, W - crop + 1))
    return img[y:y + crop, x:x + crop]


def center_crop(img, crop):
    """The central crop x crop patch (validation; offsets rounded down)."""
    _check_crop(img, crop)
    H, W = img.shape[:2]
    y, x = (H - crop) // 2, (W - crop) // 2
    return img[y:y + crop, x:x + crop]


def hflip(img):
    """Mirror left-right (a view)."""
    return img[:, ::-1]


def random_flip(img, rng, p=0.5):
    """Horizontal reflection with probability p (AlexNet 4.1, VGG 3.1)."""
    return hflip(img) if rng.random() < p else img


def rgb_statistics(source):
    """(mean_rgb, eigval, eigvec) of the RGB pixels of a training set, in [0, 255] units.

    source: a dataset (dataset[i] -> (image, label)), a list of HxWx3 arrays, or one array
    whose last axis is RGB. Computed once, in float64, streaming over images.

    mean_rgb (3,): the mean RGB value subtracted from every pixel (VGG sect. 2.1).
    eigval (3,), descending, and eigvec (3, 3), one unit eigenvector per COLUMN: the
    eigen-decomposition of the 3x3 covariance of RGB pixel values (AlexNet sect. 4.1).
    Each eigenvector's largest component is made positive, so the result is deterministic.
    """
    n, s, ss = 0, np.zeros(3), np.zeros((3, 3))
    for img in _images_of(source):
        x = np.asarray(img, dtype=np.float64).reshape(-1, 3)
        n += len(x)
        s += x.sum(axis=0)
        ss += x.T @ x
    if n == 0:
        raise DataError("rgb_statistics: no pixels")
    mean = s / n
    cov = ss / n - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), range(3)])
    return mean, eigval, eigvec * signs


def _images_of(source):
    if isinstance(source, np.ndarray):
        yield source
    elif hasattr(source, "__getitem__") and hasattr(source, "__len__") and len(source) \
            and isinstance(source[0], tuple):
        for i in range(len(source)):
            yield source[i][0]
    else:
        yield from source


def pca_lighting(img, eigval, eigvec, rng, std=0.1):
    """AlexNet's colour augmentation (Krizhevsky et al. sect. 4.1): add one RGB shift.

    shift = eigvec @ (alpha * sqrt(eigval)), alpha ~ N(0, std^2), 3 values drawn once per
    image, added to every pixel. img: HxWx3 float (pixels in [0, 255]), returns float32.

    Why sqrt: the paper writes alpha_i * lambda_i with lambda_i an eigenvalue of the
    covariance, but an eigenvalue is in squared pixel units (~5000 for [0, 255] images),
    so taken literally the shift would be hundreds of grey levels. sqrt(lambda_i) is the
    standard deviation along principal axis i, so the shift is 10% of the natural colour
    spread per axis (about +-10 grey levels on natural images), which is what the paper's
    "magnitudes proportional to the eigenvalues" needs to mean to be a small lighting
    change. (Public reimplementations ship eigval tables of this kind.)
    """
    shift = pca_shift(eigval, eigvec, rng.normal(0.0, std, size=3))
    return np.asarray(img, dtype=np.float32) + shift.astype(np.float32)


def pca_shift(eigval, eigvec, alpha):
    """The RGB shift for given alphas: eigvec @ (alpha * sqrt(eigval)), shape (3,)."""
    return np.asarray(eigvec) @ (np.asarray(alpha) * np.sqrt(np.asarray(eigval)))


def subtract_mean(img, mean_rgb):
    """float32 img - the training set's mean RGB (VGG sect. 2.1, the only pre-processing)."""
    return np.asarray(img, dtype=np.float32) - np.asarray(mean_rgb, dtype=np.float32)


def normalise(img, mean_rgb, std_rgb=None):
    """The network's input: img - mean RGB (the paper), then / std RGB when given.

    The paper feeds mean-subtracted pixels (spread ~60) to nets initialised with
    N(0, 0.01^2). Variance-preserving initialisations (Glorot, Kaiming) expect inputs of
    unit spread, so for those the presets also divide by the per-channel std.
    """
    x = subtract_mean(img, mean_rgb)
    if std_rgb is not None:
        x = x / np.asarray(std_rgb, dtype=np.float32)
    return x


def channel_std(eigval, eigvec):
    """Per-channel standard deviation from the RGB covariance's eigen-decomposition."""
    cov = eigvec @ np.diag(eigval) @ eigvec.T
    return np.sqrt(np.diag(cov)).astype(np.float32)


# ============================================================================================
# Loader
# ============================================================================================
class Loader:
    """Batches (x float32 (B, 3, crop, crop) NCHW C-contiguous, y int32 (B,)) for one epoch.

    train=True: shuffle, S fixed (scale=int) or jittered per image (scale=(Smin, Smax),
    VGG sect. 3.1), random crop, random flip (flip=True), PCA colour shift (pca=(eigval,
    eigvec)), mean subtraction. train=False: no shuffle, rescale to `val_scale`, centre
    crop, mean subtraction, nothing random. val_scale defaults to the paper's single test
    scale (sect. 4.1): Q = S for a fixed S, Q = (Smin + Smax) // 2 for a jittered one,
    the scale the net saw most often in training.

    Reproducible: sample i of epoch e draws from np.random.default_rng([seed, e, i]) and
    the epoch's order from default_rng([seed, e]), so batches do not depend on thread
    timing, `workers` or `prefetch`. Iterating runs epoch `self.epoch` and then advances
    it; set_epoch(e) picks the next one (e.g. when resuming).

    Batches are made by `workers` threads (0: in the caller's thread), at most `prefetch`
    batches ahead. Stopping early (break, an exception, close()) cancels what is queued
    and joins the threads.
    """

    def __init__(self, dataset, batch_size, train, crop, scale, mean_rgb, pca=None,
                 flip=True, seed=0, workers=2, prefetch=4, drop_last=False, val_scale=None,
                 std_rgb=None):
        self.dataset, self.batch_size, self.train = dataset, int(batch_size), bool(train)
        self.crop, self.scale, self.seed = int(crop), scale, int(seed)
        self.mean_rgb = np.asarray(mean_rgb, dtype=np.float32).reshape(3)
        self.std_rgb = None if std_rgb is None else np.asarray(std_rgb, np.float32).reshape(3)
        self.pca, self.flip = pca, flip
        self.workers, self.prefetch, self.drop_last = int(workers), int(prefetch), drop_last
        self.val_scale = int(val_scale if val_scale is not None else
                             sum(scale) // 2 if isinstance(scale, (tuple, list)) else scale)
        self.epoch = 0
        self._check()

    def _check(self):
        if self.batch_size < 1 or self.prefetch < 1 or self.workers < 0:
            raise DataError(f"batch_size and prefetch must be >= 1 and workers >= 0, got "
                            f"{self.batch_size}, {self.prefetch}, {self.workers}")
        if isinstance(self.scale, (tuple, list)):
            lo, hi = self.scale
            if not lo <= hi:
                raise DataError(f"scale range ({lo}, {hi}) needs Smin <= Smax")
        smallest = min(self._scales())
        if smallest < self.crop:
            raise DataError(f"scale {smallest} is smaller than the crop {self.crop}: "
                            f"S must be >= crop (VGG sect. 3.1)")
        if len(self.dataset) == 0:
            raise DataError("the dataset is empty")

    def _scales(self):
        if not self.train:
            return [self.val_scale]
        return list(self.scale) if isinstance(self.scale, (tuple, list)) else [self.scale]

    def __len__(self):
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def order(self, epoch):
        """The sample indices of an epoch: a permutation (train) or 0..n-1 (val)."""
        n = len(self.dataset)
        if not self.train:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def sample(self, index, epoch=0):
        """One sample, augmented: (3 x crop x crop float32, label)."""
        img, label = self.dataset[index]
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, int(index)])
            img = random_crop(rescale(img, sample_scale(self.scale, rng)), self.crop, rng)
            if self.flip:
                img = random_flip(img, rng)
            x = np.asarray(img, dtype=np.float32)
            if self.pca is not None:
                x = pca_lighting(x, self.pca[0], self.pca[1], rng)
        else:
            x = np.asarray(center_crop(rescale(img, self.val_scale), self.crop),
                           dtype=np.float32)
        return normalise(x, self.mean_rgb, self.std_rgb).transpose(2, 0, 1), label

    def _batch(self, indices, epoch):
        x = np.empty((len(indices), 3, self.crop, self.crop), dtype=np.float32)
        y = np.empty(len(indices), dtype=np.int32)
        for j, i in enumerate(indices):
            x[j], y[j] = self.sample(i, epoch)
        return x, y

    def _chunks(self, epoch):
        idx, b = self.order(epoch), self.batch_size
        stop = len(self) * b
        return [idx[k:k + b] for k in range(0, min(stop, len(idx)), b)]

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)

    def batches(self, epoch):
        """A generator of the batches of one epoch (does not touch self.epoch)."""
        chunks = self._chunks(epoch)
        if self.workers == 0:
            for c in chunks:
                yield self._batch(c, epoch)
            return
        pool = concurrent.futures.ThreadPoolExecutor(self.workers,
                                                     thread_name_prefix="minivgg-loader")
        todo, pending = iter(chunks), collections.deque()
        try:
            # Keep `prefetch` batches in flight or ready: the bounded queue.
            for c in itertools.islice(todo, self.prefetch):
                pending.append(pool.submit(self._batch, c, epoch))
            while pending:
                batch = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self._batch, nxt, epoch))
                yield batch
        finally:
            # Runs on exhaustion, on break (generator closed), and on errors.
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


# ============================================================================================
# The built-in "shapes" data set
# ============================================================================================
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


def render_shape(cls, rng, n=64, d=None):
    """One shapes image: (HxWx3 uint8, bbox (x0, y0, x1, y1), object coverage HxW float).

    cls: a class name or index into SHAPE_CLASSES; d: the object's diameter in pixels
    (default: random in SIZE_RANGE). The bbox is in pixel-edge coordinates, the object
    covers [x0, x1) x [y0, y1): the smallest integer box around every pixel it touches.
    """
    name = SHAPE_CLASSES[cls] if isinstance(cls, (int, np.integer)) else cls
    d = d if d is not None else rng.uniform(*SIZE_RANGE) * n
    out = _background(rng, n)
    _clutter(rng, n, out)
    obj = _Layer(n)
    parts = _place(SHAPES[name], rng, n, d)
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


# ============================================================================================
# How hard is a data set? A linear classifier on raw pixels
# ============================================================================================
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


# ============================================================================================
# Command line
# ============================================================================================
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivgg.data",
                                description="Data sets for minivgg: draw the built-in "
                                            "shapes set; measure a linear baseline.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("shapes", help="draw the shapes set as an image-folder tree (PNG)")
    s.add_argument("dir", help="the data set root to create (must not exist, or be empty)")
    s.add_argument("--size", type=int, default=SHAPES_DEFAULTS["size"],
                   help="image side in pixels (default %(default)s)")
    s.add_argument("--train", type=int, default=SHAPES_DEFAULTS["n_train"],
                   help="training images, all classes together (default %(default)s)")
    s.add_argument("--val", type=int, default=SHAPES_DEFAULTS["n_val"],
                   help="validation images (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--workers", type=int, default=2, help="drawing threads (default 2)")
    b = sub.add_parser("baseline", help="val top-1 of ridge regression on raw pixels")
    b.add_argument("root", help="an image-folder root with train/ and val/")
    b.add_argument("--side", type=int, default=16, help="pixels per side (default 16)")
    args = p.parse_args(argv)
    if args.command == "shapes":
        t0 = time.perf_counter()
        root = make_shapes(args.dir, args.size, args.train, args.val, args.seed,
                           workers=args.workers)
        print(f"wrote {args.train} + {args.val} images to {root} "
              f"in {time.perf_counter() - t0:.1f} s")
    else:
        r = linear_baseline(args.root, args.side)
        print(f"linear baseline (ridge, {args.side}x{args.side} px, lambda {r['lam']:g}): "
              f"val top-1 {100 * r['accuracy']:.1f}%  train {100 * r['train_accuracy']:.1f}%"
              f"  chance {100 * r['chance']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
