"""Convolution: every conv layer of VGG (paper sect. 2.1: 3x3, stride 1, pad 1; config C's
1x1), the dense evaluation's FC-as-conv layers (sect. 3.2: 7x7 and 1x1), and AlexNet's
11x11 stride 4 first layer.

Shapes (NCHW):  x (N, C, H, W)   w (K, C, R, S)   b (K,)   y (N, K, P, Q)
                P = (H + 2*pad - R) // stride + 1,   Q = (W + 2*pad - S) // stride + 1

forward, a cross-correlation (no filter flip), as in every framework:
    y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*stride - pad + r, q*stride - pad + s]
with x read as 0 outside [0,H) x [0,W) (zero padding).

backward, given dy = dL/dy of y's shape:
    db[k]       = sum_{n,p,q} dy[n,k,p,q]
    dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*stride - pad + r, q*stride - pad + s]
    dx[n,c,h,v] = sum over (k, r, s) and the (p, q) with p*stride - pad + r = h and
                  q*stride - pad + s = v of dy[n,k,p,q] * w[k,c,r,s]
                  (for stride > 1 only every stride-th (h + pad - r) has such a p)

Implicit GEMM view. Unroll x into a matrix A with one row per output pixel m = (n,p,q) and
one column per filter tap j = (c,r,s): A[m, j] = x[n, c, p*stride - pad + r, ...]. Then
    y  (M x K)   = A (M x CRS) @ w^T (CRS x K)      M = N*P*Q rows, K columns, C*R*S reduction
    dw (K x CRS) = dy^T (K x M) @ A (M x CRS)       reduction over N*P*Q
    dx           = dy (M x K) @ w (K x CRS), scattered back through the unrolling (col2im)
The references below build A^T (im2col, one matrix for the whole batch) in memory; the v2
and v3 kernels never do: they gather tiles of A straight from x into shared memory (v3
also keeps a 4 x 4 tile of outputs per thread in registers, and splits dw's long
reduction across blocks).

Index arithmetic in the kernels is int32, so every array must have fewer than 2**31
elements (the launchers check).
"""
import numpy as np
from numba import cuda, float32, int32
from numpy.lib.stride_tricks import sliding_window_view

from kernels.common import F1, F2, F3, F4, blocks_1d, ceil_div, check, check_size, launch


def output_size(H, W, R, S, stride, pad):
    """(P, Q) of a conv of an H x W input with an R x S filter; ValueError if empty."""
    if stride < 1 or pad < 0:
        raise ValueError(f"conv needs stride >= 1 and pad >= 0, got stride {stride}, pad {pad}")
    P = (H + 2 * pad - R) // stride + 1
    Q = (W + 2 * pad - S) // stride + 1
    if P < 1 or Q < 1:
        raise ValueError(f"conv filter {R}x{S} (stride {stride}, pad {pad}) does not fit "
                         f"the {H}x{W} input: output would be {P}x{Q}")
    return P, Q


# ----------------------------------------------------------------------------------------
# NumPy reference (the oracle, and what the cpu device trains with)

def _im2col(x, R, S, stride, pad):
    """The unrolled input of the whole batch, transposed: cols (C*R*S, N*P*Q) with
    cols[(c,r,s), (n,p,q)] = x_padded[n, c, p*stride + r, q*stride + s].

    One matrix for the batch (not one per image) makes each GEMM below a single large
    BLAS call; that, and reusing cols from forward in backward, is 2x faster on CPU."""
    N, C = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    windows = sliding_window_view(xp, (R, S), axis=(2, 3))  # (N, C, H+2pad-R+1, ..., R, S)
    windows = windows[:, :, ::stride, ::stride]              # every stride-th one: P x Q
    P, Q = windows.shape[2:4]
    cols = np.ascontiguousarray(windows.transpose(1, 4, 5, 0, 2, 3))  # (C, R, S, N, P, Q)
    return cols.reshape(C * R * S, N * P * Q)


def forward_ref_cols(x, w, b, stride=1, pad=0):
    """(y, cols): forward_ref's output and the unrolled input, which backward_ref reuses."""
    N, _, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = output_size(H, W, R, S, stride, pad)
    cols = _im2col(x, R, S, stride, pad)
    y = w.reshape(K, -1) @ cols                       # the GEMM: (K, CRS) @ (CRS, NPQ)
    y += b.reshape(K, 1)
    y = y.reshape(K, N, P, Q).transpose(1, 0, 2, 3)   # (N, K, P, Q)
    return np.ascontiguousarray(y, dtype=x.dtype), cols


def forward_ref(x, w, b, stride=1, pad=0):
    """y = conv(x, w) + b, in x's dtype. x (N,C,H,W), w (K,C,R,S), b (K,) -> (N,K,P,Q)."""
    return forward_ref_cols(x, w, b, stride, pad)[0]


def backward_ref(x, w, dy, stride=1, pad=0, need_dx=True, cols=None):
    """(dx, dw, db) of forward_ref, in x's dtype; dx is None unless need_dx.
    cols: forward_ref_cols's unrolled x, if at hand (else it is built again)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2:]
    dyt = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(K, N * P * Q)
    db = dyt.sum(axis=1).astype(x.dtype, copy=False)
    if cols is None:
        cols = _im2col(x, R, S, stride, pad)
    dw = (dyt @ cols.T).reshape(w.shape).astype(x.dtype, copy=False)  # (K, NPQ) @ (NPQ, CRS)
    if not need_dx:
        return None, dw, db
    dcols = (w.reshape(K, -1).T @ dyt).reshape(C, R, S, N, P, Q)  # dL/dcols = w^T @ dy
    # col2im: tap (r, s) of output (p, q) read padded pixel (p*stride + r, q*stride + s),
    # so add each tap's (C, N, P, Q) slice back there. A loop over R*S taps, not pixels.
    dxp = np.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=dcols.dtype)
    for r in range(R):
        for s in range(S):
            dxp[:, :, r:r + stride * (P - 1) + 1:stride, s:s + stride * (Q - 1) + 1:stride] \
                += dcols[:, r, s]
    dx = dxp[:, :, pad:pad + H, pad:pad + W].transpose(1, 0, 2, 3)  # back to (N, C, H, W)
    return np.ascontiguousarray(dx, dtype=x.dtype), dw, db


# ----------------------------------------------------------------------------------------
# Fast CPU path: what the cpu device trains with. The same GEMMs as the reference, with
# the unrolling arranged for speed (tests/test_cpu_fast.py checks it against the above):
#
# - the reference's im2col is one 6-D gather that moves Q pixels (8 to 32) at a time;
#   here each filter tap is one slice copy, laid out so the copied runs are long:
#   "rows" (few channels, stride 1): output pixels on a grid as wide as the PADDED input,
#   Wp, so a tap's pixels are one contiguous run of P*Wp per (channel, image); the
#   Wp - Q junk columns of each output row are dropped after the GEMM (6% to 25% more
#   GEMM work at 32 to 8 pixels, against 2-3x faster copies);
#   "nhwc" (more channels than output columns: the deep layers): an NHWC unrolling whose
#   runs are the C channels of a pixel;
# - dx of a stride-1 conv is computed as a conv of dy with the filter flipped and its
#   in/out channels swapped (padding R-1-pad): a gather like forward, instead of the
#   reference's GEMM-then-scatter-add (col2im), which moves 1.5x the bytes.

def _unroll_rows(x, R, S, pad):
    """Stride 1: cols (C*R*S, N*P*Wp), cols[(c,r,s), (n,p,v)] = x_padded[n, c, p+r, v+s]
    for v in [0, Wp): columns v >= Q are junk (they read into the next row)."""
    N, C, H, W = x.shape
    P, Hp, Wp = H + 2 * pad - R + 1, H + 2 * pad, W + 2 * pad
    xp = np.zeros((C, N, Hp + 1, Wp), x.dtype)  # + 1 row: the last tap's run ends S-1 past
    xp[:, :, pad:pad + H, pad:pad + W] = x.transpose(1, 0, 2, 3)
    flat = xp.reshape(C, N, (Hp + 1) * Wp)
    cols = np.empty((C, R, S, N, P * Wp), x.dtype)
    for r in range(R):
        for s in range(S):
            cols[:, r, s] = flat[:, :, r * Wp + s:r * Wp + s + P * Wp]
    return cols.reshape(C * R * S, N * P * Wp)


def _unroll_nhwc(x, R, S, stride, pad, P, Q):
    """cols (N*P*Q, R*S*C), cols[(n,p,q), (r,s,c)] = x_padded[n, c, p*stride+r, q*stride+s]."""
    N, C, H, W = x.shape
    xp = np.zeros((N, H + 2 * pad, W + 2 * pad, C), x.dtype)
    xp[:, pad:pad + H, pad:pad + W] = x.transpose(0, 2, 3, 1)
    cols = np.empty((N, P, Q, R, S, C), x.dtype)
    for r in range(R):
        for s in range(S):
            cols[:, :, :, r, s] = xp[:, r:r + stride * (P - 1) + 1:stride,
                                     s:s + stride * (Q - 1) + 1:stride]
    return cols.reshape(N * P * Q, R * S * C)


def unroll_fast(x, R, S, stride=1, pad=0):
    """(cols, Wp): x unrolled for the conv's GEMM; Wp > 0 for the "rows" layout, 0 for
    "nhwc" (see above). The longer copied run wins: Q pixels against C channels."""
    N, C, H, W = x.shape
    P, Q = output_size(H, W, R, S, stride, pad)
    if stride == 1 and C <= Q:
        return _unroll_rows(x, R, S, pad), W + 2 * pad
    return _unroll_nhwc(x, R, S, stride, pad, P, Q), 0


def _gemm_fast(unrolled, w, N, P, Q):
    """An (N, K, P, Q) view of conv(x, w) without the bias, from unroll_fast's output."""
    cols, Wp = unrolled
    K = w.shape[0]
    if Wp:
        y = w.reshape(K, -1) @ cols                      # (K, CRS) @ (CRS, N*P*Wp)
        return y.reshape(K, N, P, Wp)[:, :, :, :Q].transpose(1, 0, 2, 3)
    y = cols @ w.transpose(0, 2, 3, 1).reshape(K, -1).T  # (NPQ, RSC) @ (RSC, K)
    return y.reshape(N, P, Q, K).transpose(0, 3, 1, 2)


