"""Image folders: ROOT/<split>/<class>/<image>, read with Pillow (torchvision's layout).

    ImageFolder(root, split)   every file decoded once, up front: unreadable and truncated
                               ones are skipped and listed (`skipped`), not met mid-epoch;
                               any Pillow mode -> RGB uint8; cached in memory when it fits
    ArrayDataset               in-memory images and labels, the same interface
    read_image, to_rgb         one file -> HxWx3 uint8 RGB
"""
import concurrent.futures
import math
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from minivgg.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm")

# Decoded images are kept in memory when they fit: the sets used here are small, and a
# 64x64 PNG costs more to decode than to augment.
CACHE_LIMIT_MB = 1024


class SkippedImagesWarning(UserWarning):
    """Some files in an image folder could not be decoded and were left out."""


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


def class_folders(folder):
    """The class names under a split folder: its sub-folders, sorted, hidden ones left out."""
    return sorted(d for d in os.listdir(folder)
                  if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


class ImageFolder:
    """ROOT/<split>/<class>/<image>: labels are the index of the class name, sorted.

    The classes are those of ROOT/train when it exists (for every split, so that a label
    means the same class in train and val), else those of the split; `classes` overrides.

    Every file is decoded once here, with load(), so that unreadable and truncated files
    are found now (skipped and listed in `skipped`), not in the
    middle of an epoch. The decoded RGB uint8 arrays are kept in memory when `cache` is
    True, or when it is "auto" and they fit in `cache_limit_mb`.

    Attributes: root, split, classes, class_to_idx, samples [(path, label)], targets
    (int32), skipped [paths]. dataset[i] -> (HxWx3 uint8 array, int label).

    warn=True reports skipped files as one SkippedImagesWarning (for library use); a
    command line passes warn=False and prints skipped_line() itself: Python's warnings
    print the warning's source line too, which is noise to a user.
    """

    def __init__(self, root, split="train", classes=None, cache="auto",
                 cache_limit_mb=CACHE_LIMIT_MB, workers=2, progress=False, warn=True):
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
        if self.skipped and warn:  # stacklevel 2: the warning names the caller's line
            warnings.warn(self.skipped_line(), SkippedImagesWarning, stacklevel=2)

    def _default_classes(self, folder):
        train = os.path.join(self.root, "train")
        return class_folders(train if os.path.isdir(train) else folder)

    def _list_files(self, folder):
        """[(path, label)]; an empty class folder or an unknown class is an error."""
        present = class_folders(folder)
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
        for c in class_folders(folder):
            if self.class_to_idx[c] not in have:
                raise DataError(f"class folder {os.path.join(folder, c)} has no readable image")
        self.targets = np.array([label for _, label in self.samples], dtype=np.int32)

    def skipped_line(self, shown=5):
        """One plain line naming the skipped files (relative to the split folder, the
        first `shown` of them), or None when every file was read."""
        if not self.skipped:
            return None
        folder = os.path.join(self.root, self.split)
        names = [os.path.relpath(p, folder) for p in self.skipped]
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        plural = "s" if len(names) > 1 else ""
        return (f"skipped {len(names)} unreadable image{plural} in {folder}: "
                f"{', '.join(names[:shown])}{more}")

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


def write_skipped(datasets, path):
    """Write every file the datasets skipped, one path a line, to `path` (atomically).
    Returns path, or None (and writes nothing) when nothing was skipped."""
    skipped = [p for ds in datasets for p in getattr(ds, "skipped", [])]
    if not skipped:
        return None
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(p + "\n" for p in skipped)
    os.replace(tmp, path)
    return path
