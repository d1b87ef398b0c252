"""Weights in and out (DESIGN.md, "Weights from elsewhere"): the released VGG-16 and VGG-19.

The authors released their trained nets D and E (sect. 4: "we have released our two
best-performing models") as Caffe models; people get them today from torchvision
(vgg16-397923af.pth, vgg19-dcbb9e9d.pth), timm / Hugging Face (vgg16.tv_in1k as
.safetensors) or Keras (vgg16_weights_tf_dim_ordering_tf_kernels.h5, converted from the
Caffe release). One command makes a minivgg checkpoint of any of them:

    python -m minivgg.convert vgg16-397923af.pth vgg16.npz           # torchvision
    python -m minivgg.convert model.safetensors vgg16.npz            # timm or torchvision names
    python -m minivgg.convert vgg16_weights_tf_dim_ordering_tf_kernels.h5 vgg16.npz   # Keras
    python -m minivgg.convert runs/train/best.npz model.safetensors  # the way back, for PyTorch

    from minivgg import convert
    c = convert.read("vgg16-397923af.pth")   # Converted: definition, params, meta
    convert.write(c, "vgg16.npz")

The configuration (A, B, D, E, ...) is detected from the tensor shapes (layouts.detect).
The checkpoint records, besides the weights, what they expect (checkpoint.preprocessing),
which evaluate.preprocess then applies -- converted from the source's convention, not
guessed:

    torchvision, timm  RGB, x / 255, minus ImageNet's mean (0.485, 0.456, 0.406), divided
                       by its std (0.229, 0.224, 0.225) (torchvision's Normalize)
    keras (Caffe)      BGR, 0-255, minus the mean BGR pixel (103.939, 116.779, 123.68): the
                       Caffe release's convention, keras.applications' preprocess_input

and its default test scale (evaluate.default_scales): Q = 256 for torchvision and timm,
which evaluate at resize 256 / crop 224; Q = 384 for the Caffe release, trained with S
jittered in [256, 512] (sect. 3.1, Table 3). 1000 outputs get the ImageNet class names.
Writing .safetensors uses torchvision's names and stores the definition and meta as
metadata, so minivgg -> safetensors -> minivgg is exact.
"""
import json
import os
import tempfile
from dataclasses import dataclass

from minivgg.convert import layouts, readers
from minivgg.errors import UserError

SOURCES = ("torchvision", "timm", "keras")
PREPROCESS = {
    "torchvision": dict(channels="RGB", scale=1 / 255, mean=[0.485, 0.456, 0.406],
                        std=[0.229, 0.224, 0.225]),
    "caffe": dict(channels="BGR", scale=1.0, mean=[103.939, 116.779, 123.68], std=None),
}
WRITABLE = (".npz", ".safetensors")


@dataclass
class Converted:
    """Weights ready for minivgg: VGG(**definition), its parameters, the checkpoint meta."""
    definition: dict
    params: dict
    meta: dict
    source: str  # torchvision | timm | keras | minivgg


def test_settings(convention, input_size):
    """settings.scale / scale_jitter giving the source's own test scale, scaled to the input."""
    def side(q):
        return int(round(q * input_size / 224))
    if convention == "caffe":
        return dict(scale=None, scale_jitter=[side(256), side(512)], crop=input_size)
    return dict(scale=side(256), scale_jitter=None, crop=input_size)


def _check_kind(kind, source, path):
    """--from and what the file is must agree."""
    if source == "keras" and kind != "h5":
        raise UserError(f"--from keras expects a Keras HDF5 file; {path} is a {kind} file")
    if source in ("torchvision", "timm") and kind not in ("pth", "safetensors"):
        raise UserError(f"--from {source} expects a .pth or .safetensors file; {path} is a "
                        f"{kind} file")


