"""What every launcher needs: grid arithmetic, argument checks, and the stream to launch on."""
import numpy as np
from numba import cuda, float32, int32, uint32  # noqa: F401  (re-exported for signatures)

# Argument types of launches, for PTX_SIGNATURES: C-contiguous float32 arrays by rank.
F1, F2, F3, F4 = float32[::1], float32[:, ::1], float32[:, :, ::1], float32[:, :, :, ::1]
I1 = int32[::1]


def ceil_div(a, b):
    """Smallest integer >= a / b, for grid sizes."""
    return -(-a // b)


def check(name, a, shape=None, ndim=None, dtype=np.float32):
    """Raise ValueError naming `name` unless `a` is a C-contiguous `dtype` array of that shape."""
    if a.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (shape {tuple(a.shape)})")


_streams = {}


def stream_of(a):
    """The stream to launch on: CuPy's current stream for CuPy arrays, else the default (0).

    Launching on CuPy's stream keeps our kernels in order with CuPy's own work (allocation,
    copies) without any host synchronisation.
    """
    if isinstance(a, np.ndarray):  # the simulator takes NumPy arrays
        return 0
    import cupy
    ptr = cupy.cuda.get_current_stream().ptr
    if ptr not in _streams:
        _streams[ptr] = cuda.external_stream(ptr) if ptr else cuda.default_stream()
    return _streams[ptr]
