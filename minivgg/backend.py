"""Which device runs the ops, and the array module that goes with it (DESIGN.md, "Three devices").

    cuda  CuPy arrays; the Numba CUDA kernels run on the GPU.
    sim   NumPy arrays; the *same* kernel source runs in Numba's CUDA simulator
          (one Python thread per CUDA thread: slow, but steppable and GPU-free).
    cpu   NumPy arrays; the vectorised NumPy references in kernels/ run instead.
    auto  cuda when CuPy imports *and* finds a usable GPU, else cpu.

Pick one with the environment variable MINIVGG_DEVICE or a command line's --device.

The simulator is chosen by NUMBA_ENABLE_CUDASIM=1, which Numba reads when numba.cuda is
first imported. `set_device("sim")` sets it for you, provided numba.cuda has not been
imported yet in this process; if it has, there is no way back, and we say so.

Code that handles arrays of any device goes through the helpers here, never through
np.asarray or isinstance(a, np.ndarray), which CuPy's arrays refuse or fail:
    to_device(a)        host or device array -> a copy on the current device
    to_host(a)          any array -> NumPy (a.get() for device arrays; synchronises)
    is_device_array(a)  in device memory? (location(a): 'device' or 'host', for messages)
    array_module(a)     numpy or cupy, whichever owns a
    scalar(a)           a one-element array -> Python number (synchronises)
    shape(a)            the shape of an array on any device (or of a list)
    copy_into(dst, s)   write s into dst in place (views of dst see it)
tests/strict_arrays.py runs code paths on `sim` with arrays that refuse what CuPy refuses.
"""
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

from minivgg.errors import UserError

DEVICES = ("auto", "cuda", "sim", "cpu")


class DeviceError(UserError):
    """A device that cannot be used; the message is one line, fit for a command line."""


@dataclass(frozen=True)
class Device:
    name: str      # 'cuda' | 'sim' | 'cpu'
    xp: object     # the array module: cupy or numpy
    reason: str    # why this device (shown by `auto`)

    @property
    def runs_kernels(self):
        """True when ops launch the Numba CUDA kernels (cuda, sim); False on cpu (NumPy refs)."""
        return self.name != "cpu"


_current = None


def _gpu_status():
    """(usable, reason): can CuPy import and talk to a GPU? Never raises."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install
        return False, f"CuPy is not importable ({type(e).__name__})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return False, "CuPy found no GPU"
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        return True, f"CuPy found {n} GPU(s): {name}"
    except Exception as e:  # CuPy imports but there is no driver or no device
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return False, f"CuPy imports but has no usable GPU ({msg})"


def _configure_numba(simulate):
    """Set Numba's switches before numba.cuda is imported (or raise if it is too late)."""
    want = "1" if simulate else "0"
    _no_sync_per_launch()
    cuda_imported = "numba.cuda" in sys.modules
    if cuda_imported:
        from numba import config
        if bool(config.ENABLE_CUDASIM) != simulate:
            state = "with" if config.ENABLE_CUDASIM else "without"
            raise DeviceError(
                f"numba.cuda was already imported {state} the CUDA simulator; set "
                f"MINIVGG_DEVICE={'sim' if simulate else 'cuda'} (or NUMBA_ENABLE_CUDASIM={want}) "
                "before starting Python")
        return
    os.environ["NUMBA_ENABLE_CUDASIM"] = want
    if "numba" in sys.modules:  # numba read its config at import: read it again
        from numba.core import config
        config.reload_config()


# What the no-host-sync promise (DESIGN.md) rests on. numba-cuda before 0.30 took every
# CuPy argument through __cuda_array_interface__ and synchronised the array's stream with
# the host at every launch unless NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0. From 0.30 CuPy
# arrays go through DLPack, which orders the two streams on the device, not the host;
# the setting still governs anything that comes through the older door, so we keep it
# off. pyproject.toml requires numba-cuda>=0.30; tests/test_backend.py checks both.
SYNC_SETTING = "NUMBA_CUDA_ARRAY_INTERFACE_SYNC"
MIN_NUMBA_CUDA = (0, 30)


def _no_sync_per_launch():
    """No host sync per kernel argument: set it now, even if numba.cuda is already loaded.

    Our kernels launch on CuPy's current stream, in order with CuPy's own work, so the
    check could only add a host sync per launch. An explicit user setting is kept."""
    os.environ.setdefault(SYNC_SETTING, "0")
    if "numba" in sys.modules:  # its config already read the environment: tell it too
        from numba.core import config
        config.CUDA_ARRAY_INTERFACE_SYNC = int(os.environ[SYNC_SETTING] != "0")


def numba_cuda_version():
    """The installed numba-cuda's (major, minor), or None when it is not installed."""
    from importlib import metadata
    try:
        v = metadata.version("numba-cuda")
    except metadata.PackageNotFoundError:
        return None
    return tuple(int(re.match(r"\d*", part).group() or 0) for part in v.split(".")[:2])


