"""Dropout (inverted): zero each element with probability p, scale the survivors by 1/(1-p),
so the expectation of y equals x and evaluation needs no rescaling. VGG uses it on the first
two fully-connected layers, p = 0.5 (sect. 3.1; AlexNet sect. 4.2).

    forward   y[i]  = x[i]  * keep[i] / (1 - p)
    backward  dx[i] = dy[i] * keep[i] / (1 - p)        (dropout is linear in x)
    keep[i]   = hash(seed, offset + i) >= p * 2^32     (a Bernoulli(1 - p) draw)

Any shape; i is the flat C-order index, and the kernels see the arrays flattened to (T,).
p in [0, 1) (p = 0 is the identity), seed an integer in [0, 2^32).

offset (default 0) is the global flat index of element 0, in [0, 2^32): data-parallel
training (sect. 3.3, minivgg/distributed.py) gives each process a slice of the batch, and
a slice that starts at sample s of a batch of (N, F) activations passes offset = s * F,
so each element draws the number it would draw in the whole batch on one device: R
processes apply the masks of one. (offset + i is taken modulo 2^32, like the hash.)

The randomness is counter-based: hash(seed, i) is a pure function of the seed and the
element index, so backward recomputes the mask instead of storing it, any thread can draw
its own element's number independently, and a run is reproducible from its seeds. The hash
is Wellons' "triple32" integer finaliser ("Prospecting for Hash Functions", 2018, the
lowest-bias 32-bit hash of that search): xorshift-multiply rounds with distinct shifts
(17, 11, 15, 14) and three distinct multipliers, a bijection of 32-bit words in which
every input bit affects every output bit:

    key  = triple32(seed + GOLDEN)    spread the seed over all 32 bits (once, on the host;
                                      the offset keeps seed 0 from giving key 0)
    h    = triple32(i ^ key)          one finaliser of index and key

All arithmetic is modulo 2^32. NumPy does that with uint32 arrays (array arithmetic wraps);
the kernel holds the 32-bit values in uint64 and masks after each multiply, because Numba
widens uint32 products to 64 bits and the simulator's uint32 scalars would warn on overflow.
(Two seeds give masks that are the same hash read at indices i ^ key1 ^ key2: a permutation
that scatters the array, harmless for dropout; tests/test_dropout.py checks that masks of
consecutive seeds, neighbouring elements and neighbouring rows are uncorrelated.)

Why not two rounds of a two-multiply finaliser: an earlier version applied lowbias32 twice;
lowbias32 ends with h ^= h >> 16 and starts with it too, and that xorshift undoes itself,
so the two back-to-back steps cancelled (the compiler removed them) and the "two rounds"
were four multiplies with half the mixing they seemed to have.
"""
import numpy as np
from numba import cuda, float32, int32, uint32, uint64

from kernels.common import F1, blocks_1d, check, check_size, launch

T1, T2, T3 = 0xED5AD4BB, 0xAC4C1B51, 0x31848BAB  # triple32's multipliers
GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: the seed's offset


# ----------------------------------------------------------------------------------------
# NumPy reference

def _triple32_ref(h):
    """triple32 on a uint32 array (wrapping arithmetic)."""
    h = h ^ (h >> np.uint32(17))
    h = h * np.uint32(T1)
    h = h ^ (h >> np.uint32(11))
    h = h * np.uint32(T2)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(T3)
    return h ^ (h >> np.uint32(14))


def key_ref(seed):
    """triple32(seed + GOLDEN) as a Python int: the per-seed constant of the hash."""
    return int(_triple32_ref(np.array([(seed + GOLDEN) % 2**32], dtype=np.uint32))[0])


def hash_ref(seed, T, offset=0):
    """hash(seed, offset + i) for i in [0, T): uint32 array (T,)."""
    i = np.arange(T, dtype=np.uint32) + np.uint32(offset)  # wraps modulo 2^32
    return _triple32_ref(i ^ np.uint32(key_ref(seed)))


