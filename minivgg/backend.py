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
"""
import os
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
    # Numba checks that CuPy's arrays are ready by synchronising the stream at every launch
    # unless told not to; our kernels run on CuPy's current stream, in order, so the check
    # would only add a host sync per launch.
    os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")
    if "numba" in sys.modules:  # numba read its config at import: read it again
        from numba.core import config
        config.reload_config()


def resolve(name=None):
    """The Device for `name` (default: $MINIVGG_DEVICE, else 'auto'); raises DeviceError."""
    name = (name or os.environ.get("MINIVGG_DEVICE") or "auto").strip().lower()
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "cpu":
        return Device("cpu", np, "asked for cpu: NumPy reference ops")
    if name == "sim":
        _configure_numba(simulate=True)
        return Device("sim", np, "asked for sim: CUDA kernels in Numba's simulator")
    usable, why = _gpu_status()
    if name == "cuda" and not usable:
        raise DeviceError(f"device 'cuda' is not available: {why}")
    if usable:
        _configure_numba(simulate=False)
        import cupy
        return Device("cuda", cupy, why if name == "cuda" else f"auto picked cuda: {why}")
    return Device("cpu", np, f"auto picked cpu: {why}")


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
    """A copy of a host (NumPy) array as a C-contiguous array on the current device.

    Always a copy, on every device: on cpu a view of the caller's array would let an
    in-place update (SGD) write through to it, as it never can across a GPU transfer.
    """
    return device().xp.array(a, dtype=dtype, copy=True, order="C")


def to_host(a):
    """Any array (NumPy or CuPy) as a NumPy array. Synchronises: call at logging points only."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def add_device_argument(parser):
    """The --device flag every command line shares."""
    parser.add_argument(
        "--device", choices=DEVICES, default=os.environ.get("MINIVGG_DEVICE", "auto"),
        help="cuda (GPU kernels), sim (same kernels in Numba's CUDA simulator, slow), "
             "cpu (NumPy references), auto (cuda if a GPU is usable, else cpu). "
             "Default: $MINIVGG_DEVICE or auto.")
