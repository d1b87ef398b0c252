"""What every launcher needs: grid arithmetic, argument checks, the stream to launch on,
and one `launch` that every launcher goes through (so a tool can record launch geometry)."""
import contextlib
from typing import NamedTuple

import numpy as np
from numba import config, cuda, float32, int32, uint32  # noqa: F401  (re-exported for signatures)

if config.ENABLE_CUDASIM:  # shared memory as on a GPU: one array a block, NaN until written
    from kernels import simulator
    simulator.install()

# Argument types of launches, for PTX_SIGNATURES: C-contiguous float32 arrays by rank.
F1, F2, F3, F4 = float32[::1], float32[:, ::1], float32[:, :, ::1], float32[:, :, :, ::1]
I1 = int32[::1]

# Kernels index with int32 (DESIGN.md): every index a thread forms must stay below 2**31.
INT32_LIMIT = 2**31
MAX_THREADS_PER_BLOCK = 1024  # CUDA's limit, every GPU since cc 2.0


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


def check_size(name, a):
    """Raise ValueError unless `a` has fewer than 2**31 elements (int32 flat indices)."""
    if a.size >= INT32_LIMIT:
        raise ValueError(f"{name} of shape {tuple(a.shape)} has {a.size} elements; int32 "
                         f"indices allow at most 2^31 - 1")


def blocks_1d(name, total, threads, max_blocks=None):
    """Blocks of `threads` threads for a 1-D launch over `total` elements, after checking
    that no thread's int32 index can wrap.

    One thread per element (max_blocks None): thread indices reach blocks*threads - 1,
    which must be < 2**31 -- a bound on the rounded-up grid, not on `total` alone: a size
    within one block of 2**31 would otherwise wrap to a negative index that passes the
    kernel's `i >= total` guard. Grid-stride loops (max_blocks caps the grid; each thread
    then steps by blocks*threads): the last step leaves i < total + blocks*threads, which
    must be < 2**31 as well, or `i += stride` wraps negative and the loop runs on.
    """
    if not 1 <= threads <= MAX_THREADS_PER_BLOCK:
        raise ValueError(f"{name}: threads per block must be in [1, "
                         f"{MAX_THREADS_PER_BLOCK}], got {threads}")
    blocks = ceil_div(total, threads)
    if max_blocks is not None:
        if max_blocks < 1:
            raise ValueError(f"{name}: max_blocks must be >= 1, got {max_blocks}")
        blocks = min(blocks, max_blocks)
        reach = total + blocks * threads
    else:
        reach = blocks * threads
    if reach > INT32_LIMIT:
        raise ValueError(f"{name}: {total} elements in blocks of {threads} threads need "
                         f"indices up to {reach - 1}, past int32's 2^31 - 1")
    return blocks


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


# ----------------------------------------------------------------------------------------
# Every launcher launches through `launch`. Inside `recording()` each launch is also noted
# as a Launch(kernel, grid, block); with execute=False nothing runs, so the launch
# geometry of any shape can be tabulated from stand-in arrays that only have a shape
# (benchmarks: blocks per launch, waves over the SMs) without a GPU or the memory.

class Launch(NamedTuple):
    kernel: str   # the kernel function's name, e.g. "conv_forward_v3"
    grid: tuple   # blocks along (x, y, z); 1-D and 2-D grids padded with 1s
    block: tuple  # threads along (x, y, z), likewise
    axes: int     # how many grid axes the launch gave (1, 2 or 3)

    @property
    def blocks(self):
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def threads(self):
        return self.block[0] * self.block[1] * self.block[2]


_recorder = None  # (list of Launch, execute) while recording


@contextlib.contextmanager
def recording(execute=True):
    """Collect the launches made inside the block: `with recording() as launches: ...`."""
    global _recorder
    before, launches = _recorder, []
    _recorder = (launches, execute)
    try:
        yield launches
    finally:
        _recorder = before


def is_dry_run():
    """True inside recording(execute=False): launchers skip device work other than launches
    too (e.g. zeroing an output before atomics)."""
    return _recorder is not None and not _recorder[1]


def _xyz(dims):
    dims = tuple(dims) if isinstance(dims, tuple) else (dims,)
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


def _name(kernel):
    fn = getattr(kernel, "py_func", None) or getattr(kernel, "fn", None) or kernel
    return getattr(fn, "__name__", repr(kernel))


def launch(kernel, grid, block, *args):
    """kernel[grid, block, stream](*args), on the stream of the first argument (an array)."""
    if _recorder is not None:
        launches, execute = _recorder
        axes = len(grid) if isinstance(grid, tuple) else 1
        launches.append(Launch(_name(kernel), _xyz(grid), _xyz(block), axes))
        if not execute:
            return
    kernel[grid, block, stream_of(args[0])](*args)
