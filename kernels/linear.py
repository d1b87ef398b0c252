"""Linear (fully-connected) layer: y = x w^T + b, the three FC layers of every VGG config
(Table 1: FC-4096, FC-4096, FC-1000), trained by back-propagation (sect. 3.1).

    forward          y[n, o]  = b[o] + sum_i x[n, i] w[o, i]      y  = x w^T + b
    backward data    dx[n, i] = sum_o dy[n, o] w[o, i]            dx = dy w
    backward weight  dw[o, i] = sum_n dy[n, o] x[n, i]            dw = dy^T x
    backward bias    db[o]    = sum_n dy[n, o]

Shapes: x (N, I), w (O, I) -- torchvision's layout, one row per output unit --, b (O,),
y (N, O). N batch, I in-features, O out-features. Each of the three products is a GEMM
C (rows, cols) = A (rows, K) B (K, cols) with a different reduction length K:
forward K = I, backward data K = O, backward weight K = N.

Kernel ladder, one kernel per product in each version:
    v1  one thread per output element, a dot product read straight from global memory;
    v2  shared-memory tiled GEMM (the Numba docs' fast_matmul): a TPB x TPB block computes a
        TPB x TPB tile of C, staging TPB x TPB tiles of A and B in shared memory so each
        global element is read once per block instead of once per thread.
The bias gradient has a single kernel: one thread per o, reducing down the N rows (N is the
batch, small; consecutive threads read consecutive o, so each row read is coalesced).
"""
import numpy as np
from numba import cuda, float32, int32

from kernels.common import F1, F2, blocks_1d, ceil_div, check, check_size, launch
from kernels.gemm import matmul_abt_loop
from kernels.gemm_outer import block as outer_block, matmul_outer
from kernels.threads import threads


# ----------------------------------------------------------------------------------------
# NumPy reference

def forward_ref(x, w, b):
    return (x @ w.T + b).astype(x.dtype, copy=False)


def backward_ref(x, w, dy):
    """-> (dx, dw, db), the gradients of <dy, forward(x, w, b)>."""
    dx = dy @ w
    dw = dy.T @ x
    db = dy.sum(axis=0)
    return dx.astype(x.dtype, copy=False), dw.astype(w.dtype, copy=False), \
        db.astype(dy.dtype, copy=False)


# Fast CPU path (the cpu device's; tests/test_cpu_fast.py checks it against the above).
# The forward is kernels/gemm_outer.py's outer products: no horizontal sums, and each
# thread a strip of output features. At the cpu preset's fc6 and fc7 (batch 64: 64 -> 128
# and 128 -> 128; AVX2, Zen 3, us) on one thread 18.5 and 34 against BLAS's 19.6 and 34;
# on two 17 and 26 against kernels/gemm.py's dot-product blocks' 23 and 40 (NumPy's BLAS
# runs one thread a call on the cpu device, kernels/threads.py). Each sum adds its terms
# in order whatever the threads, so one thread and two give the same y. Outside the
# shapes it was measured for, as before: the dot-product blocks on more threads, BLAS on
# one. That is, under 8 rows (a block would repeat rows: one image at 2048 -> 256 took
# 634 us against BLAS's 39), over 2,048 inputs (the strip of transposed weights outgrows
# the caches: 1.6x BLAS's time at 4096 -> 256) and under one strip of outputs (fc8's 10
# classes would fill 10 of 16 lanes, and one thread). With AVX-512 the block is 8 x 32
# (outer3x3's, measured there for the convs; for these layers not yet measured).

OUTER_MIN_ROWS, OUTER_MAX_TERMS = 8, 2048


def forward_fast(x, w, b):
    """forward_ref's y for float32: gemm_outer.matmul_outer where measured (above), else
    gemm.matmul_abt_loop on more than one thread, else NumPy's BLAS."""
    single = x.dtype == w.dtype == b.dtype == np.float32
    if single and len(x) >= OUTER_MIN_ROWS:
        if x.shape[1] <= OUTER_MAX_TERMS and len(w) >= outer_block()[1]:
            return matmul_outer(x, w, b)
        if threads() > 1:  # a block of rows a thread
            return matmul_abt_loop(x, w) + b
    return forward_ref(x, w, b)


# ----------------------------------------------------------------------------------------
# CUDA kernels, v1: one thread per output element. Grid (ceil(cols/TPB), ceil(rows/TPB))
# of TPB x TPB blocks; threadIdx.x runs along the output's columns (the contiguous axis),
# so neighbouring threads write neighbouring elements.

