"""Conv kernels, version 3: register-blocked implicit GEMM, and split-K for dw."""
from numba import cuda, float32, int32

from kernels.common import F1, F4

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
# ptxas (CUDA 12.9, sm_90) gives the three kernels 80 registers and no spills, so an
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
#
# Groups as in v2: each group's GEMM is tiled on its own, the group on the grid's z axis
# (forward, backward-data) or folded into y (backward-weight, whose z is the chunks), and
# kg, the filters per group, an argument (see v2.py: a division in the kernel costs up to
# 8 registers through the loop, and v3 a block per SM).

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
def conv_forward_v3(x, w, b, y, stride, pad, kg):
    """y = A @ w^T + b, register-blocked, per group: rows m = (n,p,q) in [0, N*P*Q),
    columns k in group g's [g*kg, g*kg + kg), reduction j = (c,r,s) in [0, Cg*R*S) over
    the group's channels. Grid (ceil(N*P*Q/BM), ceil(kg/BN), G): block z is the group.
    Block THREADS_V3 (1-D): thread t = tx + 16*ty computes the TM x TN outputs at rows
    m0 + tx + 16*i, columns k0 + ty + 16*jn (i, jn in [0, 4)).
    Shared: a[j, m] (BK x BM) gathered from x row-major (each thread keeps one pixel m for
    the whole loop), wt[j, k] (BK x BN_PAD) from w step-major.
    Registers: acc (TM x TN), ra (TM), rb (TN). Overwrites y."""
    N, H, W = int32(x.shape[0]), int32(x.shape[2]), int32(x.shape[3])
    Cg, R, S = int32(w.shape[1]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(y.shape[2]), int32(y.shape[3])
    RS, PQ = int32(R * S), int32(P * Q)
    CRS, M = int32(Cg * RS), int32(N * PQ)
    g = int32(cuda.blockIdx.z)                           # [0, G): the block's group
    k_end = int32(g * kg + kg)                           # (0, K]: past its last filter
    c0 = int32(g * Cg)                                   # [0, C): its first channel
    t = int32(cuda.threadIdx.x)                          # [0, THREADS_V3)
    tx, ty = int32(t % DIM_V3), int32(t // DIM_V3)       # [0, 16) each
    m0 = int32(cuda.blockIdx.x * BM)
    k0 = int32(g * kg + cuda.blockIdx.y * BN)            # [0, K): first column
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
    for j0 in range(0, CRS, BK):        # step count from the reduction length Cg*R*S
        for u in range(ROW_LOADS):
            jj = int32(js_ld + ROW_STEP * u)             # [0, BK): the tile's step
            j = int32(j0 + jj)                           # [0, CRS) + tail: tap (c, r, s)
            c = int32(j // RS)                           # [0, Cg)
            r = int32((j - c * RS) // S)                 # [0, R)
            s = int32(j - c * RS - r * S)                # [0, S)
            ih, iw = int32(h_ld + r), int32(v_ld + s)    # [-pad, H+pad): outside is padding
            v = float32(0.0)
            if m_ld < M and j < CRS and ih >= 0 and ih < H and iw >= 0 and iw < W:
                v = x[n_ld, c0 + c, ih, iw]
            a[jj, mm_ld] = v                             # A[m0+mm_ld, j0+jj]
        j = int32(j0 + jw_ld)                            # [0, CRS) + tail: the tap of w
        c = int32(j // RS)                               # [0, Cg)
        r = int32((j - c * RS) // S)                     # [0, R)
        s = int32(j - c * RS - r * S)                    # [0, S)
        for u in range(COL_LOADS):
            kk = int32(kk_ld + COL_STEP * u)             # [0, BN): the tile's column
            k = int32(k0 + kk)                           # [0, K) + tail: the filter
            v = float32(0.0)
            if k < k_end and j < CRS:
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
                if k < k_end:
                    y[n, k, p, q] = acc[i, jn] + b[k]


@cuda.jit
def conv_backward_data_v3(dy, w, dx, stride, pad, kg):
    """dx as conv_backward_data_v2's implicit GEMM, register-blocked like conv_forward_v3,
    per group: rows m = (n,ih,iw) in [0, N*H*W), columns c in group g's [g*Cg, g*Cg + Cg),
    reduction j = (k,r,s) over the group's kg filters, [0, kg*R*S), of dY'[m, j] @ w[j, c],
    dY'[m, j] = dy[n, g*kg + k, (ih+pad-r)/stride, (iw+pad-s)/stride] where that is a
    whole, in-range output position, else 0. Grid (ceil(N*H*W/BM), ceil(Cg/BN), G): block
    z is the group. Block THREADS_V3 (1-D): thread t = tx + 16*ty computes dx at rows
    m0 + tx + 16*i, channels c0 + ty + 16*jn (i, jn in [0, 4)).
    Shared: g[j, m] (BK x BM) gathered from dy row-major, wt[j, c] (BK x BN_PAD) from w
    step-major. Registers: acc (TM x TN), ra (TM), rb (TN). Overwrites dx.
    For stride > 1 most of dY' is structural zeros (3/4 at stride 2), gathered and
    multiplied like the rest, as in v2."""
    N, H, W = int32(dx.shape[0]), int32(dx.shape[2]), int32(dx.shape[3])
    Cg, R, S = int32(w.shape[1]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    RS, HW = int32(R * S), int32(H * W)
    KRS, M = int32(kg * RS), int32(N * HW)
    g = int32(cuda.blockIdx.z)                           # [0, G): the block's group
    k_first = int32(g * kg)                              # [0, K): its first filter
    cg0 = int32(cuda.blockIdx.y * BN)                    # [0, Cg): first column, in group
    c0 = int32(g * Cg + cg0)                             # [0, C): first column
    t = int32(cuda.threadIdx.x)                          # [0, THREADS_V3)
    tx, ty = int32(t % DIM_V3), int32(t // DIM_V3)       # [0, 16) each
    m0 = int32(cuda.blockIdx.x * BM)
    gt = cuda.shared.array((BK, BM), float32)
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
    for j0 in range(0, KRS, BK):        # step count from the reduction length kg*R*S
        for u in range(ROW_LOADS):
            jj = int32(js_ld + ROW_STEP * u)             # [0, BK): the tile's step
            j = int32(j0 + jj)                           # [0, KRS) + tail: (k, r, s)
            kk = int32(j // RS)                          # [0, kg): filter in the group
            r = int32((j - kk * RS) // S)                # [0, R)
            s = int32(j - kk * RS - r * S)               # [0, S)
            ph = int32(ih_ld + pad - r)                  # p*stride, if tap r of row p read ih
            qw = int32(iw_ld + pad - s)                  # q*stride, likewise for columns
            v = float32(0.0)
            if (m_ld < M and j < KRS and ph >= 0 and qw >= 0 and ph % stride == 0
                    and qw % stride == 0 and ph // stride < P and qw // stride < Q):
                v = dy[n_ld, k_first + kk, ph // stride, qw // stride]
            gt[jj, mm_ld] = v                            # dY'[m0+mm_ld, j0+jj]
        j = int32(j0 + jw_ld)                            # [0, KRS) + tail: the tap of w
        kk = int32(j // RS)                              # [0, kg)
        r = int32((j - kk * RS) // S)                    # [0, R)
        s = int32(j - kk * RS - r * S)                   # [0, S)
        for u in range(COL_LOADS):
            cc = int32(cc_ld + COL_STEP * u)             # [0, BN): the tile's column
            v = float32(0.0)
            if cg0 + cc < Cg and j < KRS:
                v = w[k_first + kk, cg0 + cc, r, s]      # cg0 + cc in [0, Cg)
            wt[jw_ld, cc] = v                            # w[j0+jw_ld, c0+cc]
        cuda.syncthreads()  # both tiles complete before anyone reads them
        for jj in range(BK):            # constant trip counts from here on: all unrolled
            for i in range(TM):
                ra[i] = gt[jj, tx + DIM_V3 * i]
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
                cc = int32(ty + DIM_V3 * jn)             # [0, BN): its column in the tile
                if cg0 + cc < Cg:
                    dx[n, c0 + cc, ih, iw] = acc[i, jn]  # channel c0 + cc in [0, C)


@cuda.jit
def conv_backward_weight_v3(x, dy, out, stride, pad, chunk, kg):
    """dw = dy^T @ A, register-blocked and split-K, per group: rows k in group g's
    [g*kg, g*kg + kg), columns j = (c,r,s) in [0, Cg*R*S) (dw is (K, C/G, R, S); column c
    pairs with x's channel g*Cg + c), reduction l = (n,p,q) in [0, N*P*Q) cut into chunks
    of `chunk` (a multiple of BK). Grid (ceil(Cg*R*S/BN), G*ceil(kg/BM), chunks): block y
    is row tile y % ceil(kg/BM) of group y // ceil(kg/BM). Block THREADS_V3 (1-D): block
    z reduces l in [z*chunk, (z+1)*chunk) for its 64 x 64 tile, thread t = tx + 16*ty the
    4 x 4 elements dw[k0 + ty + 16*kn, j0 + tx + 16*i] (i, kn in [0, 4); tx runs along
    dw's contiguous axis j, so stores coalesce).
    Shared: d[l, k] from dy and a[l, j] gathered from x, both BK x BN_PAD, both loaded
    step-major (8 consecutive pixels l per column: the contiguous axis of dy, and of x at
    stride 1). Registers: acc (TM x TN), ra (TM), rb (TN), and the (c, r, s) of the
    COL_LOADS columns the thread gathers (ci, ri, si).
    Overwrites out[z] (K, Cg, R, S), as conv_backward_weight_v2 does: dw itself, seen as
    (1, K, Cg, R, S), when there is one chunk, else the partial sums of chunk z."""
    N, H, W = int32(x.shape[0]), int32(x.shape[2]), int32(x.shape[3])
    Cg = int32(out.shape[2])
    R, S = int32(out.shape[3]), int32(out.shape[4])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    RS, PQ = int32(R * S), int32(P * Q)
    CRS, L = int32(Cg * RS), int32(N * PQ)
    tiles = int32((kg + BM - 1) // BM)                   # row tiles per group
    g = int32(cuda.blockIdx.y // tiles)                  # [0, G): the block's group
    k_end = int32(g * kg + kg)                           # (0, K]: past its last filter
    c0 = int32(g * Cg)                                   # [0, C): its first channel
    t = int32(cuda.threadIdx.x)                          # [0, THREADS_V3)
    tx, ty = int32(t % DIM_V3), int32(t // DIM_V3)       # [0, 16) each
    j0 = int32(cuda.blockIdx.x * BN)
    k0 = int32(g * kg + (cuda.blockIdx.y - g * tiles) * BM)  # [0, K): first row
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
        c = int32(j // RS)                               # [0, Cg)
        ri[u] = int32((j - c * RS) // S)                 # [0, R)
        si[u] = int32(j - c * RS - ri[u] * S)            # [0, S)
        ci[u] = int32(c0 + c)                            # [0, C): x's channel
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
            if l < l_end and k < k_end:
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
            c = int32(j // RS)                           # [0, Cg)
            r = int32((j - c * RS) // S)                 # [0, R)
            s = int32(j - c * RS - r * S)                # [0, S)
            for kn in range(TN):
                k = int32(k0 + ty + DIM_V3 * kn)         # [0, K) + tail: its filter
                if k < k_end:
                    out[z, k, c, r, s] = acc[i, kn]


F5 = float32[:, :, :, :, ::1]  # the weight gradient's per-chunk view (chunks, K, Cg, R, S)

PTX_SIGNATURES = [
    (conv_forward_v3, (F4, F4, F1, F4, int32, int32, int32)),
    (conv_backward_data_v3, (F4, F4, F4, int32, int32, int32)),
    (conv_backward_weight_v3, (F4, F4, F5, int32, int32, int32, int32)),
]
