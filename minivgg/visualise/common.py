"""What every visualise command shares: the checkpoint, the images, the net's view of an
image, layers by name, and writing the results (PNG + JSON).

The view. Every command looks at an image the way validation does (VGG sect. 4.1): rescaled
so its smallest side is the checkpoint's test scale Q, then the central crop x crop
window, the net's input size. Occlusion squares, receptive fields and deconvnet projections
are all in the pixels of that window.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from minivgg import backend, checkpoint
from minivgg.errors import UserError

SPLITS = ("train", "val", "test")


# -- the checkpoint ----------------------------------------------------------------------------
def load(path, scale=None):
    """An evaluate.Net in eval mode (model, meta, scales), its test scale Q = scales[0]."""
    from minivgg.evaluate import load_net
    return load_net(path, [scale] if scale is not None else None)


def feature_rows(model, what="this"):
    """The summary rows of the conv part (features.N), in order; a one-line error for a
    net that is not a chain of layers (NiN, GoogLeNet: minivgg/branches.py)."""
    from minivgg import nn
    if not isinstance(getattr(model, "features", None), nn.Sequential):
        raise UserError(f"{what} walks the layers of a chain (model.features); config "
                        f"{model.config} is not one")
    return [r for r in model.summary() if r.index.startswith("features.")]


def find_layer(model, name):
    """(position in model.features, summary row) of the feature layer called `name`."""
    rows = feature_rows(model, "deconv")
    for i, r in enumerate(rows):
        if r.name == name:
            return i, r
    fc = [r.name for r in model.summary() if r.index.startswith("classifier.")]
    if name in fc:
        raise UserError(f"layer {name!r} is a classifier layer: choose a conv, ReLU, LRN or "
                        f"pool layer ({rows[0].name} ... {rows[-1].name})")
    raise UserError(f"unknown layer {name!r}: choose one of {', '.join(r.name for r in rows)}")


def check_map(row, k):
    """A feature-map index of the layer `row`, or a one-line error naming the range."""
    C = row.out_shape[0]
    if not 0 <= k < C:
        raise UserError(f"map {k} is out of range: layer {row.name} has {C} maps (0-{C - 1})")
    return k


def receptive_box(rows, upto, p, q):
    """(y0, x0, y1, x1): the input pixels [y0, y1) x [x0, x1) that unit (p, q) of layer
    rows[upto] sees (before clipping to the image; padding makes y0 negative at borders).

    The recurrence of lesson 1 with the start added: a unit at p of a layer of kernel k,
    stride s, padding d sees p*s - d ... p*s - d + k - 1 of its input."""
    start, jump, size = 0, 1, 1
    for r in rows[:upto + 1]:
        if r.kind in ("conv", "pool", "subsample"):
            start, size, jump = start - r.padding * jump, size + (r.kernel - 1) * jump, \
                jump * r.stride
    return start + p * jump, start + q * jump, start + p * jump + size, start + q * jump + size


# -- the images --------------------------------------------------------------------------------
@dataclass
class Source:
    """Images to look at: images[i] (HxWx3 uint8), labels[i] (an index into the net's
    classes; -1 when the folder's class is not one of them, or there is none), paths[i]."""
    root: str
    images: object
    labels: np.ndarray
    paths: list

    def __len__(self):
        return len(self.paths)

    def image(self, i):
        return self.images[i][0] if self.dataset else self.images[i]

    @property
    def dataset(self):
        return not isinstance(self.images, list)


def builtin_root(meta):
    """The built-in set a checkpoint of minivgg.train was trained on: the digits for the
    lenet preset, else the shapes, at the size its settings record (drawn if missing)."""
    from minivgg import data
    s = meta.get("settings") or {}
    if s.get("dataset") == "digits":
        return data.ensure_digits(size=s.get("data_size", 32))
    return data.ensure_shapes(size=s.get("data_size", 64))


def is_tree(root):
    """True for ROOT/<split>/<class>/<image> (a train and val tree)."""
    from minivgg.data import class_folders
    return os.path.isdir(root) and bool(set(class_folders(root)) & set(SPLITS))


def read_source(root, split, classes):
    """The images of an image folder, any of three layouts, labelled by the net's `classes`:

        ROOT/<split>/<class>/<image>   (train and val trees: this split)
        ROOT/<class>/<image>           (one folder per class)
        ROOT/<image>                   (no classes: labels -1)
    """
    from minivgg.data import ImageFolder, class_folders
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise UserError(f"--data {root} is not a directory")
    sub = class_folders(root)
    if is_tree(root):
        if split not in sub:
            raise UserError(f"--data {root} has no {split!r} split (it has "
                            f"{', '.join(s for s in sub if s in SPLITS)})")
        parent, leaf = root, split
    elif sub:
        parent, leaf = os.path.dirname(root), os.path.basename(root)
    else:
        return _flat(root)
    names = class_folders(os.path.join(parent, leaf))
    ds = ImageFolder(parent, leaf, classes=names, warn=False)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index.get(names[y], -1) for y in ds.targets], dtype=np.int64)
    return Source(os.path.join(parent, leaf), ds, labels, [p for p, _ in ds.samples])


