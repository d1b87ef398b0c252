"""kernels/simulator.py: the simulator's shared memory, one array a block, NaN until written;
its local arrays NaN until written.

These run simulated kernels with the replacement that kernels/common.py installs on import
(the same path every kernel test takes), so they also check that it is installed.
"""
import time

import numpy as np
import pytest
from numba import cuda, float32

import kernels.common  # noqa: F401  (installs the replacement under the simulator)
from helpers import ON_GPU
from kernels import simulator

pytestmark = pytest.mark.skipif(ON_GPU, reason="about Numba's CUDA simulator, not a GPU")

BLOCKS, THREADS = 3, 8


@cuda.jit
def sum_of_slots(out):
    """out (BLOCKS, THREADS): each thread writes its slot, then sums its block's slots."""
    slots = cuda.shared.array(THREADS, float32)
    t = cuda.threadIdx.x  # [0, THREADS)
    slots[t] = float32(t + 1)
    cuda.syncthreads()  # every slot written before anyone sums
    acc = float32(0.0)
    for k in range(THREADS):  # k [0, THREADS)
        acc += slots[k]
    out[cuda.blockIdx.x, t] = acc


@cuda.jit
def read_before_write(seen):
    """seen (BLOCKS, THREADS): what each thread's slot held before any thread wrote it."""
    slots = cuda.shared.array(THREADS, float32)
    t = cuda.threadIdx.x  # [0, THREADS)
    seen[cuda.blockIdx.x, t] = slots[t]
    cuda.syncthreads()  # everyone has read before anyone writes
    slots[t] = float32(cuda.blockIdx.x + 1)


@cuda.jit
def local_before_write(seen):
    """seen (BLOCKS, THREADS): what each thread's local array held before it wrote it."""
    mine = cuda.local.array(2, float32)
    t = cuda.threadIdx.x  # [0, THREADS)
    seen[cuda.blockIdx.x, t] = mine[1]
    mine[1] = float32(t)


def test_the_replacements_are_installed():
    api = cuda.simulator.kernelapi
    assert getattr(api.FakeCUDAShared.array, "_minivgg", False)
    assert getattr(api.FakeCUDALocal.array, "_minivgg", False)


def test_a_blocks_threads_share_one_array_when_allocation_is_slow(monkeypatch):
    """A 2-ms allocation gives every thread of the block time to reach the same line: with
    look-up and store apart, several threads allocate an array each and the sums come out
    short (the race CI hit once in about a thousand launches, here every time)."""
    fresh = simulator._fresh

    def slow_fresh(shape, dtype):
        time.sleep(0.002)  # sleeping releases the GIL: the other threads run now
        return fresh(shape, dtype)

    monkeypatch.setattr(simulator, "_fresh", slow_fresh)
    out = np.zeros((BLOCKS, THREADS), np.float32)
    sum_of_slots[BLOCKS, THREADS](out)
    np.testing.assert_array_equal(out, THREADS * (THREADS + 1) / 2)


def test_every_block_starts_from_nan():
    """Block 1 must not find block 0's values (the simulator kept one array a launch), nor
    zeros (np.empty's usual contents): shared memory nobody wrote reads as NaN."""
    seen = np.zeros((BLOCKS, THREADS), np.float32)
    read_before_write[BLOCKS, THREADS](seen)
    assert np.isnan(seen).all(), seen


def test_dynamic_shared_memory_is_left_to_the_simulator():
    """shape 0 asks for the launch's dynamic shared memory: the simulator's own buffer."""
    shared = cuda.simulator.kernelapi.FakeCUDAShared(16)
    got = shared.array(0, float32)
    assert got.shape == (4,) and got.dtype == np.float32


def test_an_array_asked_for_outside_a_kernel_is_one_array_too():
    """Outside a launch (no block), the same line gives the same array, NaN-filled."""
    shared = cuda.simulator.kernelapi.FakeCUDAShared(0)
    got = [shared.array((2, 3), float32) for _ in range(2)]
    assert got[0] is got[1] and got[0].shape == (2, 3) and np.isnan(got[0]).all()


def test_local_arrays_start_from_nan():
    """A thread's local array before it writes it: NaN, not np.empty's leftovers."""
    seen = np.zeros((BLOCKS, THREADS), np.float32)
    local_before_write[BLOCKS, THREADS](seen)
    assert np.isnan(seen).all(), seen
