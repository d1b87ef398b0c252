"""Checkpoints: one .npz of plain arrays, written atomically, read without pickle.

    save(path, model, optimizer, schedule, train_state, meta)
    ckpt = load(path)                    # a dict, see load()
    model = model_from_checkpoint(ckpt)  # the VGG the file describes, weights loaded
    train_state = restore(model, ckpt, optimizer, schedule)

Keys inside the file:
    param.<name>        every parameter (features.0.weight, ...), float32
    optim.<key>         optimizer.state_dict() (velocity.<name>, lr, ...)
    sched.<key>         schedule.state_dict()
    train.<key>         training-state numbers and arrays (epoch, step, best accuracy, ...)
    rng.<key>           a numpy Generator of the training state: its bit_generator.state,
                        a dict, as JSON text (big integers survive JSON exactly)
    dropout.<module>    (seed, calls) of every Dropout, so masks resume where they stopped
    definition          JSON text: {"model": VGG.definition(), "meta": {...}} where meta is
                        what train passes (class names, mean RGB, ...)

The meta every command reads (DESIGN.md, "Weights from elsewhere"):
    classes             the class names, in the order of the last layer's outputs
    preprocess          what the weights expect as input (see preprocessing()): channel
                        order, scale, mean, std. Written by minivgg.convert; checkpoints
                        written by minivgg.train carry mean_rgb / std_rgb instead, which
                        say the same for RGB pixels in 0-255 units
    settings            the training settings; settings.scale / scale_jitter give the
                        default test scale (evaluate.default_scales)

Why no pickle: np.load(allow_pickle=False) cannot run code from the file, so loading a
checkpoint from elsewhere is safe. Why atomic: the file is written to a temporary file
in the same directory and renamed over the old one (os.replace), so a crash or Ctrl-C
mid-save leaves the previous checkpoint whole (DESIGN.md, "Bad input").
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from minivgg import backend, nn
from minivgg.errors import UserError

FORMAT = "minivgg-checkpoint-1"


def jsonable(v):
    """json.dumps' `default`: NumPy scalars and arrays as plain Python values."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"cannot write {type(v).__name__} as JSON")


def _text(obj):
    """JSON text as a NumPy unicode array (loads without pickle)."""
    return np.array(json.dumps(obj, default=jsonable, sort_keys=True))


def _arrays(model, optimizer, schedule, train_state, meta):
    """Everything save() writes, as {key: NumPy array}."""
    out = {"format": np.array(FORMAT),
           "definition": _text({"model": model.definition(), "meta": meta or {}})}
    out.update({f"param.{k}": v for k, v in model.state_dict().items()})
    if optimizer is not None:
        out.update({f"optim.{k}": backend.to_host(v) for k, v in optimizer.state_dict().items()})
    if schedule is not None:
        out.update({f"sched.{k}": backend.to_host(v) for k, v in schedule.state_dict().items()})
    for k, v in (train_state or {}).items():
        if isinstance(v, np.random.Generator):
            out[f"rng.{k}"] = _text(v.bit_generator.state)
        else:
            out[f"train.{k}"] = backend.to_host(v)  # a device scalar too
            if out[f"train.{k}"].dtype == object:
                raise ValueError(f"train_state[{k!r}] is not a number, string or array")
    for name, m in model.named_modules():
        if isinstance(m, nn.Dropout):
            out[f"dropout.{name}"] = np.array([m.seed, m.calls], dtype=np.int64)
    return out


CHANNEL_ORDERS = ("RGB", "BGR")


def preprocessing(meta):
    """The input preprocessing a checkpoint's weights expect, as one dict (sect. 2.1):

        channels  "RGB" | "BGR": the order of the channels the first conv reads
        scale     0-255 pixels are first multiplied by it (1/255: torchvision's [0, 1])
        mean      then subtracted, per channel in that order, in scaled units
        std       then divided by, per channel (None: not divided)

    From meta["preprocess"] when there is one (converted weights: torchvision's RGB / 255,
    ImageNet mean and std; Caffe's BGR minus a 0-255 mean). Otherwise from mean_rgb and
    std_rgb, what minivgg.train writes: RGB, scale 1, so (pixel - mean_rgb) / std_rgb
    exactly as before. A one-line UserError when neither is there or the entry is bad.
    """
    p = meta.get("preprocess")
    if p is None:
        if meta.get("mean_rgb") is None:
            raise UserError("the checkpoint records no preprocessing (neither preprocess nor "
                            "mean_rgb in its meta)")
        return dict(channels="RGB", scale=1.0, mean=[float(v) for v in meta["mean_rgb"]],
                    std=None if meta.get("std_rgb") is None else
                    [float(v) for v in meta["std_rgb"]])
    try:
        out = dict(channels=str(p["channels"]).upper(), scale=float(p.get("scale", 1.0)),
                   mean=[float(v) for v in p["mean"]],
                   std=None if p.get("std") is None else [float(v) for v in p["std"]])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"the checkpoint's preprocess entry is malformed ({type(e).__name__}: "
                        f"{_first_line(e)})") from None
    if out["channels"] not in CHANNEL_ORDERS or len(out["mean"]) != 3 or \
            (out["std"] is not None and len(out["std"]) != 3) or not out["scale"] > 0:
        raise UserError(f"the checkpoint's preprocess entry is malformed: {p}")
    return out


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(path, model, optimizer=None, schedule=None, train_state=None, meta=None):
    """Write a checkpoint to `path` atomically (temp file in the same directory, renamed)."""
    arrays = _arrays(model, optimizer, schedule, train_state, meta)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: never leave the temp file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read(path):
    """{key: array} of every array in the file, or a one-line UserError saying why not."""
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, "files"):  # a bare .npy array, not an .npz archive
            raise UserError(f"{path} holds a single array, not a minivgg checkpoint")
        with f:
            arrays, key = {}, None
            try:
                for key in f.files:  # read everything now: a truncated member fails here
                    arrays[key] = f[key]
            except ValueError as e:
                if "pickle" in str(e):
                    raise UserError(f"{path} holds a pickled object array ({key!r}); "
                                    "checkpoints are loaded without pickle, refusing it")
                raise
            return arrays
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a directory, not a file") from None
    except ValueError as e:
        if "pickle" in str(e):  # np.load of a whole pickle file
            raise UserError(f"{path} holds pickled data; checkpoints are loaded without "
                            "pickle, refusing it") from None
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt: "
                        f"{_first_line(e)})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt: "
                        f"{type(e).__name__}: {_first_line(e)})") from None