def _check_numba_cuda():
    """A DeviceError unless numba-cuda is recent enough to launch without host syncs."""
    have = numba_cuda_version()
    if have is not None and have < MIN_NUMBA_CUDA:
        need = ".".join(map(str, MIN_NUMBA_CUDA))
        raise DeviceError(f"numba-cuda {'.'.join(map(str, have))} synchronises with the host "
                          f"at every kernel launch; install numba-cuda>={need} "
                          f"(pip install -U 'numba-cuda>={need}')")


def resolve(name=None):
    """The Device for `name` (default: $MINIVGG_DEVICE, else 'auto'); raises DeviceError."""
    name = (name or os.environ.get("MINIVGG_DEVICE") or "auto").strip().lower()
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "cpu":
        return _cpu("asked for cpu: NumPy reference ops")
    if name == "sim":
        _configure_numba(simulate=True)
        return Device("sim", np, "asked for sim: CUDA kernels in Numba's simulator")
    usable, why = _gpu_status()
    if name == "cuda" and not usable:
        raise DeviceError(f"device 'cuda' is not available: {why}")
    if usable:
        _check_numba_cuda()
        _configure_numba(simulate=False)
        import cupy
        return Device("cuda", cupy, why if name == "cuda" else f"auto picked cuda: {why}")
    return _cpu(f"auto picked cpu: {why}")


def _cpu(reason):
    """The cpu Device; its steps reuse freed host memory (host_memory.py says why)."""
    from minivgg.host_memory import keep_freed_memory
    keep_freed_memory()
    return Device("cpu", np, reason)


def set_device(name=None):
    """Make `name` the current device and return it."""
    global _current
    _current = resolve(name)
    return _current


def device():
    """The current Device (chosen from $MINIVGG_DEVICE on first use)."""
    return _current or set_device()


def xp():
    """The current device's array module (numpy or cupy)."""
    return device().xp


def to_device(a, dtype=np.float32):
    """A copy of an array (host or device) as a C-contiguous array on the current device.

    Always a copy, on every device: on cpu a view of the caller's array would let an
    in-place update (SGD) write through to it, as it never can across a GPU transfer.
    A host array crosses to the GPU here, and only here.
    """
    return device().xp.array(a, dtype=dtype, copy=True, order="C")


def is_device_array(a):
    """True for an array in device memory (CuPy's; in tests, their stand-in).

    Such an array has .get() (its copy to the host), which NumPy arrays and scalars do
    not have; it cannot be read by NumPy (np.asarray refuses it) nor mixed with NumPy
    arrays in one operation. isinstance(a, np.ndarray) is not the test: a CuPy array is
    not an ndarray, and the tests' stand-in is one.
    """
    return hasattr(a, "get") and hasattr(a, "shape")


def array_module(a):
    """The array module that owns `a`: numpy for host arrays (and lists, scalars), the
    current device's module (cupy) for device arrays. For code that works on both."""
    if not is_device_array(a):
        return np
    xp = device().xp
    if xp is np:  # a device array while the current device is not cuda
        import cupy
        return cupy
    return xp


def location(a):
    """'device' or 'host': where `a` lives, for error messages."""
    return "device" if is_device_array(a) else "host"


def to_host(a, copy=False):
    """Any array (host or device) as a NumPy array. Synchronises: call at logging points.

    A host array comes back as it is (no copy) unless copy=True; a device array always
    comes back as a fresh NumPy array (the transfer is the copy).
    """
    if is_device_array(a):
        return a.get()
    return np.array(a, copy=True) if copy else np.asarray(a)


def scalar(a):
    """A one-element array (host or device, any rank) as a Python number.

    Synchronises on a device array: call at logging points only (DESIGN.md).
    """
    a = a if is_device_array(a) else np.asarray(a)
    if a.size != 1:
        raise ValueError(f"scalar() of an array of shape {tuple(a.shape)}: one element needed")
    return a.reshape(()).item()


def shape(a):
    """The shape of an array on any device, or of a nested list, as a tuple."""
    return tuple(a.shape) if hasattr(a, "shape") else np.shape(a)


def copy_into(dst, src):
    """Write `src` (host or device, dst's shape) into `dst`, an array on the current
    device, in place (converting to dst's dtype).

    In place, so views of dst (model.py's dense view, an optimizer's references) see it.
    """
    if shape(src) != tuple(dst.shape):
        raise ValueError(f"copy_into: shape {shape(src)} into an array of shape "
                         f"{tuple(dst.shape)}")
    dst[...] = to_device(src, dtype=dst.dtype)


def add_device_argument(parser):
    """The --device flag every command line shares."""
    parser.add_argument(
        "--device", choices=DEVICES, default=os.environ.get("MINIVGG_DEVICE", "auto"),
        help="cuda (GPU kernels), sim (same kernels in Numba's CUDA simulator, slow), "
             "cpu (NumPy references), auto (cuda if a GPU is usable, else cpu). "
             "Default: $MINIVGG_DEVICE or auto.")