def read(path, source=None, preprocess=None, classes=None):
    """The weights in `path` as a Converted (one-line UserError for anything wrong).

    source: None (told from the file), 'torchvision', 'timm' or 'keras'. preprocess:
    'torchvision' or 'caffe' overrides the source's convention; classes: names of the
    outputs (default: the ImageNet-1k names for 1000 outputs).
    """
    path = os.fspath(path)
    kind = readers.sniff(path)
    _check_kind(kind, source, path)
    if kind == "npz":
        c = _from_checkpoint(path)
    elif kind == "h5":
        tensors, names = layouts.from_keras(readers.read_keras(path), path)
        c = _detected(tensors, path, "keras", lambda n: names.get(n.rsplit(".", 1)[0], n))
    else:
        tensors, metadata = (readers.read_pth(path), {}) if kind == "pth" else \
            readers.read_safetensors(path)
        c = _from_metadata(tensors, metadata, path) if "minivgg" in metadata else \
            _from_state_dict(tensors, path, source)
    if c.source == "minivgg" and preprocess is not None:
        raise UserError(f"--preprocess is for weights from elsewhere; {path} records its own "
                        "preprocessing")
    if c.source != "minivgg":
        convention = preprocess or ("caffe" if c.source == "keras" else "torchvision")
        c.meta = dict(preprocess=dict(PREPROCESS[convention]),
                      settings=test_settings(convention, c.definition["input_size"]),
                      source=dict(format=c.source, file=os.path.basename(path)))
    return _with_classes(c, classes, path)


def _from_state_dict(tensors, path, source):
    """A torchvision- or timm-named state dict (checked to be a VGG's, then detected)."""
    layouts.check_vgg_names(tensors, path)
    naming = layouts.naming(tensors)
    if source is not None and source != naming:
        raise UserError(f"--from {source}: {path} has {naming}'s tensor names "
                        f"({next(iter(tensors))!r}, ...); leave --from out or use "
                        f"--from {naming}")
    if naming == "timm":
        return _detected(layouts.from_timm(tensors), path, naming, layouts.to_timm_name)
    return _detected(tensors, path, naming, lambda n: n)


def _detected(tensors, path, naming, rename):
    definition = dict(layouts.detect(tensors, path, rename), dropout=0.5, init="paper", seed=0)
    return Converted(definition, tensors, {}, naming)


def _from_checkpoint(path):
    from minivgg import checkpoint
    ck = checkpoint.load(path)
    return Converted(dict(ck["model"]), ck["params"], ck["meta"], "minivgg")


def _from_metadata(tensors, metadata, path):
    """A .safetensors we wrote: its definition and meta come back from the metadata."""
    try:
        saved = json.loads(metadata["minivgg"])
        return Converted(dict(saved["model"]), tensors, dict(saved["meta"]), "minivgg")
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: its minivgg metadata is corrupt ({type(e).__name__})") from None


def _with_classes(c, classes, path):
    """Set the class names: given, kept, ImageNet's for 1000 outputs, or 'class i'."""
    n = c.definition["num_classes"]
    if classes is not None and len(classes) != n:
        raise UserError(f"--classes names {len(classes)} classes but {path} has {n} outputs")
    if classes is None:
        classes = c.meta.get("classes")
    if classes is None:
        from minivgg import imagenet
        classes = imagenet.classes() if n == imagenet.CLASS_COUNT else \
            [f"class {i}" for i in range(n)]
    c.meta = dict(c.meta, classes=list(classes))
    return c


def build(c):
    """The VGG of a Converted, its weights loaded (a UserError names any tensor that fails)."""
    from minivgg.model import VGG
    model = VGG(**dict(c.definition, init="zeros"))  # zeros: every weight is overwritten
    model.init = c.definition.get("init", "paper")
    model.load_state_dict(c.params)
    return model.eval()


def write(c, dst):
    """Write a Converted as a minivgg checkpoint (.npz) or torchvision-named .safetensors."""
    dst = os.fspath(dst)
    ext = os.path.splitext(dst)[1].lower()
    if ext not in WRITABLE:
        raise UserError(f"{dst}: write a .npz (minivgg checkpoint) or a .safetensors file")
    model = build(c)
    try:
        if ext == ".npz":
            from minivgg import checkpoint
            checkpoint.save(dst, model, meta=c.meta)
        else:
            _save_safetensors(dst, model, c.meta)
    except OSError as e:
        raise UserError(f"cannot write {dst}: {e.strerror or e}") from None
    return model


def _save_safetensors(dst, model, meta):
    """Atomically (temp file, renamed): the tensors, and everything else as metadata."""
    metadata = {"format": "pt",  # what Hugging Face's loaders expect of a PyTorch file
                "minivgg": json.dumps({"model": model.definition(), "meta": meta})}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors",
                               dir=os.path.dirname(os.path.abspath(dst)))
    os.close(fd)
    try:
        readers.write_safetensors(tmp, model.state_dict(), metadata)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give what open() would
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