def _first_line(e):
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _section(arrays, prefix):
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def _scalar(a):
    """0-d arrays as Python scalars (exact: float64 -> float), others as they are."""
    return a.item() if a.ndim == 0 else a


def _generator(state_json):
    state = json.loads(str(state_json))
    g = np.random.Generator(getattr(np.random, state["bit_generator"])())
    g.bit_generator.state = state
    return g


def load(path):
    """Read a checkpoint. Returns a dict:

        model        VGG.definition() of the saved model (config, width, ...)
        meta         what was passed as meta (class names, mean RGB, ...)
        params       {name: float32 array}
        optimizer    optimizer.state_dict() as saved, or None
        schedule     schedule.state_dict() as saved, or None
        train_state  {key: Python scalar, array, or np.random.Generator}
        dropout      {module name: (seed, calls)}
    """
    path = os.fspath(path)
    arrays = _read(path)
    if "definition" not in arrays or str(arrays.get("format", "")) != FORMAT:
        raise UserError(f"{path} is an .npz file but not a minivgg checkpoint "
                        "(no model definition in it)")
    try:
        definition = json.loads(str(arrays["definition"]))
        model_def, meta = definition["model"], definition["meta"]
        train = {k: _scalar(v) for k, v in _section(arrays, "train").items()}
        train.update({k: _generator(v) for k, v in _section(arrays, "rng").items()})
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} has a corrupt definition or RNG state "
                        f"({type(e).__name__}: {_first_line(e)})") from None
    optim, sched = _section(arrays, "optim"), _section(arrays, "sched")
    return {"model": model_def, "meta": meta, "params": _section(arrays, "param"),
            "optimizer": optim or None, "schedule": sched or None, "train_state": train,
            "dropout": {k: (int(v[0]), int(v[1])) for k, v in
                        _section(arrays, "dropout").items()},
            "path": path}


def peek(path):
    """{"model": definition, "meta": meta} of a checkpoint, without reading its arrays.

    An .npz is a zip whose members load one by one, so this reads only `definition`
    (train --init-from plans the run from it before loading the weights)."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "definition" not in f.files or str(f["format"]) != FORMAT:
                raise UserError(f"{path} is not a minivgg checkpoint (no model definition "
                                "in it)")
            d = json.loads(str(f["definition"]))
            return {"model": d["model"], "meta": d["meta"]}
    except UserError:
        raise
    except Exception:  # noqa: BLE001 -- load() reads it all and says exactly what is wrong
        d = load(path)
        return {"model": d["model"], "meta": d["meta"]}


def model_from_checkpoint(ckpt):
    """The VGG a checkpoint describes, with its weights and dropout counters loaded."""
    from minivgg.model import VGG
    d = dict(ckpt["model"], init="zeros")  # no random init: every weight gets overwritten
    model = VGG(**d)
    model.init = ckpt["model"].get("init", "paper")  # keep the definition as saved
    restore(model, ckpt)
    return model


def _in_its_place(model, params):
    """Where the first name is missing: what the checkpoint holds at that position."""
    theirs = list(params.items())
    for i, (name, _) in enumerate(model.named_parameters()):
        if name not in params:
            if i >= len(theirs):
                return "; the checkpoint has no more tensors"
            n, a = theirs[i]
            return f"; the checkpoint has {n!r} of shape {nn._shape(backend.shape(a))} there"
    return ""


def restore(model, ckpt, optimizer=None, schedule=None):
    """Load the checkpoint into model (and optimizer, schedule); returns its train_state.

    A checkpoint of another config or shape gives a one-line UserError naming the first
    tensor that does not fit and both shapes; nothing is written before the check.
    """
    try:
        model.load_state_dict(ckpt["params"])
    except UserError as e:
        saved = ckpt["model"]
        raise UserError(f"checkpoint {ckpt.get('path', '')} (config {saved.get('config')}, "
                        f"width {saved.get('width')}) does not fit this model (config "
                        f"{getattr(model, 'config', '?')}, width "
                        f"{getattr(model, 'width', '?')}): {e}"
                        f"{_in_its_place(model, ckpt['params'])}") from None
    dropouts = {n: m for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    for name, (seed, calls) in ckpt["dropout"].items():
        if name in dropouts:
            dropouts[name].seed, dropouts[name].calls = seed, calls
    if optimizer is not None:
        if ckpt["optimizer"] is None:
            raise UserError(f"checkpoint {ckpt.get('path', '')} holds no optimizer state")
        optimizer.load_state_dict(ckpt["optimizer"])
    if schedule is not None:
        if ckpt["schedule"] is None:
            raise UserError(f"checkpoint {ckpt.get('path', '')} holds no schedule state")
        schedule.load_state_dict(ckpt["schedule"])
    return ckpt["train_state"]