def forward_fast(x, w, b, stride=1, pad=0):
    """(y, unrolled): forward_ref's y, and x unrolled (for backward_fast)."""
    N, _, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = output_size(H, W, R, S, stride, pad)
    unrolled = unroll_fast(x, R, S, stride, pad)
    y = np.empty((N, K, P, Q), x.dtype)
    np.add(_gemm_fast(unrolled, w, N, P, Q), b.reshape(1, K, 1, 1), out=y)  # bias + NCHW
    return y, unrolled


def backward_fast(x, w, dy, stride=1, pad=0, need_dx=True, unrolled=None):
    """(dx, dw, db) as backward_ref. unrolled: forward_fast's, if at hand."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2:]
    cols, Wp = unrolled if unrolled is not None else unroll_fast(x, R, S, stride, pad)
    db = dy.sum(axis=(0, 2, 3)).astype(x.dtype, copy=False)
    if Wp:  # dy on the same Wp-wide grid, 0 in the junk columns so they add nothing
        dyt = np.zeros((K, N, P, Wp), dy.dtype)
        dyt[:, :, :, :Q] = dy.transpose(1, 0, 2, 3)
        # (CRS, NPWp) @ (NPWp, K), transposed: OpenBLAS runs this long, thin reduction
        # 25-40% faster with K as the short output side than as the short row count
        dw = (cols @ dyt.reshape(K, -1).T).T.reshape(w.shape)
    else:
        dyt = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(K, N * P * Q)
        dw = (dyt @ cols).reshape(K, R, S, C).transpose(0, 3, 1, 2)
    dw = np.ascontiguousarray(dw, dtype=x.dtype)
    if not need_dx:
        return None, dw, db
    if stride != 1 or R != S or pad > R - 1:  # never in VGG training: the reference's col2im
        return backward_ref(x, w, dy, stride, pad)[0], dw, db
    w_flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C,K,R,S)
    dunrolled = unroll_fast(dy, R, S, 1, R - 1 - pad)
    dx = np.ascontiguousarray(_gemm_fast(dunrolled, w_flipped, N, H, W), dtype=x.dtype)
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# CUDA kernels, version 1: one thread per output element, loops straight from the math

@cuda.jit
def conv_forward_v1(x, w, b, y, stride, pad):
    """One thread per y[n,k,p,q], 1-D grid over N*K*P*Q (block THREADS). No shared memory.
    Each thread sums its C*R*S taps, skipping those in the zero padding. Overwrites y."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    K, R, S = int32(w.shape[0]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(y.shape[2]), int32(y.shape[3])
    i = int32(cuda.grid(1))  # [0, N*K*P*Q) plus the last block's tail
    if i >= N * K * P * Q:
        return
    q = int32(i % Q)                # [0, Q)
    p = int32((i // Q) % P)         # [0, P)
    k = int32((i // (P * Q)) % K)   # [0, K)
    n = int32(i // (K * P * Q))     # [0, N)
    acc = b[k]
    for c in range(C):
        for r in range(R):
            ih = int32(p * stride - pad + r)  # input row, [-pad, H+pad): outside is padding
            if ih < 0 or ih >= H:
                continue
            for s in range(S):
                iw = int32(q * stride - pad + s)  # input column, likewise
                if iw >= 0 and iw < W:
                    acc += x[n, c, ih, iw] * w[k, c, r, s]
    y[n, k, p, q] = acc


@cuda.jit
def conv_backward_data_v1(dy, w, dx, stride, pad):
    """One thread per dx[n,c,ih,iw], 1-D grid over N*C*H*W (block THREADS). No shared memory.
    A gather: the thread visits every (k, r, s) and keeps those where some output (p, q)
    read this pixel, i.e. ih + pad - r = p*stride with 0 <= p < P (same for columns).
    Overwrites dx (pixels no output reads get 0)."""
    N, C, H, W = int32(dx.shape[0]), int32(dx.shape[1]), int32(dx.shape[2]), int32(dx.shape[3])
    K, R, S = int32(w.shape[0]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    i = int32(cuda.grid(1))  # [0, N*C*H*W) plus the last block's tail
    if i >= N * C * H * W:
        return
    iw = int32(i % W)               # [0, W)
    ih = int32((i // W) % H)        # [0, H)
    c = int32((i // (H * W)) % C)   # [0, C)
    n = int32(i // (C * H * W))     # [0, N)
    acc = float32(0.0)
    for k in range(K):
        for r in range(R):
            ph = int32(ih + pad - r)  # = p*stride if output row p read row ih with tap r
            if ph < 0 or ph % stride != 0 or ph // stride >= P:
                continue
            p = int32(ph // stride)  # [0, P)
            for s in range(S):
                qw = int32(iw + pad - s)  # = q*stride if output column q read iw with tap s
                if qw >= 0 and qw % stride == 0 and qw // stride < Q:
                    acc += dy[n, k, p, qw // stride] * w[k, c, r, s]
    dx[n, c, ih, iw] = acc


@cuda.jit
def conv_backward_weight_v1(x, dy, dw, stride, pad):
    """One thread per dw[k,c,r,s], 1-D grid over K*C*R*S (block THREADS). No shared memory.
    Each thread reduces over all N*P*Q outputs (long loops, few threads: the slow one).
    Overwrites dw."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    K, R, S = int32(dw.shape[0]), int32(dw.shape[2]), int32(dw.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    i = int32(cuda.grid(1))  # [0, K*C*R*S) plus the last block's tail
    if i >= K * C * R * S:
        return
    s = int32(i % S)                # [0, S)
    r = int32((i // S) % R)         # [0, R)
    c = int32((i // (R * S)) % C)   # [0, C)
    k = int32(i // (C * R * S))     # [0, K)
    acc = float32(0.0)
    for n in range(N):
        for p in range(P):
            ih = int32(p * stride - pad + r)  # input row tap r of output row p read
            if ih < 0 or ih >= H:
                continue
            for q in range(Q):
                iw = int32(q * stride - pad + s)
                if iw >= 0 and iw < W:
                    acc += dy[n, k, p, q] * x[n, c, ih, iw]
    dw[k, c, r, s] = acc


BIAS_THREADS = 128  # a power of two: the tree reduction halves it


@cuda.jit
def conv_backward_bias_v1(dy, out, images):
    """dy seen as (N, K, P*Q); out (chunks, K). Block (k, z) of grid (K, chunks), block
    BIAS_THREADS: it sums dy[:, k] over the images n in [z*images, (z+1)*images) -- each
    thread a strided share of their P*Q values, then a shared-memory tree reduction
    (BIAS_THREADS floats) adds the shares. Overwrites out[z, k]: db itself, seen as (1, K),
    when there is one chunk of images, else partial sums for conv_sum_partials_v1.
    Why chunks of images: K blocks alone (64 for conv1) cannot fill a GPU's SMs."""
    N, PQ = int32(dy.shape[0]), int32(dy.shape[2])
    k = int32(cuda.blockIdx.x)   # [0, K)
    z = int32(cuda.blockIdx.y)   # [0, chunks)
    t = int32(cuda.threadIdx.x)  # [0, BIAS_THREADS)
    n_begin = int32(z * images)  # [0, N): this block's first image
    n_end = int32(min(N, n_begin + images))
    acc = float32(0.0)
    for n in range(n_begin, n_end):
        for pq in range(t, PQ, BIAS_THREADS):  # [0, P*Q), coalesced across the block
            acc += dy[n, k, pq]
    part = cuda.shared.array(BIAS_THREADS, float32)
    part[t] = acc
    cuda.syncthreads()  # every share is in part[] before anyone adds
    half = int32(BIAS_THREADS // 2)
    while half > 0:
        if t < half:
            part[t] += part[t + half]
        cuda.syncthreads()  # this level's sums are written before the next level reads them
        half = int32(half // 2)
    if t == 0:
        out[z, k] = part[0]


@cuda.jit
def conv_sum_partials_v1(partial, out):
    """partial (chunks, E), out (E,): out[e] = sum over z of partial[z, e], added in the
    order z = 0, 1, ... so the result is the same bit for bit on every run (atomics would
    add in whatever order the blocks finish). One thread per e, a 1-D grid of 1-D blocks.
    No shared memory. Overwrites out. Second pass of the split-K weight and bias gradients."""
    Z, E = int32(partial.shape[0]), int32(partial.shape[1])
    e = int32(cuda.grid(1))  # [0, E) plus the last block's tail
    if e < E:
        acc = float32(0.0)
        for z in range(Z):  # [0, chunks), in order
            acc += partial[z, e]
        out[e] = acc


# ----------------------------------------------------------------------------------------
# CUDA kernels, version 2: tiled implicit GEMM through shared memory
#
# Each block computes a TILE x TILE tile of the GEMM's output, one element per thread,
# block (TILE, TILE). It walks the reduction TILE at a time: the block's threads gather a
# TILE x TILE piece of each operand into shared memory (one element each; zero outside
# the matrix or in the padding), sync, and every thread does TILE multiply-adds from
# shared memory. Each global element loaded is so reused TILE times. No im2col buffer.

TILE = 16
TILE_PAD = TILE + 1  # row length of tiles stored transposed: a column walk hits 17 banks


@cuda.jit
def conv_forward_v2(x, w, b, y, stride, pad):
    """y = A @ w^T + b as a tiled GEMM: rows m = (n,p,q) in [0, N*P*Q), columns k in [0, K),
    reduction j = (c,r,s) in [0, C*R*S). Grid (ceil(N*P*Q/TILE), ceil(K/TILE)), block
    (TILE, TILE): thread (tx, ty) computes y at row m0+tx, column k0+ty.
    Shared: a[j, m] (TILE x TILE) gathered from x, wt[j, k] (TILE x TILE) from w.
    Overwrites y."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    K, R, S = int32(w.shape[0]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(y.shape[2]), int32(y.shape[3])
    RS, PQ = int32(R * S), int32(P * Q)
    CRS, M = int32(C * RS), int32(N * PQ)
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)  # [0, TILE) each
    m0, k0 = int32(cuda.blockIdx.x * TILE), int32(cuda.blockIdx.y * TILE)
    a = cuda.shared.array((TILE, TILE), float32)
    wt = cuda.shared.array((TILE, TILE), float32)
    # The output pixel this thread gathers A for (and computes): row m = m0 + tx.
    m = int32(m0 + tx)                  # [0, M) + tail
    n = int32(m // PQ)                  # [0, N) when m < M
    p = int32((m - n * PQ) // Q)        # [0, P)
    q = int32(m - n * PQ - p * Q)       # [0, Q)
    k_load = int32(k0 + tx)             # [0, K) + tail: the filter whose tap it loads
    acc = float32(0.0)
    for j0 in range(0, CRS, TILE):      # tile count from the reduction length C*R*S
        j = int32(j0 + ty)              # [0, CRS) + tail: the tap (c, r, s) this thread loads
        c = int32(j // RS)              # [0, C)
        r = int32((j - c * RS) // S)    # [0, R)
        s = int32(j - c * RS - r * S)   # [0, S)
        ih, iw = int32(p * stride - pad + r), int32(q * stride - pad + s)
        v = float32(0.0)
        if m < M and j < CRS and ih >= 0 and ih < H and iw >= 0 and iw < W:
            v = x[n, c, ih, iw]
        a[ty, tx] = v                   # A[m0+tx, j0+ty]; tx is contiguous: no conflicts
        v = float32(0.0)
        if k_load < K and j < CRS:
            v = w[k_load, c, r, s]
        wt[ty, tx] = v                  # w^T[j0+ty, k0+tx]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for jj in range(TILE):
            acc += a[jj, tx] * wt[jj, ty]
        cuda.syncthreads()  # everyone is done reading before the next step overwrites them
    k = int32(k0 + ty)                  # [0, K) + tail: the output channel it computes
    if m < M and k < K:
        y[n, k, p, q] = acc + b[k]


@cuda.jit
def conv_backward_data_v2(dy, w, dx, stride, pad):
    """dx as a tiled implicit GEMM: rows m = (n,ih,iw) in [0, N*H*W), columns c in [0, C),
    reduction j = (k,r,s) in [0, K*R*S) of dY'[m, j] @ w[j, c], where dY'[m, j] is
    dy[n, k, (ih+pad-r)/stride, (iw+pad-s)/stride] when that is a whole, in-range output
    position and 0 otherwise (for stride 1: dy zero-padded, convolved with the flipped
    filter). Grid (ceil(N*H*W/TILE), ceil(C/TILE)), block (TILE, TILE): thread (tx, ty)
    computes dx at row m0+tx, column c0+ty.
    Shared: g[j, m] (TILE x TILE) gathered from dy, wt[j, c] (TILE x TILE) from w.
    Overwrites dx."""
    N, C, H, W = int32(dx.shape[0]), int32(dx.shape[1]), int32(dx.shape[2]), int32(dx.shape[3])
    K, R, S = int32(w.shape[0]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    RS, HW = int32(R * S), int32(H * W)
    KRS, M = int32(K * RS), int32(N * HW)
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)  # [0, TILE) each
    m0, c0 = int32(cuda.blockIdx.x * TILE), int32(cuda.blockIdx.y * TILE)
    g = cuda.shared.array((TILE, TILE), float32)
    wt = cuda.shared.array((TILE, TILE), float32)
    m = int32(m0 + tx)                  # [0, M) + tail: the input pixel (n, ih, iw)
    n = int32(m // HW)                  # [0, N) when m < M
    ih = int32((m - n * HW) // W)       # [0, H)
    iw = int32(m - n * HW - ih * W)     # [0, W)
    c_load = int32(c0 + tx)             # [0, C) + tail: the input channel whose weight it loads
    acc = float32(0.0)
    for j0 in range(0, KRS, TILE):      # tile count from the reduction length K*R*S
        j = int32(j0 + ty)              # [0, KRS) + tail: the (k, r, s) this thread loads
        k = int32(j // RS)              # [0, K)
        r = int32((j - k * RS) // S)    # [0, R)
        s = int32(j - k * RS - r * S)   # [0, S)
        ph, qw = int32(ih + pad - r), int32(iw + pad - s)  # p*stride, q*stride if they exist
        v = float32(0.0)
        if (m < M and j < KRS and ph >= 0 and qw >= 0 and ph % stride == 0
                and qw % stride == 0 and ph // stride < P and qw // stride < Q):
            v = dy[n, k, ph // stride, qw // stride]
        g[ty, tx] = v                   # dY'[m0+tx, j0+ty]
        v = float32(0.0)
        if c_load < C and j < KRS:
            v = w[k, c_load, r, s]
        wt[ty, tx] = v                  # w[j0+ty, c0+tx]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for jj in range(TILE):
            acc += g[jj, tx] * wt[jj, ty]
        cuda.syncthreads()  # everyone is done reading before the next step overwrites them
    c = int32(c0 + ty)                  # [0, C) + tail: the channel it computes
    if m < M and c < C:
        dx[n, c, ih, iw] = acc


@cuda.jit
def conv_backward_weight_v2(x, dy, out, stride, pad, chunk):
    """dw = dy^T @ A as a tiled GEMM, split-K: rows k in [0, K), columns j = (c,r,s) in
    [0, C*R*S), reduction l = (n,p,q) in [0, N*P*Q) cut into chunks of `chunk` pixels (a
    multiple of TILE). Grid (ceil(C*R*S/TILE), ceil(K/TILE), chunks), block (TILE, TILE):
    block z reduces l in [z*chunk, (z+1)*chunk) for its tile; thread (tx, ty) computes the
    tile's element at row k0+ty, column j0+tx (tx contiguous in dw).
    Shared: d[l, k] from dy and a[l, j] gathered from x, both TILE x TILE_PAD, stored
    transposed (l runs along tx for coalesced loads).
    Overwrites out[z] (K, C, R, S): out is dw seen as (1, K, C, R, S) when there is one
    chunk, else the (chunks, K, C, R, S) partial sums that conv_sum_partials_v1 adds up.
    Why chunks: dw is small and its reduction long (conv1_1 at N=32, 224x224: a 64 x 27 dw
    is 8 tiles, each a 1.6M-long sum), so without them 8 blocks would do all the work."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    K, R, S = int32(out.shape[1]), int32(out.shape[3]), int32(out.shape[4])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    RS, PQ = int32(R * S), int32(P * Q)
    CRS, L = int32(C * RS), int32(N * PQ)
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)  # [0, TILE) each
    j0, k0 = int32(cuda.blockIdx.x * TILE), int32(cuda.blockIdx.y * TILE)
    z = int32(cuda.blockIdx.z)          # [0, chunks): the chunk this block reduces
    l_begin = int32(z * chunk)          # [0, L)
    l_end = int32(l_begin + min(chunk, L - l_begin))  # (l_begin, L], no int32 overflow
    d = cuda.shared.array((TILE, TILE_PAD), float32)
    a = cuda.shared.array((TILE, TILE_PAD), float32)
    k_load = int32(k0 + ty)             # [0, K) + tail: the dy channel it loads
    j_load = int32(j0 + ty)             # [0, CRS) + tail: the tap (c, r, s) it gathers
    c = int32(j_load // RS)             # [0, C)
    r = int32((j_load - c * RS) // S)   # [0, R)
    s = int32(j_load - c * RS - r * S)  # [0, S)
    acc = float32(0.0)
    for l0 in range(l_begin, l_end, TILE):  # tile count from the chunk's length
        l = int32(l0 + tx)              # [l_begin, l_end) + tail: the pixel (n, p, q) it loads
        n = int32(l // PQ)              # [0, N)
        p = int32((l - n * PQ) // Q)    # [0, P)
        q = int32(l - n * PQ - p * Q)   # [0, Q)
        v = float32(0.0)
        if l < l_end and k_load < K:
            v = dy[n, k_load, p, q]
        d[tx, ty] = v                   # dy^T[k0+ty, l0+tx], stored as d[l, k]
        ih, iw = int32(p * stride - pad + r), int32(q * stride - pad + s)
        v = float32(0.0)
        if l < l_end and j_load < CRS and ih >= 0 and ih < H and iw >= 0 and iw < W:
            v = x[n, c, ih, iw]
        a[tx, ty] = v                   # A[l0+tx, j0+ty]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for ll in range(TILE):
            acc += d[ll, ty] * a[ll, tx]
        cuda.syncthreads()  # everyone is done reading before the next step overwrites them
    k, j = int32(k0 + ty), int32(j0 + tx)  # [0, K), [0, CRS) + tails: the dw element
    if k < K and j < CRS:
        cj = int32(j // RS)                # [0, C)
        rj = int32((j - cj * RS) // S)     # [0, R)
        out[z, k, cj, rj, j - cj * RS - rj * S] = acc


# ----------------------------------------------------------------------------------------
# CUDA kernels, version 3: register-blocked implicit GEMM, and split-K for dw
#
# v2 does one multiply-add per two shared-memory loads, so shared-memory bandwidth, not
# the FMA units, bounds it. In v3 each thread computes a TM x TN = 4 x 4 tile of outputs
# held in registers: per reduction step it loads TM values of one operand and TN of the
# other from shared memory into registers and does TM*TN = 16 multiply-adds with them
# (2 FMAs per shared load instead of 1/2). THREADS_V3 = 256 threads, seen as a 16 x 16
# grid (tx, ty) = (t % 16, t // 16), cover a BM x BN = 64 x 64 output tile; thread
# (tx, ty) owns rows tx + 16*i and columns ty + 16*jn, i, jn in [0, 4). Strided, not
# contiguous: the 16 tx of a half-warp then read 16 consecutive shared words (no bank
# conflicts) and write 16 consecutive outputs (coalesced).
#
# The reduction advances BK = 8 at a time. The two operand tiles (BK x 64 each) are 512
# floats, two loads per thread each, and about 4.2 KiB of shared memory per block. Why
# these sizes: 4 x 4 per thread is 16 accumulators + 8 operands; with the addresses,
# ptxas (CUDA 12.9, sm_90) gives the three kernels 78-80 registers and no spills, so an
# SM holds 3 blocks (768 threads, 6 warps per scheduler to hide latency), registers being
# the limit. 128 x 128 tiles with 8 x 8 per thread are faster on large GEMMs, but would
# leave VGG's late layers (14 x 14 x 512 at small batch) and the dense evaluation's
# few-pixel FC-as-conv layers with a handful of blocks for 132 SMs. BK = 8 is the smallest
# step that still gives every thread whole loads (256 threads, 512 floats per tile); the
# BK loop is not unrolled by LLVM (too big), only the TM x TN work inside it.
#
# The accumulator is cuda.local.array((TM, TN)); every loop that indexes it has a
# constant trip count, LLVM unrolls those loops, every index becomes a constant and the
# array becomes 16 registers. A variable index anywhere would put it in local memory
# (DRAM behind L1): tests/test_ptx.py asserts the PTX has no ld.local / st.local.
#
# Loads. Shared tiles are stored [reduction step][row or column]. The operand gathered
# from an image-shaped array (x for y and dw, dy for dx and dw) can be loaded with its 64
# rows along the threads (t % 64: consecutive pixels, coalesced) -- the "row-major" load.
# Weights are loaded with the 8 reduction steps along the threads (t % 8: consecutive taps
# (c, r, s) of one filter are consecutive in w) -- the "step-major" load: a warp then
# stores 8 steps x 4 columns, and rows BN_PAD = 68 floats long put those 32 words in 32
# different banks (bank = (68*step + col) % 32 = (4*step + col) % 32).

BM, BN, BK = 64, 64, 8          # block tile: rows x columns, and the reduction step
TM, TN = 4, 4                   # thread tile: rows x columns, in registers
DIM_V3 = BM // TM               # 16 threads along rows (tx); BN // TN = 16 along columns
THREADS_V3 = DIM_V3 * (BN // TN)  # 256 threads per block, a 1-D block
BN_PAD = BN + 4                 # row length of step-major tiles: conflict-free stores
ROW_STEP = THREADS_V3 // BM     # 4 reduction steps loaded per pass of a row-major load
ROW_LOADS = BK // ROW_STEP      # 2 passes fill the BK x BM tile
COL_STEP = THREADS_V3 // BK     # 32 columns loaded per pass of a step-major load
COL_LOADS = BN // COL_STEP      # 2 passes fill the BK x BN tile
assert BM == BN and DIM_V3 * TM == BM and ROW_LOADS * ROW_STEP == BK \
    and COL_LOADS * COL_STEP == BN and THREADS_V3 == 256


@cuda.jit
def conv_forward_v3(x, w, b, y, stride, pad):
    """y = A @ w^T + b, register-blocked: rows m = (n,p,q) in [0, N*P*Q), columns k in
    [0, K), reduction j = (c,r,s) in [0, C*R*S). Grid (ceil(N*P*Q/BM), ceil(K/BN)),
    block THREADS_V3 (1-D): thread t = tx + 16*ty computes the TM x TN outputs at rows
    m0 + tx + 16*i, columns k0 + ty + 16*jn (i, jn in [0, 4)).
    Shared: a[j, m] (BK x BM) gathered from x row-major (each thread keeps one pixel m for
    the whole loop), wt[j, k] (BK x BN_PAD) from w step-major.
    Registers: acc (TM x TN), ra (TM), rb (TN). Overwrites y."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    K, R, S = int32(w.shape[0]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(y.shape[2]), int32(y.shape[3])
    RS, PQ = int32(R * S), int32(P * Q)
    CRS, M = int32(C * RS), int32(N * PQ)
    t = int32(cuda.threadIdx.x)                          # [0, THREADS_V3)
    tx, ty = int32(t % DIM_V3), int32(t // DIM_V3)       # [0, 16) each
    m0, k0 = int32(cuda.blockIdx.x * BM), int32(cuda.blockIdx.y * BN)
    a = cuda.shared.array((BK, BM), float32)
    wt = cuda.shared.array((BK, BN_PAD), float32)
    acc = cuda.local.array((TM, TN), float32)
    ra = cuda.local.array(TM, float32)
    rb = cuda.local.array(TN, float32)
    for i in range(TM):
        for jn in range(TN):
            acc[i, jn] = float32(0.0)
    # Row-major load of A: this thread gathers pixel m0 + t % BM at steps t // BM + 4*u.
    mm_ld = int32(t % BM)                                # [0, BM): its row in the tile
    m_ld = int32(m0 + mm_ld)                             # [0, M) + tail
    n_ld = int32(m_ld // PQ)                             # [0, N) when m_ld < M
    p_ld = int32((m_ld - n_ld * PQ) // Q)                # [0, P)
    q_ld = int32(m_ld - n_ld * PQ - p_ld * Q)            # [0, Q)
    h_ld = int32(p_ld * stride - pad)                    # [-pad, H): top row of its window
    v_ld = int32(q_ld * stride - pad)                    # [-pad, W): left column
    js_ld = int32(t // BM)                               # [0, ROW_STEP): its first step
    # Step-major load of w^T: this thread loads tap j0 + t % BK of filters k0 + t//BK + 32*u.
    jw_ld = int32(t % BK)                                # [0, BK): its step in the tile
    kk_ld = int32(t // BK)                               # [0, COL_STEP): its first column
    for j0 in range(0, CRS, BK):        # step count from the reduction length C*R*S
        for u in range(ROW_LOADS):
            jj = int32(js_ld + ROW_STEP * u)             # [0, BK): the tile's step
            j = int32(j0 + jj)                           # [0, CRS) + tail: tap (c, r, s)
            c = int32(j // RS)                           # [0, C)
            r = int32((j - c * RS) // S)                 # [0, R)
            s = int32(j - c * RS - r * S)                # [0, S)
            ih, iw = int32(h_ld + r), int32(v_ld + s)    # [-pad, H+pad): outside is padding
            v = float32(0.0)
            if m_ld < M and j < CRS and ih >= 0 and ih < H and iw >= 0 and iw < W:
                v = x[n_ld, c, ih, iw]
            a[jj, mm_ld] = v                             # A[m0+mm_ld, j0+jj]
        j = int32(j0 + jw_ld)                            # [0, CRS) + tail: the tap of w
        c = int32(j // RS)                               # [0, C)
        r = int32((j - c * RS) // S)                     # [0, R)
        s = int32(j - c * RS - r * S)                    # [0, S)
        for u in range(COL_LOADS):
            kk = int32(kk_ld + COL_STEP * u)             # [0, BN): the tile's column
            k = int32(k0 + kk)                           # [0, K) + tail: the filter
            v = float32(0.0)
            if k < K and j < CRS:
                v = w[k, c, r, s]
            wt[jw_ld, kk] = v                            # w^T[j0+jw_ld, k0+kk]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for jj in range(BK):            # constant trip counts from here on: all unrolled
            for i in range(TM):
                ra[i] = a[jj, tx + DIM_V3 * i]
            for jn in range(TN):
                rb[jn] = wt[jj, ty + DIM_V3 * jn]
            for i in range(TM):
                for jn in range(TN):
                    acc[i, jn] += ra[i] * rb[jn]
        cuda.syncthreads()  # everyone is done reading before the next step overwrites them
    for i in range(TM):
        m = int32(m0 + tx + DIM_V3 * i)                  # [0, M) + tail: its output pixel
        if m < M:
            n = int32(m // PQ)                           # [0, N)
            p = int32((m - n * PQ) // Q)                 # [0, P)
            q = int32(m - n * PQ - p * Q)                # [0, Q)
            for jn in range(TN):
                k = int32(k0 + ty + DIM_V3 * jn)         # [0, K) + tail: its channel
                if k < K:
                    y[n, k, p, q] = acc[i, jn] + b[k]


@cuda.jit
def conv_backward_data_v3(dy, w, dx, stride, pad):
    """dx as conv_backward_data_v2's implicit GEMM, register-blocked like conv_forward_v3:
    rows m = (n,ih,iw) in [0, N*H*W), columns c in [0, C), reduction j = (k,r,s) in
    [0, K*R*S) of dY'[m, j] @ w[j, c], dY'[m, j] = dy[n, k, (ih+pad-r)/stride,
    (iw+pad-s)/stride] where that is a whole, in-range output position, else 0.
    Grid (ceil(N*H*W/BM), ceil(C/BN)), block THREADS_V3 (1-D): thread t = tx + 16*ty
    computes dx at rows m0 + tx + 16*i, channels c0 + ty + 16*jn (i, jn in [0, 4)).
    Shared: g[j, m] (BK x BM) gathered from dy row-major, wt[j, c] (BK x BN_PAD) from w
    step-major. Registers: acc (TM x TN), ra (TM), rb (TN). Overwrites dx.
    For stride > 1 most of dY' is structural zeros (3/4 at stride 2), gathered and
    multiplied like the rest, as in v2."""
    N, C, H, W = int32(dx.shape[0]), int32(dx.shape[1]), int32(dx.shape[2]), int32(dx.shape[3])
    K, R, S = int32(w.shape[0]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    RS, HW = int32(R * S), int32(H * W)
    KRS, M = int32(K * RS), int32(N * HW)
    t = int32(cuda.threadIdx.x)                          # [0, THREADS_V3)
    tx, ty = int32(t % DIM_V3), int32(t // DIM_V3)       # [0, 16) each
    m0, c0 = int32(cuda.blockIdx.x * BM), int32(cuda.blockIdx.y * BN)
    g = cuda.shared.array((BK, BM), float32)
    wt = cuda.shared.array((BK, BN_PAD), float32)
    acc = cuda.local.array((TM, TN), float32)
    ra = cuda.local.array(TM, float32)
    rb = cuda.local.array(TN, float32)
    for i in range(TM):
        for jn in range(TN):
            acc[i, jn] = float32(0.0)
    # Row-major load of dY': this thread gathers for pixel m0 + t % BM at steps t//BM + 4*u.
    mm_ld = int32(t % BM)                                # [0, BM): its row in the tile
    m_ld = int32(m0 + mm_ld)                             # [0, M) + tail
    n_ld = int32(m_ld // HW)                             # [0, N) when m_ld < M
    ih_ld = int32((m_ld - n_ld * HW) // W)               # [0, H)
    iw_ld = int32(m_ld - n_ld * HW - ih_ld * W)          # [0, W)
    js_ld = int32(t // BM)                               # [0, ROW_STEP): its first step
    # Step-major load of w: this thread loads tap j0 + t % BK of channels c0 + t//BK + 32*u.
    jw_ld = int32(t % BK)                                # [0, BK): its step in the tile
    cc_ld = int32(t // BK)                               # [0, COL_STEP): its first column
    for j0 in range(0, KRS, BK):        # step count from the reduction length K*R*S
        for u in range(ROW_LOADS):
            jj = int32(js_ld + ROW_STEP * u)             # [0, BK): the tile's step
            j = int32(j0 + jj)                           # [0, KRS) + tail: (k, r, s)
            k = int32(j // RS)                           # [0, K)
            r = int32((j - k * RS) // S)                 # [0, R)
            s = int32(j - k * RS - r * S)                # [0, S)
            ph = int32(ih_ld + pad - r)                  # p*stride, if tap r of row p read ih
            qw = int32(iw_ld + pad - s)                  # q*stride, likewise for columns
            v = float32(0.0)
            if (m_ld < M and j < KRS and ph >= 0 and qw >= 0 and ph % stride == 0
                    and qw % stride == 0 and ph // stride < P and qw // stride < Q):
                v = dy[n_ld, k, ph // stride, qw // stride]
            g[jj, mm_ld] = v                             # dY'[m0+mm_ld, j0+jj]
        j = int32(j0 + jw_ld)                            # [0, KRS) + tail: the tap of w
        k = int32(j // RS)                               # [0, K)
        r = int32((j - k * RS) // S)                     # [0, R)
        s = int32(j - k * RS - r * S)                    # [0, S)
        for u in range(COL_LOADS):
            cc = int32(cc_ld + COL_STEP * u)             # [0, BN): the tile's column
            c = int32(c0 + cc)                           # [0, C) + tail: the channel
            v = float32(0.0)
            if c < C and j < KRS:
                v = w[k, c, r, s]
            wt[jw_ld, cc] = v                            # w[j0+jw_ld, c0+cc]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for jj in range(BK):            # constant trip counts from here on: all unrolled
            for i in range(TM):
                ra[i] = g[jj, tx + DIM_V3 * i]
            for jn in range(TN):
                rb[jn] = wt[jj, ty + DIM_V3 * jn]
            for i in range(TM):
                for jn in range(TN):
                    acc[i, jn] += ra[i] * rb[jn]
        cuda.syncthreads()  # everyone is done reading before the next step overwrites them
    for i in range(TM):
        m = int32(m0 + tx + DIM_V3 * i)                  # [0, M) + tail: its input pixel
        if m < M:
            n = int32(m // HW)                           # [0, N)
            ih = int32((m - n * HW) // W)                # [0, H)
            iw = int32(m - n * HW - ih * W)              # [0, W)
            for jn in range(TN):
                c = int32(c0 + ty + DIM_V3 * jn)         # [0, C) + tail: its channel
                if c < C:
                    dx[n, c, ih, iw] = acc[i, jn]


@cuda.jit
def conv_backward_weight_v3(x, dy, out, stride, pad, chunk):
    """dw = dy^T @ A, register-blocked and split-K: rows k in [0, K), columns j = (c,r,s)
    in [0, C*R*S), reduction l = (n,p,q) in [0, N*P*Q) cut into chunks of `chunk` (a
    multiple of BK). Grid (ceil(C*R*S/BN), ceil(K/BM), ceil(N*P*Q/chunk)), block
    THREADS_V3 (1-D): block z reduces l in [z*chunk, (z+1)*chunk) for its 64 x 64 tile,
    thread t = tx + 16*ty the 4 x 4 elements dw[k0 + ty + 16*kn, j0 + tx + 16*i]
    (i, kn in [0, 4); tx runs along dw's contiguous axis j, so stores coalesce).
    Shared: d[l, k] from dy and a[l, j] gathered from x, both BK x BN_PAD, both loaded
    step-major (8 consecutive pixels l per column: the contiguous axis of dy, and of x at
    stride 1). Registers: acc (TM x TN), ra (TM), rb (TN), and the (c, r, s) of the
    COL_LOADS columns the thread gathers (ci, ri, si).
    Overwrites out[z] (K, C, R, S), as conv_backward_weight_v2 does: dw itself, seen as
    (1, K, C, R, S), when there is one chunk, else the partial sums of chunk z."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    K, R, S = int32(out.shape[1]), int32(out.shape[3]), int32(out.shape[4])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    RS, PQ = int32(R * S), int32(P * Q)
    CRS, L = int32(C * RS), int32(N * PQ)
    t = int32(cuda.threadIdx.x)                          # [0, THREADS_V3)
    tx, ty = int32(t % DIM_V3), int32(t // DIM_V3)       # [0, 16) each
    j0, k0 = int32(cuda.blockIdx.x * BN), int32(cuda.blockIdx.y * BM)
    z = int32(cuda.blockIdx.z)                           # [0, chunks): its chunk
    l_begin = int32(z * chunk)                           # [0, L)
    l_end = int32(l_begin + min(chunk, L - l_begin))     # (l_begin, L], no int32 overflow
    d = cuda.shared.array((BK, BN_PAD), float32)
    a = cuda.shared.array((BK, BN_PAD), float32)
    acc = cuda.local.array((TM, TN), float32)
    ra = cuda.local.array(TM, float32)
    rb = cuda.local.array(TN, float32)
    ci = cuda.local.array(COL_LOADS, int32)
    ri = cuda.local.array(COL_LOADS, int32)
    si = cuda.local.array(COL_LOADS, int32)
    for i in range(TM):
        for kn in range(TN):
            acc[i, kn] = float32(0.0)
    # Step-major loads: this thread loads pixel l0 + t % BK for columns t//BK + 32*u of
    # both tiles; its taps (c, r, s) are fixed for the whole loop, decomposed once here.
    ll_ld = int32(t % BK)                                # [0, BK): its step in the tile
    col_ld = int32(t // BK)                              # [0, COL_STEP): its first column
    for u in range(COL_LOADS):
        j = int32(j0 + col_ld + COL_STEP * u)            # [0, CRS) + tail: its tap
        ci[u] = int32(j // RS)                           # [0, C)
        ri[u] = int32((j - ci[u] * RS) // S)             # [0, R)
        si[u] = int32(j - ci[u] * RS - ri[u] * S)        # [0, S)
    for l0 in range(l_begin, l_end, BK):  # step count from the chunk's length
        l = int32(l0 + ll_ld)                            # [l_begin, l_end) + tail: (n,p,q)
        n = int32(l // PQ)                               # [0, N)
        p = int32((l - n * PQ) // Q)                     # [0, P)
        q = int32(l - n * PQ - p * Q)                    # [0, Q)
        h, v = int32(p * stride - pad), int32(q * stride - pad)  # [-pad, H), [-pad, W)
        for u in range(COL_LOADS):
            col = int32(col_ld + COL_STEP * u)           # [0, BN): the tile's column
            k = int32(k0 + col)                          # [0, K) + tail: dy's channel
            val = float32(0.0)
            if l < l_end and k < K:
                val = dy[n, k, p, q]
            d[ll_ld, col] = val                          # dy^T[k0+col, l0+ll_ld]
            j = int32(j0 + col)                          # [0, CRS) + tail: the tap
            ih, iw = int32(h + ri[u]), int32(v + si[u])  # [-pad, H+pad): outside is padding
            val = float32(0.0)
            if l < l_end and j < CRS and ih >= 0 and ih < H and iw >= 0 and iw < W:
                val = x[n, ci[u], ih, iw]
            a[ll_ld, col] = val                          # A[l0+ll_ld, j0+col]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for ll in range(BK):            # constant trip counts from here on: all unrolled
            for i in range(TM):
                ra[i] = a[ll, tx + DIM_V3 * i]
            for kn in range(TN):
                rb[kn] = d[ll, ty + DIM_V3 * kn]
            for i in range(TM):
                for kn in range(TN):
                    acc[i, kn] += ra[i] * rb[kn]
        cuda.syncthreads()  # everyone is done reading before the next step overwrites them
    for i in range(TM):
        j = int32(j0 + tx + DIM_V3 * i)                  # [0, CRS) + tail: its tap
        if j < CRS:
            c = int32(j // RS)                           # [0, C)
            r = int32((j - c * RS) // S)                 # [0, R)
            s = int32(j - c * RS - r * S)                # [0, S)
            for kn in range(TN):
                k = int32(k0 + ty + DIM_V3 * kn)         # [0, K) + tail: its filter
                if k < K:
                    out[z, k, c, r, s] = acc[i, kn]


F5 = float32[:, :, :, :, ::1]  # the weight gradient's per-chunk view (chunks, K, C, R, S)

PTX_SIGNATURES = [
    (conv_forward_v1, (F4, F4, F1, F4, int32, int32)),
    (conv_backward_data_v1, (F4, F4, F4, int32, int32)),
    (conv_backward_weight_v1, (F4, F4, F4, int32, int32)),
    (conv_backward_bias_v1, (F3, F2, int32)),
    (conv_sum_partials_v1, (F2, F1)),
    (conv_forward_v2, (F4, F4, F1, F4, int32, int32)),
    (conv_backward_data_v2, (F4, F4, F4, int32, int32)),
    (conv_backward_weight_v2, (F4, F4, F5, int32, int32, int32)),
    (conv_forward_v3, (F4, F4, F1, F4, int32, int32)),
    (conv_backward_data_v3, (F4, F4, F4, int32, int32)),
    (conv_backward_weight_v3, (F4, F4, F5, int32, int32, int32)),
]


# ----------------------------------------------------------------------------------------
# Launchers: check, size the grid from the shapes, launch on the array's stream. They
# never allocate or synchronise, and they overwrite their outputs. The split gradients
# (backward_weight, backward_bias) need a workspace for their partial sums: its shape
# comes from *_workspace(), the caller allocates it (minivgg/ops.py does).

THREADS = 128  # v1 block size
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z (x allows 2^31 - 1)


def _sizes(x_name, x_shape, w_name, w, stride, pad):
    """(N, C, H, W, K, R, S, P, Q) after checking w against the (N, C, H, W) shape."""
    check(w_name, w, ndim=4)
    N, C, H, W = x_shape
    K, Cw, R, S = w.shape
    if Cw != C:
        raise ValueError(f"{w_name} has shape {tuple(w.shape)}: {Cw} input channels, but "
                         f"{x_name} has shape {tuple(x_shape)}: {C}")
    P, Q = output_size(H, W, R, S, stride, pad)
    return N, C, H, W, K, R, S, P, Q


def _check_int32(*arrays):
    for a in arrays:
        check_size("conv array", a)


def _pick(kernels, version):
    if version not in kernels:
        raise ValueError(f"conv has versions {sorted(kernels)} for this pass, not {version!r}")
    return kernels[version]


def _grid_block(name, version, v1_size, rows, cols, threads):
    """(grid, block) of a forward or backward-data launch: v1 one thread per output of
    v1_size; v2 TILE x TILE and v3 BM x BN output tiles over the rows x cols GEMM."""
    if version == 1:
        return blocks_1d(name, v1_size, threads), threads
    tile = TILE if version == 2 else BM
    if ceil_div(cols, tile) > MAX_GRID_YZ:
        raise ValueError(f"{name}: {cols} GEMM columns need more than {MAX_GRID_YZ} "
                         f"blocks along the grid's y axis")
    if version == 2:
        return (ceil_div(rows, TILE), ceil_div(cols, TILE)), (TILE, TILE)
    return (ceil_div(rows, BM), ceil_div(cols, BN)), THREADS_V3


def forward(x, w, b, y, stride=1, pad=0, version=2, threads=THREADS):
    """y = conv(x, w) + b: x (N,C,H,W), w (K,C,R,S), b (K,), y (N,K,P,Q), all float32.
    `threads`: v1's block size (a test launches small blocks)."""
    check("conv x", x, ndim=4)
    N, C, H, W, K, R, S, P, Q = _sizes("conv x", x.shape, "conv w", w, stride, pad)
    check("conv b", b, shape=(K,))
    check("conv y", y, shape=(N, K, P, Q))
    _check_int32(x, w, y)
    kernel = _pick({1: conv_forward_v1, 2: conv_forward_v2, 3: conv_forward_v3}, version)
    if y.size == 0:
        return
    grid, block = _grid_block("conv forward", version, y.size, N * P * Q, K, threads)
    launch(kernel, grid, block, x, w, b, y, np.int32(stride), np.int32(pad))


def backward_data(dy, w, dx, stride=1, pad=0, version=2, threads=THREADS):
    """dx = dL/dx from dy (N,K,P,Q) and w (K,C,R,S) into dx (N,C,H,W)."""
    check("conv dx", dx, ndim=4)
    N, C, H, W, K, R, S, P, Q = _sizes("conv dx", dx.shape, "conv w", w, stride, pad)
    check("conv dy", dy, shape=(N, K, P, Q))
    _check_int32(dx, w, dy)
    kernel = _pick({1: conv_backward_data_v1, 2: conv_backward_data_v2,
                    3: conv_backward_data_v3}, version)
    if dx.size == 0:
        return
    grid, block = _grid_block("conv backward_data", version, dx.size, N * H * W, C, threads)
    launch(kernel, grid, block, dy, w, dx, np.int32(stride), np.int32(pad))


# Split-K for the weight gradient (v2 and v3). The early VGG layers have a tiny dw (64 x 27
# for conv1_1) and a huge reduction (N*224*224 pixels), so without a split a handful of
# blocks would do all the work (8 for v2, 1 for v3). The launcher cuts the reduction into
# chunks, one per grid z, aiming at SPLITK_BLOCKS[version] blocks in all -- two waves of
# the blocks an H200/H100 SM holds at once (132 SMs; 5 of v2's 44-48-register 256-thread
# blocks, 3 of v3's 80-register ones: `python -m minivgg.bench static`), the second wave
# evening out blocks that finish late -- without going over it (a dw of more tiles than
# that is not split), and never chunks shorter than SPLITK_MIN_CHUNK pixels, so each
# block's loop is long enough to pay for its start-up and its partial tile. Late layers
# already fill the GPU and get one chunk. Each chunk writes its partial tile to a
# workspace (chunks, K, C, R, S) and conv_sum_partials_v1 adds the chunks in a fixed
# order: the result is the same bit for bit on every run (atomic adds into dw would not
# be: their order, and so their rounding, changes from run to run). The workspace is at
# most SPLITK_BLOCKS[v] tiles: 1320 x 16 x 16 (v2) or 792 x 64 x 64 (v3) floats, 1.4
# or 13 MB. A launcher does not ask the GPU its SM count (that would tie the split, hence
# the rounding of dw, to the device).
SPLITK_BLOCKS = {2: 2 * 5 * 132, 3: 2 * 3 * 132}
SPLITK_STEP = {2: TILE, 3: BK}  # a chunk is whole reduction steps of the kernel
SPLITK_MIN_CHUNK = 256


def split_k(L, tiles, splits=None, version=3):
    """(splits, chunk): how many chunks of the length-L reduction the version-2 or -3
    weight-gradient kernel runs for a dw of `tiles` output tiles, and their length (a
    multiple of the kernel's reduction step; the last chunk may be shorter). `splits`
    asks for a number of chunks (what we get can be less, since chunks are whole steps);
    None picks it as explained above."""
    step = SPLITK_STEP[version]
    if splits is None:
        splits = max(1, min(ceil_div(L, SPLITK_MIN_CHUNK), SPLITK_BLOCKS[version] // tiles))
    if splits < 1:
        raise ValueError(f"conv split_k must be >= 1, got {splits}")
    chunk = max(step, ceil_div(ceil_div(L, min(splits, MAX_GRID_YZ)), step) * step)
    return max(1, ceil_div(L, chunk)), chunk


def _weight_grid(N, C, K, R, S, P, Q, version, split_k_chunks):
    """(grid, block, chunk) of a v2/v3 weight-gradient launch; grid z = the chunks."""
    tile = TILE if version == 2 else BM
    cols, rows = ceil_div(C * R * S, tile), ceil_div(K, tile)
    if rows > MAX_GRID_YZ:
        raise ValueError(f"conv backward_weight: {K} filters need more than {MAX_GRID_YZ} "
                         f"blocks along the grid's y axis")
    chunks, chunk = split_k(N * P * Q, cols * rows, split_k_chunks, version)
    block = (TILE, TILE) if version == 2 else THREADS_V3
    return (cols, rows, chunks), block, chunk


def backward_weight_workspace(x_shape, w_shape, stride=1, pad=0, version=2,
                              split_k_chunks=None):
    """The shape (chunks, K, C, R, S) of the partial sums backward_weight needs for these
    shapes, or None when it runs in one chunk (v1 never splits)."""
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    if version == 1:
        return None
    P, Q = output_size(H, W, R, S, stride, pad)
    (_, _, chunks), _, _ = _weight_grid(N, C, K, R, S, P, Q, version, split_k_chunks)
    return (chunks, K, C, R, S) if chunks > 1 else None


def backward_weight(x, dy, dw, stride=1, pad=0, version=2, split_k_chunks=None,
                    workspace=None, threads=THREADS):
    """dw = dL/dw from x (N,C,H,W) and dy (N,K,P,Q) into dw (K,C,R,S).

    split_k_chunks (versions 2 and 3): the number of reduction chunks, None = automatic
    (see split_k). With more than one, `workspace` must be a float32 array of the shape
    backward_weight_workspace() gives. `threads`: v1's block size."""
    check("conv x", x, ndim=4)
    N, C, H, W, K, R, S, P, Q = _sizes("conv x", x.shape, "conv dw", dw, stride, pad)
    check("conv dy", dy, shape=(N, K, P, Q))
    _check_int32(x, dw, dy)
    if version not in (1, 2, 3):
        raise ValueError(f"conv has versions [1, 2, 3] for this pass, not {version!r}")
    if dw.size == 0:
        return
    if version == 1:
        launch(conv_backward_weight_v1, blocks_1d("conv backward_weight", dw.size, threads),
               threads, x, dy, dw, np.int32(stride), np.int32(pad))
        return
    grid, block, chunk = _weight_grid(N, C, K, R, S, P, Q, version, split_k_chunks)
    kernel = conv_backward_weight_v2 if version == 2 else conv_backward_weight_v3
    args = (np.int32(stride), np.int32(pad), np.int32(chunk))
    if grid[2] == 1:  # one chunk: a 2-D grid writing dw itself
        launch(kernel, grid[:2], block, x, dy, dw.reshape((1,) + dw.shape), *args)
        return
    check("conv workspace", _required(workspace, "backward_weight"),
          shape=(grid[2],) + dw.shape)
    _check_int32(workspace)
    launch(kernel, grid, block, x, dy, workspace, *args)
    _sum_partials(workspace.reshape(grid[2], dw.size), dw.reshape(dw.size), threads)


def _required(workspace, name):
    if workspace is None:
        raise ValueError(f"conv {name} runs in several chunks here and needs a workspace "
                         f"(see {name}_workspace)")
    return workspace


def _sum_partials(partial, out, threads):
    launch(conv_sum_partials_v1, blocks_1d("conv sum_partials", out.size, threads), threads,
           partial, out)


# The bias gradient splits the batch into chunks of images, one per grid y, aiming at
# BIAS_BLOCKS blocks in all (two waves of the 10 resident 128-thread blocks an SM holds,
# on 132 SMs), and adds the chunks' partial sums in order as backward_weight does.
BIAS_BLOCKS = 2 * 10 * 132


def bias_chunks(N, K):
    """(chunks, images per chunk) of the bias gradient for a batch of N, K channels."""
    chunks = max(1, min(N, BIAS_BLOCKS // max(K, 1), MAX_GRID_YZ))
    images = max(1, ceil_div(N, chunks))
    return max(1, ceil_div(N, images)), images


def backward_bias_workspace(dy_shape):
    """The shape (chunks, K) of the partial sums backward_bias needs, or None."""
    N, K = dy_shape[:2]
    chunks, _ = bias_chunks(N, K)
    return (chunks, K) if chunks > 1 else None


def backward_bias(dy, db, workspace=None, threads=THREADS):
    """db[k] = sum of dy[:, k] over batch and pixels: dy (N,K,P,Q), db (K,). With several
    chunks of images, `workspace` is a float32 array of backward_bias_workspace()'s shape.
    `threads`: the block size of the second pass that adds the chunks."""
    check("conv dy", dy, ndim=4)
    N, K, P, Q = dy.shape
    check("conv db", db, shape=(K,))
    _check_int32(dy)
    if K == 0:
        return
    chunks, images = bias_chunks(N, K)
    out = db.reshape(1, K)
    if chunks > 1:
        out = _required(workspace, "backward_bias")
        check("conv bias workspace", out, shape=(chunks, K))
    grid = (K, chunks) if chunks > 1 else K
    launch(conv_backward_bias_v1, grid, BIAS_THREADS, dy.reshape(N, K, P * Q), out,
           np.int32(images))
    if chunks > 1:
        _sum_partials(out, db, threads)