def _threshold(p):
    """The integer t with keep = hash >= t, t = floor(p * 2^32) in [0, 2^32) for p in [0, 1)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
    return int(p * 2.0**32)


def _check_seed(seed, what="seed"):
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"dropout {what} must be in [0, 2^32), got {seed!r}")
    return int(seed)


def mask_ref(shape, p, seed, offset=0):
    """keep (shape) bool: True where the element survives."""
    T = int(np.prod(shape))
    offset = _check_seed(offset, "offset")
    return (hash_ref(_check_seed(seed), T, offset) >= _threshold(p)).reshape(shape)


def forward_ref(x, p, seed, offset=0):
    scale = x.dtype.type(1.0 / (1.0 - p))
    keep = mask_ref(x.shape, p, seed, offset)
    return np.where(keep, x * scale, 0).astype(x.dtype, copy=False)


def backward_ref(dy, p, seed, offset=0):
    return forward_ref(dy, p, seed, offset)  # linear: the same mask and scale


# ----------------------------------------------------------------------------------------
# CUDA kernel. Forward and backward are the same operation (multiply by the recomputed
# mask and the scale), so one kernel serves both. The key triple32(seed + GOLDEN) is the
# same for every element: the launcher computes it on the host with key_ref (no device
# work, no sync).

_MASK32 = 0xFFFFFFFF


@cuda.jit
def dropout_v1(x, y, threshold, scale, key, offset):
    """x, y (T,); threshold, key, offset uint32; scale float32 = 1/(1-p).

    y[i] = x[i] * scale if hash(seed, offset + i) >= threshold else 0. Grid-stride loop,
    1-D blocks, one element per thread per pass; no shared memory. Overwrites y. Used for
    forward (x, y) and backward (dy, dx).
    """
    T = int32(x.shape[0])
    t = uint64(threshold)
    i = int32(cuda.grid(1))  # [0, gridsize)
    stride = int32(cuda.gridsize(1))
    while i < T:  # i [0, T)
        # hash(seed, i) = triple32(i ^ key): the 32-bit value lives in a uint64; masking
        # after each multiply is exactly uint32 wrap-around. Every operand is uint64 (a
        # uint64 mixed with a signed int would make Numba compute in float64).
        # The global index offset + i wraps modulo 2^32, as in the reference.
        h = ((uint64(i) + uint64(offset)) & uint64(_MASK32)) ^ uint64(key)
        h ^= h >> uint64(17)
        h = (h * uint64(T1)) & uint64(_MASK32)
        h ^= h >> uint64(11)
        h = (h * uint64(T2)) & uint64(_MASK32)
        h ^= h >> uint64(15)
        h = (h * uint64(T3)) & uint64(_MASK32)
        h ^= h >> uint64(14)
        y[i] = x[i] * scale if h >= t else float32(0.0)
        i += stride


PTX_SIGNATURES = [
    (dropout_v1, (F1, F1, uint32, float32, uint32, uint32)),
]


# ----------------------------------------------------------------------------------------
# Launchers: flat views of C-contiguous arrays, a grid sized from T and capped at
# max_blocks (the loop strides over the rest; blocks_1d checks int32 indices cannot wrap).

THREADS = 256
MAX_BLOCKS = 65536


def _launch(names, a, out, p, seed, offset, threads, max_blocks):
    check(f"dropout {names[0]}", a)
    check(f"dropout {names[1]}", out, shape=a.shape)
    check_size(f"dropout {names[0]}", a)
    threshold, key = np.uint32(_threshold(p)), np.uint32(key_ref(_check_seed(seed)))
    offset = np.uint32(_check_seed(offset, "offset"))
    scale = np.float32(1.0 / (1.0 - p))
    T = a.size
    if T:
        blocks = blocks_1d("dropout", T, threads, max_blocks)
        launch(dropout_v1, blocks, threads, a.reshape(T), out.reshape(T), threshold, scale,
               key, offset)


def forward(x, y, p, seed, offset=0, threads=THREADS, max_blocks=MAX_BLOCKS):
    """offset: the global flat index of x's element 0 (0 on one device)."""
    _launch(("x", "y"), x, y, p, seed, offset, threads, max_blocks)


def backward(dy, dx, p, seed, offset=0, threads=THREADS, max_blocks=MAX_BLOCKS):
    _launch(("dy", "dx"), dy, dx, p, seed, offset, threads, max_blocks)