TPB = 16  # threads per block side, and the side of a v2 tile (a compile-time constant)
# Row length of a tile stored transposed (sX[tx, ty] = ...): with rows of 16 floats, the
# 32 threads of a warp (tx 0-15, ty 0-1) would write words tx*16 + ty, 8 to a bank; rows
# of 17 put them in 32 different banks, and the reads sX[k, tx] stay conflict-free.
TPB_PAD = TPB + 1


@cuda.jit
def linear_forward_v1(x, w, b, y):
    """x (N,I), w (O,I), b (O,), y (N,O). Thread (n, o) computes y[n, o]. Overwrites y."""
    N, I, O = int32(x.shape[0]), int32(x.shape[1]), int32(w.shape[0])
    o = int32(cuda.blockIdx.x * TPB + cuda.threadIdx.x)  # [0, O) when in range
    n = int32(cuda.blockIdx.y * TPB + cuda.threadIdx.y)  # [0, N) when in range
    if n < N and o < O:
        acc = b[o]
        for i in range(I):  # i [0, I)
            acc += x[n, i] * w[o, i]
        y[n, o] = acc


@cuda.jit
def linear_backward_data_v1(dy, w, dx):
    """dy (N,O), w (O,I), dx (N,I). Thread (n, i) computes dx[n, i]. Overwrites dx."""
    N, O, I = int32(dy.shape[0]), int32(dy.shape[1]), int32(w.shape[1])
    i = int32(cuda.blockIdx.x * TPB + cuda.threadIdx.x)  # [0, I) when in range
    n = int32(cuda.blockIdx.y * TPB + cuda.threadIdx.y)  # [0, N) when in range
    if n < N and i < I:
        acc = float32(0.0)
        for o in range(O):  # o [0, O)
            acc += dy[n, o] * w[o, i]
        dx[n, i] = acc


@cuda.jit
def linear_backward_weight_v1(x, dy, dw):
    """x (N,I), dy (N,O), dw (O,I). Thread (o, i) computes dw[o, i]. Overwrites dw."""
    N, I, O = int32(x.shape[0]), int32(x.shape[1]), int32(dy.shape[1])
    i = int32(cuda.blockIdx.x * TPB + cuda.threadIdx.x)  # [0, I) when in range
    o = int32(cuda.blockIdx.y * TPB + cuda.threadIdx.y)  # [0, O) when in range
    if o < O and i < I:
        acc = float32(0.0)
        for n in range(N):  # n [0, N)
            acc += dy[n, o] * x[n, i]
        dw[o, i] = acc


# ----------------------------------------------------------------------------------------
# CUDA kernels, v2: tiled GEMM. Same grid and block as v1; block (bx, by) owns the output
# tile rows [by*TPB, by*TPB + TPB) x cols [bx*TPB, bx*TPB + TPB). For each of the
# ceil(K/TPB) steps along the reduction, the block loads sA[r, k] = A[row0 + r, k0 + k] and
# sB[k, c] = B[k0 + k, col0 + c] (zero outside the matrices, so any size works), then each
# thread adds the TPB products of its row of sA and column of sB. The three kernels differ
# only in where A and B come from (the transposes are index orders in the loads); every
# load reads global memory along threadIdx.x, i.e. along a contiguous axis.

