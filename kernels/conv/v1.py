"""Conv kernels, version 1: one thread per output element, loops straight from the math
(the package docstring has it); and the bias gradient and the in-order sum of split
partial sums that v2 and v3 share."""
from numba import cuda, float32, int32

from kernels.common import F1, F2, F3, F4


@cuda.jit
def conv_forward_v1(x, w, b, y, stride, pad):
    """One thread per y[n,k,p,q], 1-D grid over N*K*P*Q (block THREADS). No shared memory.
    Each thread sums its Cg*R*S taps (the Cg = C/G channels of filter k's group), skipping
    those in the zero padding. Overwrites y."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    K, Cg, R, S = int32(w.shape[0]), int32(w.shape[1]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(y.shape[2]), int32(y.shape[3])
    Kg = int32(K // (C // Cg))      # filters per group
    i = int32(cuda.grid(1))  # [0, N*K*P*Q) plus the last block's tail
    if i >= N * K * P * Q:
        return
    q = int32(i % Q)                # [0, Q)
    p = int32((i // Q) % P)         # [0, P)
    k = int32((i // (P * Q)) % K)   # [0, K)
    n = int32(i // (K * P * Q))     # [0, N)
    c0 = int32((k // Kg) * Cg)      # [0, C): the first input channel of k's group
    acc = b[k]
    for c in range(Cg):
        for r in range(R):
            ih = int32(p * stride - pad + r)  # input row, [-pad, H+pad): outside is padding
            if ih < 0 or ih >= H:
                continue
            for s in range(S):
                iw = int32(q * stride - pad + s)  # input column, likewise
                if iw >= 0 and iw < W:
                    acc += x[n, c0 + c, ih, iw] * w[k, c, r, s]
    y[n, k, p, q] = acc


@cuda.jit
def conv_backward_data_v1(dy, w, dx, stride, pad):
    """One thread per dx[n,c,ih,iw], 1-D grid over N*C*H*W (block THREADS). No shared memory.
    A gather: the thread visits every (k, r, s) of the Kg = K/G filters of channel c's
    group and keeps those where some output (p, q) read this pixel, i.e. ih + pad - r =
    p*stride with 0 <= p < P (same for columns). Overwrites dx (pixels no output reads
    get 0)."""
    N, C, H, W = int32(dx.shape[0]), int32(dx.shape[1]), int32(dx.shape[2]), int32(dx.shape[3])
    K, Cg, R, S = int32(w.shape[0]), int32(w.shape[1]), int32(w.shape[2]), int32(w.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    Kg = int32(K // (C // Cg))      # filters per group
    i = int32(cuda.grid(1))  # [0, N*C*H*W) plus the last block's tail
    if i >= N * C * H * W:
        return
    iw = int32(i % W)               # [0, W)
    ih = int32((i // W) % H)        # [0, H)
    c = int32((i // (H * W)) % C)   # [0, C)
    n = int32(i // (C * H * W))     # [0, N)
    g = int32(c // Cg)              # [0, G): c's group
    cg = int32(c - g * Cg)          # [0, Cg): c's index within it, w's channel axis
    acc = float32(0.0)
    for k in range(g * Kg, g * Kg + Kg):  # [0, K): the group's filters
        for r in range(R):
            ph = int32(ih + pad - r)  # = p*stride if output row p read row ih with tap r
            if ph < 0 or ph % stride != 0 or ph // stride >= P:
                continue
            p = int32(ph // stride)  # [0, P)
            for s in range(S):
                qw = int32(iw + pad - s)  # = q*stride if output column q read iw with tap s
                if qw >= 0 and qw % stride == 0 and qw // stride < Q:
                    acc += dy[n, k, p, qw // stride] * w[k, cg, r, s]
    dx[n, c, ih, iw] = acc


@cuda.jit
def conv_backward_weight_v1(x, dy, dw, stride, pad):
    """One thread per dw[k,c,r,s] (c in [0, Cg): dw is (K, C/G, R, S)), 1-D grid over
    K*Cg*R*S (block THREADS). No shared memory. Each thread reduces over all N*P*Q outputs
    (long loops, few threads: the slow one). Overwrites dw."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    K, Cg, R, S = int32(dw.shape[0]), int32(dw.shape[1]), int32(dw.shape[2]), int32(dw.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    Kg = int32(K // (C // Cg))      # filters per group
    i = int32(cuda.grid(1))  # [0, K*Cg*R*S) plus the last block's tail
    if i >= K * Cg * R * S:
        return
    s = int32(i % S)                # [0, S)
    r = int32((i // S) % R)         # [0, R)
    c = int32((i // (R * S)) % Cg)  # [0, Cg)
    k = int32(i // (Cg * R * S))    # [0, K)
    xc = int32((k // Kg) * Cg + c)  # [0, C): the input channel of x it pairs with
    acc = float32(0.0)
    for n in range(N):
        for p in range(P):
            ih = int32(p * stride - pad + r)  # input row tap r of output row p read
            if ih < 0 or ih >= H:
                continue
            for q in range(Q):
                iw = int32(q * stride - pad + s)
                if iw >= 0 and iw < W:
                    acc += dy[n, k, p, q] * x[n, xc, ih, iw]
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


PTX_SIGNATURES = [
    (conv_forward_v1, (F4, F4, F1, F4, int32, int32)),
    (conv_backward_data_v1, (F4, F4, F4, int32, int32)),
    (conv_backward_weight_v1, (F4, F4, F4, int32, int32)),
    (conv_backward_bias_v1, (F3, F2, int32)),
    (conv_sum_partials_v1, (F2, F1)),
]