def _flat(root):
    """ROOT/<image>: every readable image, unlabelled; none at all is an error."""
    from minivgg.data import IMAGE_EXTENSIONS, read_image
    paths = sorted(os.path.join(root, f) for f in os.listdir(root)
                   if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
    images, kept = [], []
    for p in paths:
        try:
            images.append(read_image(p))
            kept.append(p)
        except Exception:  # noqa: BLE001 -- Pillow raises many kinds for a bad file
            continue
    if not kept:
        raise UserError(f"no readable images in {root} (expected ROOT/<class>/<image>, "
                        "ROOT/<split>/<class>/<image> or images in ROOT itself)")
    return Source(root, images, np.full(len(kept), -1, dtype=np.int64), kept)


def data_root(args, net):
    """--data, or the built-in set the checkpoint was trained on."""
    return args.data if args.data is not None else builtin_root(net.meta)


def source_for(args, net, split=None):
    """The images of --data (or the built-in set) for a command, in its --split."""
    return read_source(data_root(args, net), split or args.split, list(net.meta["classes"]))


def pick(labels, n, seed=0):
    """n image indices spread over the classes: one of each class in turn (random within a
    class, seeded), classes in order; unlabelled images count as one class."""
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    out = []
    while len(out) < min(n, len(labels)):
        for pool in pools:
            if pool and len(out) < n:
                out.append(int(pool.pop()))
    return out


def view(img, net):
    """The net's view of an image (uint8): rescaled to Q, the central crop x crop window."""
    from minivgg.data import center_crop, rescale
    return center_crop(rescale(img, net.scales[0]), net.crop)


def batch(views, meta):
    """uint8 views (N, H, W, 3) -> the preprocessed NCHW float32 batch on the device."""
    from minivgg.evaluate import preprocess
    x = np.stack([preprocess(v, meta) for v in views]).astype(np.float32)
    return backend.to_device(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def probabilities(net, x):
    """Soft-max posteriors (N, classes), float64 on the host, of a device batch x."""
    from minivgg.evaluate import softmax
    from minivgg.tape import Tensor, no_grad
    with no_grad():
        return softmax(net.model(Tensor(x)).data)


def class_name(classes, label):
    return classes[label] if label >= 0 else "?"


# -- the results -------------------------------------------------------------------------------
def out_dir(args):
    """--out, or a `visualise` folder beside the checkpoint; created, checked writable."""
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                   "visualise")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out} is not a usable directory ({e.strerror})") from None
    return out


def write_json(path, obj):
    """The numbers behind a figure, written atomically like every file here."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=checkpoint.jsonable)
    os.replace(tmp, path)
    return path


def display(x):
    """A float HxWxC image whose 0 is mid-grey, scaled by its largest |value| into [0, 1]
    (how ZFNet and AlexNet show filters and projections: sign and colour kept)."""
    m = float(np.abs(x).max())
    return np.clip(0.5 + x / (2 * m), 0, 1) if m > 0 else np.full(x.shape, 0.5)


def quantise(path, colours):
    """Rewrite a PNG with a palette of `colours` (median cut, no dithering): a few times
    smaller, for figures kept in a repository (--colours). Atomic, like figures.save."""
    from PIL import Image
    with Image.open(path) as im:
        q = im.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT,
                                       dither=Image.Dither.NONE)
    tmp = f"{path}.tmp.png"
    q.save(tmp, optimize=True)
    os.replace(tmp, path)
