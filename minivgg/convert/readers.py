"""Reading the files weights come in: PyTorch .pth, safetensors, Keras HDF5, our .npz.

Each reader returns plain NumPy arrays and never runs code from the file: .pth through
torch.load(weights_only=True), which unpickles tensors and containers only; safetensors
and HDF5 hold no code at all. torch, safetensors and h5py are optional extras, imported
only here and only when such a file is read or written (`pip install minivgg` alone must
never pull them in), with a one-line error naming the extra when missing.
"""
import importlib
import os
import pickle
import re
import zipfile

import numpy as np

from minivgg.errors import UserError

EXTRAS = {"torch": "weights", "safetensors": "weights", "h5py": "keras"}
EXTENSIONS = {".pth": "pth", ".pt": "pth", ".bin": "pth", ".ckpt": "pth",
              ".safetensors": "safetensors", ".h5": "h5", ".hdf5": "h5", ".npz": "npz"}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def optional(module, what):
    """Import an optional dependency, or a one-line UserError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs the {module.split('.')[0]} package: pip install "
                        f"'minivgg[{EXTRAS[module.split('.')[0]]}]' (or pip install "
                        f"{module.split('.')[0]})") from None


def _first_line(e):
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _corrupt(path, kind, e):
    return UserError(f"{path} is not a readable {kind} file (truncated or corrupt: "
                     f"{type(e).__name__}: {_first_line(e)})")


def sniff(path):
    """'pth' | 'safetensors' | 'h5' | 'npz' from the file's first bytes, else its extension."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a weights file") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if head.startswith(HDF5_MAGIC):
        return "h5"
    if head.startswith(b"PK\x03\x04"):  # a zip: torch.save's format, or NumPy's .npz
        try:
            with zipfile.ZipFile(path) as z:
                return "npz" if any(n.endswith(".npy") for n in z.namelist()) else "pth"
        except (zipfile.BadZipFile, OSError):
            pass  # truncated: its extension says which reader should report it
    elif len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pth"  # torch.save's legacy format: a pickle
    kind = EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise UserError(f"cannot tell what {path} is: not a PyTorch (.pth), safetensors, Keras "
                        "HDF5 (.h5) or minivgg (.npz) file")
    return kind


# -- PyTorch ----------------------------------------------------------------------------------
def read_pth(path):
    """{name: array} of a torch.save'd state dict, loaded with weights_only=True."""
    torch = optional("torch", "reading a PyTorch .pth file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise _corrupt(path, "PyTorch", e) from None
        what = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        raise UserError(f"refusing {path}: it holds pickled Python objects "
                        f"({what.group(1) if what else 'not just tensors'}) that "
                        "torch.load(weights_only=True) will not run; save model.state_dict() "
                        "instead of the whole model") from None
    except Exception as e:  # noqa: BLE001 -- torch raises OSError, RuntimeError, EOFError,
        raise _corrupt(path, "PyTorch", e) from None  # KeyError, struct.error on a bad file
    return _state_dict(obj, path, torch)


def _state_dict(obj, path, torch):
    """The tensors of a state dict (unwrapping {'state_dict': ...}), as float32 arrays."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of "
                        "tensor names to tensors, model.state_dict())")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad or not obj:
        what = f"{bad[0]!r} is a {type(obj[bad[0]]).__name__}" if bad else "it is empty"
        raise UserError(f"{path} holds a dict that is not a state dict ({what}, not a tensor)")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return {k: _array(v) for k, v in obj.items()}


def _array(t):
    t = t.detach().cpu()
    return t.float().numpy() if t.is_floating_point() else t.numpy()


# -- safetensors ------------------------------------------------------------------------------
def read_safetensors(path):
    """({name: array}, metadata {str: str}) through safetensors' NumPy API (no torch)."""
    optional("safetensors.numpy", "reading a .safetensors file")
    from safetensors import safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 -- SafetensorError, and TypeError for dtypes
        raise _corrupt(path, "safetensors", e) from None  # NumPy lacks (bfloat16)
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v
            for k, v in tensors.items()}, meta


def write_safetensors(path, tensors, metadata):
    """Write tensors and string metadata to `path` (the caller makes it atomic)."""
    optional("safetensors.numpy", "writing a .safetensors file")
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
              metadata=metadata)


# -- Keras HDF5 -------------------------------------------------------------------------------
def _text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_keras(path):
    """[(layer name, [arrays])] in the model's layer order, from a Keras 2 HDF5 file.

    save_weights (and the released vgg16_weights_tf_dim_ordering_tf_kernels.h5) store
    attrs layer_names at the root and one group per layer with attrs weight_names, the
    paths of its arrays in order (kernel, bias); model.save nests it all under
    model_weights.
    """
    h5py = optional("h5py", "reading a Keras .h5 file")
    try:
        with h5py.File(path, "r") as f:
            g = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in g.attrs:
                raise UserError(f"{path} is an HDF5 file but not Keras weights in the HDF5 "
                                "layout of keras.applications (no layer_names attribute)")
            return [(_text(n), [np.asarray(g[_text(n)][_text(w)][()]) for w in
                                g[_text(n)].attrs.get("weight_names", [])])
                    for n in g.attrs["layer_names"]]
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise _corrupt(path, "Keras HDF5", e) from None
