"""Conv kernels, version 2: tiled implicit GEMM through shared memory."""
from numba import cuda, float32, int32

from kernels.common import F1, F4

# Each block computes a TILE x TILE tile of the GEMM's output, one element per thread,
# block (TILE, TILE). It walks the reduction TILE at a time: the block's threads gather a
# TILE x TILE piece of each operand into shared memory (one element each; zero outside
# the matrix or in the padding), sync, and every thread does TILE multiply-adds from
# shared memory. Each global element loaded is so reused TILE times. No im2col buffer.
# With groups, each group's GEMM is tiled on its own (a tile never straddles two groups:
# its operands come from different channels): the group is the grid's z axis (forward,
# backward-data), or is folded into y (backward-weight, whose z is the chunks). The
# kernels take kg, the filters per group, as an argument although the shapes imply it
# (K * Cg / C): a value the kernel divides out of its arguments stays in a register
# through the reduction loop, where one it is given can be re-read when needed. With the
# division, ptxas (CUDA 12, sm_90) gave v3's backward-data 88 to 96 registers instead of
# 80 (2 blocks per SM instead of 3) and v2's 52 to 60 instead of 48 (4 instead of 5).

TILE = 16
TILE_PAD = TILE + 1  # row length of tiles stored transposed: a column walk hits 17 banks