@cuda.jit
def linear_forward_v2(x, w, b, y):
    """x (N,I), w (O,I), b (O,), y (N,O): y = x w^T + b, A = x, B = w^T, K = I.

    Thread (ty, tx) of block (bx, by) computes y[by*TPB + ty, bx*TPB + tx]; block TPB x TPB;
    shared: sA TPB x TPB, sB TPB x TPB_PAD float32. Overwrites y (bias fused into the store).
    """
    sA = cuda.shared.array((TPB, TPB), float32)
    sB = cuda.shared.array((TPB, TPB_PAD), float32)  # stored transposed: padded
    N, I, O = int32(x.shape[0]), int32(x.shape[1]), int32(w.shape[0])
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)  # [0, TPB)
    row0 = int32(cuda.blockIdx.y * TPB)  # [0, rows) step TPB: first output row of the tile
    col0 = int32(cuda.blockIdx.x * TPB)  # [0, cols) step TPB: first output column
    n, o = int32(row0 + ty), int32(col0 + tx)  # output element, when n < N, o < O
    acc = float32(0.0)
    for t in range(int32((I + TPB - 1) // TPB)):  # t [0, ceil(I/TPB)): tiles along I
        k0 = int32(t * TPB)  # [0, K) step TPB: first reduction index of the tile
        i = int32(k0 + tx)  # [k0, k0 + TPB): x's column this thread loads
        sA[ty, tx] = x[n, i] if n < N and i < I else float32(0.0)
        # sB[k, c] = w[col0 + c, k0 + k]: read w along its rows (contiguous in i),
        # store transposed so the product loop below reads sB by (k, c).
        wo = int32(col0 + ty)  # [col0, col0 + TPB): w's row this thread loads
        sB[tx, ty] = w[wo, i] if wo < O and i < I else float32(0.0)
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for k in range(TPB):  # k [0, TPB)
            acc += sA[ty, k] * sB[k, tx]
        cuda.syncthreads()  # everyone done reading before the next step overwrites them
    if n < N and o < O:
        y[n, o] = acc + b[o]


@cuda.jit
def linear_backward_data_v2(dy, w, dx):
    """dy (N,O), w (O,I), dx (N,I): dx = dy w, A = dy, B = w, K = O.

    Thread (ty, tx) of block (bx, by) computes dx[by*TPB + ty, bx*TPB + tx]; block TPB x TPB;
    shared: sA, sB TPB x TPB float32. Overwrites dx.
    """
    sA = cuda.shared.array((TPB, TPB), float32)
    sB = cuda.shared.array((TPB, TPB), float32)
    N, O, I = int32(dy.shape[0]), int32(dy.shape[1]), int32(w.shape[1])
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)  # [0, TPB)
    row0 = int32(cuda.blockIdx.y * TPB)  # [0, rows) step TPB: first output row of the tile
    col0 = int32(cuda.blockIdx.x * TPB)  # [0, cols) step TPB: first output column
    n, i = int32(row0 + ty), int32(col0 + tx)  # output element, when n < N, i < I
    acc = float32(0.0)
    for t in range(int32((O + TPB - 1) // TPB)):  # t [0, ceil(O/TPB)): tiles along O
        k0 = int32(t * TPB)  # [0, K) step TPB: first reduction index of the tile
        oa = int32(k0 + tx)  # [k0, k0 + TPB): dy's column this thread loads
        sA[ty, tx] = dy[n, oa] if n < N and oa < O else float32(0.0)
        ob = int32(k0 + ty)  # [k0, k0 + TPB): w's row this thread loads
        sB[ty, tx] = w[ob, i] if ob < O and i < I else float32(0.0)
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for k in range(TPB):  # k [0, TPB)
            acc += sA[ty, k] * sB[k, tx]
        cuda.syncthreads()  # everyone done reading before the next step overwrites them
    if n < N and i < I:
        dx[n, i] = acc


@cuda.jit
def linear_backward_weight_v2(x, dy, dw):
    """x (N,I), dy (N,O), dw (O,I): dw = dy^T x, A = dy^T, B = x, K = N.

    Thread (ty, tx) of block (bx, by) computes dw[by*TPB + ty, bx*TPB + tx]; block TPB x TPB;
    shared: sA TPB x TPB_PAD, sB TPB x TPB float32. Overwrites dw.
    """
    sA = cuda.shared.array((TPB, TPB_PAD), float32)  # stored transposed: padded
    sB = cuda.shared.array((TPB, TPB), float32)
    N, I, O = int32(x.shape[0]), int32(x.shape[1]), int32(dy.shape[1])
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)  # [0, TPB)
    row0 = int32(cuda.blockIdx.y * TPB)  # [0, rows) step TPB: first output row of the tile
    col0 = int32(cuda.blockIdx.x * TPB)  # [0, cols) step TPB: first output column
    o, i = int32(row0 + ty), int32(col0 + tx)  # output element, when o < O, i < I
    acc = float32(0.0)
    for t in range(int32((N + TPB - 1) // TPB)):  # t [0, ceil(N/TPB)): tiles along N
        k0 = int32(t * TPB)  # [0, K) step TPB: first reduction index of the tile
        # sA[r, k] = dy[k0 + k, row0 + r]: read dy along its rows (contiguous in o),
        # store transposed.
        na, oa = int32(k0 + ty), int32(row0 + tx)  # na [k0, k0 + TPB), oa [row0, row0 + TPB)
        sA[tx, ty] = dy[na, oa] if na < N and oa < O else float32(0.0)
        sB[ty, tx] = x[na, i] if na < N and i < I else float32(0.0)
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for k in range(TPB):  # k [0, TPB)
            acc += sA[ty, k] * sB[k, tx]
        cuda.syncthreads()  # everyone done reading before the next step overwrites them
    if o < O and i < I:
        dw[o, i] = acc


# ----------------------------------------------------------------------------------------
# Bias gradient: one thread per o, a 1-D grid of `threads`-thread blocks (BIAS_THREADS by
# default; the launcher takes another size so a test can cross a block edge cheaply).

BIAS_THREADS = 128


@cuda.jit
def linear_backward_bias_v1(dy, db):
    """dy (N,O), db (O,). Thread o sums column o of dy over the N rows. Overwrites db."""
    N, O = int32(dy.shape[0]), int32(dy.shape[1])
    o = int32(cuda.grid(1))  # [0, O) when in range
    if o < O:
        acc = float32(0.0)
        for n in range(N):  # n [0, N)
            acc += dy[n, o]
        db[o] = acc


PTX_SIGNATURES = [
    (linear_forward_v1, (F2, F2, F1, F2)),
    (linear_backward_data_v1, (F2, F2, F2)),
    (linear_backward_weight_v1, (F2, F2, F2)),
    (linear_forward_v2, (F2, F2, F1, F2)),
    (linear_backward_data_v2, (F2, F2, F2)),
    (linear_backward_weight_v2, (F2, F2, F2)),
    (linear_backward_bias_v1, (F2, F1)),
]


# ----------------------------------------------------------------------------------------
# Launchers. Grids come from the output's shape; the reduction length is read inside the
# kernels from the arrays themselves.

_KERNELS = {  # version -> (forward, backward data, backward weight)
    1: (linear_forward_v1, linear_backward_data_v1, linear_backward_weight_v1),
    2: (linear_forward_v2, linear_backward_data_v2, linear_backward_weight_v2),
}


MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y (gridDim.x allows 2^31 - 1)


def _kernel(version, which):
    if version not in _KERNELS:
        raise ValueError(f"linear: unknown kernel version {version!r}, have {sorted(_KERNELS)}")
    return _KERNELS[version][which]


def _matrix(name, a, rows=None, cols=None):
    """Check a C-contiguous float32 matrix; rows/cols None means any. Returns its shape."""
    check(name, a, ndim=2)
    want = (a.shape[0] if rows is None else rows, a.shape[1] if cols is None else cols)
    check(name, a, shape=want)
    check_size(name, a)
    return a.shape


def _launch(kernel, out, *args):
    """Launch a TPB x TPB-block kernel over the 2-D output `out` (rows, cols)."""
    rows, cols = out.shape
    if ceil_div(rows, TPB) > MAX_GRID_Y:
        raise ValueError(f"linear: {rows} output rows need more than {MAX_GRID_Y} blocks "
                         f"along the grid's y axis")
    if rows and cols:
        launch(kernel, (ceil_div(cols, TPB), ceil_div(rows, TPB)), (TPB, TPB), *args)


def forward(x, w, b, y, version=2):
    """y (N,O) = x (N,I) w (O,I)^T + b (O,)."""
    N, I = _matrix("linear x", x)
    O, _ = _matrix("linear w", w, cols=I)
    check("linear b", b, shape=(O,))
    _matrix("linear y", y, N, O)
    _launch(_kernel(version, 0), y, x, w, b, y)


def backward_data(dy, w, dx, version=2):
    """dx (N,I) = dy (N,O) w (O,I)."""
    N, O = _matrix("linear dy", dy)
    _, I = _matrix("linear w", w, rows=O)
    _matrix("linear dx", dx, N, I)
    _launch(_kernel(version, 1), dx, dy, w, dx)


def backward_weight(x, dy, dw, version=2):
    """dw (O,I) = dy (N,O)^T x (N,I)."""
    N, I = _matrix("linear x", x)
    _, O = _matrix("linear dy", dy, rows=N)
    _matrix("linear dw", dw, O, I)
    _launch(_kernel(version, 2), dw, x, dy, dw)


def backward_bias(dy, db, threads=BIAS_THREADS):
    """db (O,) = sum over n of dy (N,O)."""
    _, O = _matrix("linear dy", dy)
    check("linear db", db, shape=(O,))
    if O:
        launch(linear_backward_bias_v1, blocks_1d("linear bias", O, threads), threads, dy, db)
