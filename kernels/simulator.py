"""Shared (and local) memory in Numba's CUDA simulator, made to behave like a GPU's.

The simulator (NUMBA_ENABLE_CUDASIM=1) runs a block as one Python thread per CUDA thread.
Its `cuda.shared.array` (numba-cuda 0.30, simulator/kernelapi.py, FakeCUDAShared.array)
finds a block's array by the calling line in a dict: look up, and if missing, allocate and
store. Two things there differ from a GPU, and both can hide or invent bugs:

1. The look-up and the store are not one step. A thread can lose the GIL between them
   (the look-up first walks the whole Python stack), so two threads of one block can each
   allocate and keep their *own* array: one thread's writes never reach the other, and a
   correct kernel reads a zero (CI saw linear_backward_weight_v2 write dw[1, 0] = 0 once in
   about a thousand launches; tests/conftest.py's short switch interval makes such turns
   frequent). Here the look-up and the store happen under one lock.
2. One launch keeps one dict, so block 1 finds block 0's arrays with block 0's values in
   them, and an array is allocated with np.empty (usually zeros). A kernel that reads
   shared memory no thread of its block wrote would pass. On a GPU that memory holds
   whatever was there. Here every block gets fresh arrays filled with NaN (float dtypes),
   so such a read shows up in the result.

Local arrays (`cuda.local.array`, one per thread) get the second treatment too: the
simulator's are np.empty, here NaN-filled, so a sum that starts from an unwritten local
element shows up.

`install()` replaces both methods once; kernels/common.py calls it on import when the
simulator is on. Dynamic shared memory (shape 0) is left to the simulator: no kernel here
uses it.
"""
import sys
import threading

import numpy as np

_lock = threading.Lock()  # one look-up-or-allocate at a time, across all blocks' threads


def _fresh(shape, dtype):
    """A new shared array: NaN where the dtype has one, so an unwritten element is seen."""
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return np.full(shape, np.nan, dtype)
    return np.empty(shape, dtype)


def _block_arrays(shared):
    """This block's {call site: array} dict; a new, empty one when a new block starts.

    The simulator runs a launch's blocks one after another, all of one block's threads
    before the next block's first, so a change of blockIdx means the last block is done.
    """
    index = getattr(threading.current_thread(), "blockIdx", None)  # None outside a kernel
    block = None if index is None else (index.x, index.y, index.z)
    if not hasattr(shared, "_minivgg_arrays") or shared._minivgg_block != block:
        shared._minivgg_block = block
        shared._minivgg_arrays = {}
    return shared._minivgg_arrays


def install():
    """Replace the simulator's FakeCUDAShared.array and FakeCUDALocal.array (once each).
    Returns True if both are replaced (now or before), False if this numba-cuda lacks
    either (then nothing changes)."""
    from numba.cuda.simulator import kernelapi
    shared_cls = getattr(kernelapi, "FakeCUDAShared", None)
    local_cls = getattr(kernelapi, "FakeCUDALocal", None)
    shared_array = getattr(shared_cls, "array", None)
    local_array = getattr(local_cls, "array", None)
    if shared_array is None or local_array is None:
        return False
    if getattr(shared_array, "_minivgg", False):
        return True

    def numpy_dtype(dtype):  # float32 etc. from numba: to NumPy's
        if isinstance(dtype, kernelapi.types.Type):
            return kernelapi.numpy_support.as_dtype(dtype)
        return dtype

    def shared(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory; errors as before
            return shared_array(self, shape, dtype, alignment)
        caller = sys._getframe(1)  # the kernel's frame: one array per line, as the original
        site = (caller.f_code.co_filename, caller.f_lineno)
        with _lock:
            arrays = _block_arrays(self)
            if site not in arrays:
                arrays[site] = _fresh(shape, numpy_dtype(dtype))
            return arrays[site]

    def local(self, shape, dtype, alignment=None):
        if alignment is not None:  # the simulator's error, as before
            return local_array(self, shape, dtype, alignment)
        return _fresh(shape, numpy_dtype(dtype))

    shared._minivgg = local._minivgg = True
    shared_cls.array, local_cls.array = shared, local
    return True
