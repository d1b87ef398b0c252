"""Data: image folders read with Pillow, the built-in "shapes" set, the paper's augmentation,
the loader. One module per concern:

    folders.py     ImageFolder(root, split): ROOT/train/<class>/*, ROOT/val/<class>/*
                   (torchvision's layout); any Pillow mode -> RGB uint8; unreadable files
                   skipped and listed; ArrayDataset; read_image, to_rgb
    shapes.py      make_shapes / ensure_shapes: a seeded, procedurally drawn 10-class set
                   (PNG tree + bboxes.csv), cached under $MINIVGG_DATA or ~/.cache/minivgg
    transforms.py  rescale, random_crop, center_crop, hflip, pca_lighting, normalise, ...:
                   the training-time transforms (VGG sect. 3.1, AlexNet 4.1), and
                   rgb_statistics (mean RGB and the PCA of RGB pixels)
    loader.py      Loader: shuffled, augmented NCHW float32 batches, prepared in background
                   threads; reproducible per (seed, epoch, index)
    digits.py      make_digits / ensure_digits: handwritten-looking digits 0-9, 32x32 grey
                   (LeNet-5's built-in set)
    transfer.py    make_transfer / ensure_transfer: ten NEW shape classes, DIR/<class>/*
                   (no split), for very deep features on another data set (Appendix B)
    boxes.py       localisation (appendix A): read_boxes (bboxes.csv), BoxFolder, BoxLoader
                   (boxes through rescale, crop and flip; crops that show the object),
                   encode/decode (the net's box code), iou
    baseline.py    linear_baseline: ridge regression on raw pixels (how hard is a data set?)
    cli.py         the command line below

Everything public is importable from the package itself (`from minivgg import data;
data.ImageFolder`, `from minivgg.data import rescale`).

The pipeline of one training sample (VGG sect. 3.1 "Training image size", sect. 2.1):
isotropic rescale so the smallest side is S (fixed, or drawn per image from
[Smin, Smax]: scale jittering) -> a random crop x crop patch -> a random horizontal flip
-> AlexNet's PCA colour shift (sect. 4.1 of Krizhevsky et al.) -> subtract the training
set's mean RGB (VGG sect. 2.1). Validation: rescale to a fixed `val_scale`, centre crop,
mean subtraction, nothing random.

Command line:

    python -m minivgg.data shapes DIR --size 64 --train 5000 --val 1000 --seed 0
    python -m minivgg.data digits DIR --size 32 --train 6000 --val 1000 --seed 0
    python -m minivgg.data transfer DIR --size 64 --per-class 80 --seed 0
    python -m minivgg.data baseline ROOT          # ridge regression on raw pixels
"""
from minivgg.data.baseline import linear_baseline
from minivgg.data.boxes import (BOX_TARGETS, MIN_VISIBLE, BoxFolder, BoxLoader, clip_box,
                                crop_box, crop_offsets, decode, encode, hflip_box, iou,
                                read_boxes, rescale_box)
from minivgg.data.cli import main
from minivgg.data.digits import (DIGIT_CLASSES, DIGITS_DEFAULTS, digits_name, ensure_digits,
                                 make_digits, render_digit)
from minivgg.data.errors import DataError
from minivgg.data.folders import (CACHE_LIMIT_MB, IMAGE_EXTENSIONS, ArrayDataset, ImageFolder,
                                  SkippedImagesWarning, class_folders, read_image, to_rgb,
                                  write_skipped)
from minivgg.data.loader import Loader
from minivgg.data.shapes import (MAX_TILT, SHAPE_CLASSES, SHAPES, SHAPES_DEFAULTS,
                                 SHAPES_VERSION, SIZE_RANGE, default_cache_dir, ensure_shapes,
                                 make_shapes, read_bboxes, render_shape, shapes_name)
from minivgg.data.transfer import (TRANSFER_CLASSES, TRANSFER_DEFAULTS, TRANSFER_OUTLINES,
                                   ensure_transfer, make_transfer, transfer_name)
from minivgg.data.transforms import (center_crop, channel_std, hflip, normalise, pca_lighting,
                                     pca_shift, random_crop, random_flip, rescale,
                                     rgb_statistics, sample_scale, subtract_mean)
from minivgg.errors import run_cli

__all__ = [
    "BOX_TARGETS", "BoxFolder", "BoxLoader", "MIN_VISIBLE", "clip_box", "crop_box",
    "crop_offsets", "decode", "encode", "hflip_box", "iou", "read_boxes", "rescale_box",
    "DIGIT_CLASSES", "DIGITS_DEFAULTS", "digits_name", "ensure_digits", "make_digits",
    "render_digit",
    "ArrayDataset", "CACHE_LIMIT_MB", "DataError", "IMAGE_EXTENSIONS", "ImageFolder", "Loader",
    "MAX_TILT", "SHAPES", "SHAPES_DEFAULTS", "SHAPES_VERSION", "SHAPE_CLASSES", "SIZE_RANGE",
    "SkippedImagesWarning", "TRANSFER_CLASSES", "TRANSFER_DEFAULTS", "TRANSFER_OUTLINES",
    "center_crop", "channel_std", "class_folders", "default_cache_dir", "ensure_shapes",
    "ensure_transfer", "hflip", "linear_baseline", "main", "make_shapes", "make_transfer",
    "normalise",
    "pca_lighting", "pca_shift", "random_crop", "random_flip", "read_bboxes", "read_image",
    "render_shape", "rescale", "rgb_statistics", "run_cli", "sample_scale", "shapes_name",
    "subtract_mean", "to_rgb", "transfer_name", "write_skipped",
]