@cuda.jit
def conv_forward_v2(x, w, b, y, stride, pad, kg):
    """y = A @ w^T + b as a tiled GEMM per group: rows m = (n,p,q) in [0, N*P*Q), columns
    k in group g's [g*kg, g*kg + kg), reduction j = (c,r,s) in [0, Cg*R*S) over the group's
    channels. Grid (ceil(N*P*Q/TILE), ceil(kg/TILE), G), block (TILE, TILE): block z is
    the group; thread (tx, ty) computes y at row m0+tx, column k0+ty.
    Shared: a[j, m] (TILE x TILE) gathered from x, wt[j, k] (TILE x TILE) from w.
    Overwrites y."""
    N, H, W = int32(x.shape[0]), int32(x.shape[2]), int32(x.shape[3])
    Cg, R, S = int32(w.shape[1]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(y.shape[2]), int32(y.shape[3])
    RS, PQ = int32(R * S), int32(P * Q)
    CRS, M = int32(Cg * RS), int32(N * PQ)
    g = int32(cuda.blockIdx.z)                       # [0, G): the block's group
    k_end = int32(g * kg + kg)                       # (0, K]: one past its last filter
    c0 = int32(g * Cg)                               # [0, C): its first input channel
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)  # [0, TILE) each
    m0 = int32(cuda.blockIdx.x * TILE)
    k0 = int32(g * kg + cuda.blockIdx.y * TILE)      # [0, K): first column
    a = cuda.shared.array((TILE, TILE), float32)
    wt = cuda.shared.array((TILE, TILE), float32)
    # The output pixel this thread gathers A for (and computes): row m = m0 + tx.
    m = int32(m0 + tx)                  # [0, M) + tail
    n = int32(m // PQ)                  # [0, N) when m < M
    p = int32((m - n * PQ) // Q)        # [0, P)
    q = int32(m - n * PQ - p * Q)       # [0, Q)
    k_load = int32(k0 + tx)             # [0, K) + tail: the filter whose tap it loads
    acc = float32(0.0)
    for j0 in range(0, CRS, TILE):      # tile count from the reduction length Cg*R*S
        j = int32(j0 + ty)              # [0, CRS) + tail: the tap (c, r, s) this thread loads
        c = int32(j // RS)              # [0, Cg)
        r = int32((j - c * RS) // S)    # [0, R)
        s = int32(j - c * RS - r * S)   # [0, S)
        ih, iw = int32(p * stride - pad + r), int32(q * stride - pad + s)
        v = float32(0.0)
        if m < M and j < CRS and ih >= 0 and ih < H and iw >= 0 and iw < W:
            v = x[n, c0 + c, ih, iw]
        a[ty, tx] = v                   # A[m0+tx, j0+ty]; tx is contiguous: no conflicts
        v = float32(0.0)
        if k_load < k_end and j < CRS:
            v = w[k_load, c, r, s]
        wt[ty, tx] = v                  # w^T[j0+ty, k0+tx]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for jj in range(TILE):
            acc += a[jj, tx] * wt[jj, ty]
        cuda.syncthreads()  # everyone is done reading before the next step overwrites them
    k = int32(k0 + ty)                  # [0, K) + tail: the output channel it computes
    if m < M and k < k_end:
        y[n, k, p, q] = acc + b[k]


@cuda.jit
def conv_backward_data_v2(dy, w, dx, stride, pad, kg):
    """dx as a tiled implicit GEMM per group: rows m = (n,ih,iw) in [0, N*H*W), columns c
    in group g's [g*Cg, g*Cg + Cg), reduction j = (k,r,s) over the group's kg filters,
    [0, kg*R*S), of dY'[m, j] @ w[j, c], where dY'[m, j] is dy[n, g*kg + k,
    (ih+pad-r)/stride, (iw+pad-s)/stride] when that is a whole, in-range output position
    and 0 otherwise (for stride 1: dy zero-padded, convolved with the flipped filter).
    Grid (ceil(N*H*W/TILE), ceil(Cg/TILE), G), block (TILE, TILE): block z is the group;
    thread (tx, ty) computes dx at row m0+tx, column c0+ty.
    Shared: gt[j, m] (TILE x TILE) gathered from dy, wt[j, c] (TILE x TILE) from w.
    Overwrites dx."""
    N, H, W = int32(dx.shape[0]), int32(dx.shape[2]), int32(dx.shape[3])
    Cg, R, S = int32(w.shape[1]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    RS, HW = int32(R * S), int32(H * W)
    KRS, M = int32(kg * RS), int32(N * HW)
    g = int32(cuda.blockIdx.z)                       # [0, G): the block's group
    k_first = int32(g * kg)                          # [0, K): its first filter
    cg0 = int32(cuda.blockIdx.y * TILE)              # [0, Cg): first column, in the group
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)  # [0, TILE) each
    m0 = int32(cuda.blockIdx.x * TILE)
    c0 = int32(g * Cg + cg0)                         # [0, C): first column
    gt = cuda.shared.array((TILE, TILE), float32)
    wt = cuda.shared.array((TILE, TILE), float32)
    m = int32(m0 + tx)                  # [0, M) + tail: the input pixel (n, ih, iw)
    n = int32(m // HW)                  # [0, N) when m < M
    ih = int32((m - n * HW) // W)       # [0, H)
    iw = int32(m - n * HW - ih * W)     # [0, W)
    cw_load = int32(cg0 + tx)           # [0, Cg) + tail: w's channel (in the group) it loads
    acc = float32(0.0)
    j_begin = int32(k_first * RS)       # [0, K*R*S): the group's first (k, r, s)
    j_end = int32(j_begin + KRS)        # (0, K*R*S]: one past its last
    for j0 in range(j_begin, j_end, TILE):  # tile count from the reduction length kg*R*S
        j = int32(j0 + ty)              # [j_begin, j_end) + tail: the (k, r, s) it loads
        k = int32(j // RS)              # [0, K): one of the group's filters
        r = int32((j - k * RS) // S)    # [0, R)
        s = int32(j - k * RS - r * S)   # [0, S)
        ph, qw = int32(ih + pad - r), int32(iw + pad - s)  # p*stride, q*stride if they exist
        v = float32(0.0)
        if (m < M and j < j_end and ph >= 0 and qw >= 0 and ph % stride == 0
                and qw % stride == 0 and ph // stride < P and qw // stride < Q):
            v = dy[n, k, ph // stride, qw // stride]
        gt[ty, tx] = v                  # dY'[m0+tx, j0-j_begin+ty]
        v = float32(0.0)
        if cw_load < Cg and j < j_end:
            v = w[k, cw_load, r, s]
        wt[ty, tx] = v                  # w[j0-j_begin+ty, c0+tx]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for jj in range(TILE):
            acc += gt[jj, tx] * wt[jj, ty]
        cuda.syncthreads()  # everyone is done reading before the next step overwrites them
    if m < M and cg0 + ty < Cg:         # column cg0 + ty of the group: channel c0 + ty
        dx[n, c0 + ty, ih, iw] = acc


@cuda.jit
def conv_backward_weight_v2(x, dy, out, stride, pad, chunk, kg):
    """dw = dy^T @ A as a tiled GEMM per group, split-K: rows k in group g's
    [g*kg, g*kg + kg), columns j = (c,r,s) in [0, Cg*R*S) (dw is (K, C/G, R, S); column
    c pairs with x's channel g*Cg + c), reduction l = (n,p,q) in [0, N*P*Q) cut into
    chunks of `chunk` pixels (a multiple of TILE). Grid (ceil(Cg*R*S/TILE),
    G*ceil(kg/TILE), chunks), block (TILE, TILE): block y is row tile y % ceil(kg/TILE) of
    group y // ceil(kg/TILE), block z reduces l in [z*chunk, (z+1)*chunk) for its tile;
    thread (tx, ty) computes the tile's element at row k0+ty, column j0+tx (tx contiguous
    in dw).
    Shared: d[l, k] from dy and a[l, j] gathered from x, both TILE x TILE_PAD, stored
    transposed (l runs along tx for coalesced loads).
    Overwrites out[z] (K, Cg, R, S): out is dw seen as (1, K, Cg, R, S) when there is one
    chunk, else the (chunks, K, Cg, R, S) partial sums that conv_sum_partials_v1 adds up.
    Why chunks: dw is small and its reduction long (conv1_1 at N=32, 224x224: a 64 x 27 dw
    is 8 tiles, each a 1.6M-long sum), so without them 8 blocks would do all the work."""
    N, H, W = int32(x.shape[0]), int32(x.shape[2]), int32(x.shape[3])
    Cg = int32(out.shape[2])
    R, S = int32(out.shape[3]), int32(out.shape[4])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    RS, PQ = int32(R * S), int32(P * Q)
    CRS, L = int32(Cg * RS), int32(N * PQ)
    tiles = int32((kg + TILE - 1) // TILE)           # row tiles per group
    g = int32(cuda.blockIdx.y // tiles)              # [0, G): the block's group
    k_end = int32(g * kg + kg)                       # (0, K]: one past its last filter
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)  # [0, TILE) each
    j0 = int32(cuda.blockIdx.x * TILE)
    k0 = int32(g * kg + (cuda.blockIdx.y - g * tiles) * TILE)  # [0, K): first row
    z = int32(cuda.blockIdx.z)          # [0, chunks): the chunk this block reduces
    l_begin = int32(z * chunk)          # [0, L)
    l_end = int32(l_begin + min(chunk, L - l_begin))  # (l_begin, L], no int32 overflow
    d = cuda.shared.array((TILE, TILE_PAD), float32)
    a = cuda.shared.array((TILE, TILE_PAD), float32)
    k_load = int32(k0 + ty)             # [0, K) + tail: the dy channel it loads
    j_load = int32(j0 + ty)             # [0, CRS) + tail: the tap (c, r, s) it gathers
    c = int32(j_load // RS)             # [0, Cg)
    r = int32((j_load - c * RS) // S)   # [0, R)
    s = int32(j_load - c * RS - r * S)  # [0, S)
    xc = int32(g * Cg + c)              # [0, C): the channel of x it gathers from
    acc = float32(0.0)
    for l0 in range(l_begin, l_end, TILE):  # tile count from the chunk's length
        l = int32(l0 + tx)              # [l_begin, l_end) + tail: the pixel (n, p, q) it loads
        n = int32(l // PQ)              # [0, N)
        p = int32((l - n * PQ) // Q)    # [0, P)
        q = int32(l - n * PQ - p * Q)   # [0, Q)
        v = float32(0.0)
        if l < l_end and k_load < k_end:
            v = dy[n, k_load, p, q]
        d[tx, ty] = v                   # dy^T[k0+ty, l0+tx], stored as d[l, k]
        ih, iw = int32(p * stride - pad + r), int32(q * stride - pad + s)
        v = float32(0.0)
        if l < l_end and j_load < CRS and ih >= 0 and ih < H and iw >= 0 and iw < W:
            v = x[n, xc, ih, iw]
        a[tx, ty] = v                   # A[l0+tx, j0+ty]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for ll in range(TILE):
            acc += d[ll, ty] * a[ll, tx]
        cuda.syncthreads()  # everyone is done reading before the next step overwrites them
    k, j = int32(k0 + ty), int32(j0 + tx)  # [0, K), [0, CRS) + tails: the dw element
    if k < k_end and j < CRS:
        cj = int32(j // RS)                # [0, Cg)
        rj = int32((j - cj * RS) // S)     # [0, R)
        out[z, k, cj, rj, j - cj * RS - rj * S] = acc


F5 = float32[:, :, :, :, ::1]  # the weight gradient's per-chunk view (chunks, K, Cg, R, S)

PTX_SIGNATURES = [
    (conv_forward_v2, (F4, F4, F1, F4, int32, int32, int32)),
    (conv_backward_data_v2, (F4, F4, F4, int32, int32, int32)),
    (conv_backward_weight_v2, (F4, F4, F5, int32, int32, int32, int32)),
]
