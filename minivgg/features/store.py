"""The features file: one plain .npz, written atomically, read without pickle.

Keys:
    format        "minivgg-features-1"
    features      (N, D) float32, L2-normalised rows (extract.py)
    labels        (N,) int64, indices into classes
    classes       (K,) str
    files         (N,) str, each image's path relative to the data folder
    blocks        (B,) str and block_dims (B,) int64: what the columns are, in order
                  (one block per net and scale when stacked, per net when averaged)
    pixels        (N, P) uint8, optional: the raw-pixel baseline's vectors
    info          JSON text: checkpoints, scales, aggregate, flip, data, seconds, ...

Only NumPy numbers and unicode strings, so np.load(allow_pickle=False) reads it; a file
from elsewhere that holds object arrays (pickles) is refused, as checkpoints are.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from minivgg.errors import UserError

FORMAT = "minivgg-features-1"


def save(path, features, labels, classes, files=None, blocks=None, pixels=None, info=None):
    """Write a features file atomically (a temp file in the same folder, renamed)."""
    features = np.asarray(features, dtype=np.float32)
    blocks = blocks or [("features", features.shape[1])]
    arrays = dict(format=np.array(FORMAT), features=features,
                  labels=np.asarray(labels, dtype=np.int64),
                  classes=np.array([str(c) for c in classes]),
                  files=np.array([str(f) for f in files or []]),
                  blocks=np.array([str(n) for n, _ in blocks]),
                  block_dims=np.array([int(d) for _, d in blocks], dtype=np.int64),
                  info=np.array(json.dumps(info or {}, sort_keys=True)))
    if pixels is not None:
        arrays["pixels"] = np.asarray(pixels, dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: never leave the temp file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read(path):
    """{key: array}, or a one-line UserError saying why not."""
    if not os.path.isfile(path):
        raise UserError(f"features file {path} not found")
    key = None
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, "files"):  # a bare .npy array, not an .npz archive
            raise UserError(f"{path} holds a single array, not a features .npz")
        with f:
            out = {}
            for key in f.files:  # read everything now: a truncated member fails here
                out[key] = f[key]
            return out
    except ValueError as e:
        if "pickle" in str(e):
            what = "is a pickle, not an .npz" if key is None else \
                f"holds a pickled object array ({key!r})"
            raise UserError(f"{path} {what}; features are loaded without pickle, "
                            "refusing it") from None
        raise UserError(f"{path} is not a readable .npz file ({_line(e)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a readable .npz file ({_line(e)})") from None


def _line(e):
    """An exception's message, first line only (errors are one line)."""
    return (str(e).splitlines() or [type(e).__name__])[0]


def load(path):
    """A features file as a dict of checked arrays (see the module docstring); anything
    missing or inconsistent is a one-line UserError naming it."""
    a = _read(path)
    if "format" in a and str(a["format"]) != FORMAT:
        raise UserError(f"{path} is a {str(a['format'])!r} file, not {FORMAT!r}")
    for key in ("features", "labels"):
        if key not in a:
            raise UserError(f"{path} has no {key!r} array: not a features file "
                            "(python -m minivgg.features extract writes one)")
    X, y = a["features"], a["labels"]
    if X.ndim != 2 or X.dtype.kind != "f" or not np.isfinite(X).all():
        raise UserError(f"{path}: 'features' must be a finite 2-D float array, got "
                        f"{X.dtype} of shape {X.shape}")
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(X):
        raise UserError(f"{path}: 'labels' must be {len(X)} integers (one per row of "
                        f"'features'), got {y.dtype} of shape {y.shape}")
    classes = [str(c) for c in a.get("classes", np.arange(y.max() + 1 if len(y) else 0))]
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise UserError(f"{path}: labels run from {y.min()} to {y.max()} but there are "
                        f"{len(classes)} classes")
    files = [str(f) for f in a.get("files", [])]
    if files and len(files) != len(X):
        raise UserError(f"{path}: {len(files)} file names for {len(X)} descriptors")
    pixels = a.get("pixels")
    if pixels is not None and (pixels.ndim != 2 or len(pixels) != len(X)):
        raise UserError(f"{path}: 'pixels' has shape {pixels.shape}, expected "
                        f"({len(X)}, P)")
    dims = [int(d) for d in a.get("block_dims", [])]
    if dims and sum(dims) != X.shape[1]:
        raise UserError(f"{path}: the blocks add up to {sum(dims)} columns, the features "
                        f"have {X.shape[1]}")
    info = json.loads(str(a["info"])) if "info" in a else {}
    return dict(features=X, labels=y.astype(np.int64), classes=classes, files=files,
                pixels=pixels, info=info, blocks=[str(b) for b in a.get("blocks", [])],
                block_dims=dims)
