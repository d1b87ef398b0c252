"""The cpu device's convolution: the reference's sums (reference.py) as compiled loops
that read x in place (VGG's 3x3 convs: direct3x3.py and outer3x3.py), one GEMM an image
(1x1 convs), or GEMMs over an unrolling arranged for speed (the rest);
tests/test_cpu_fast.py checks it against the reference."""
import numpy as np
from numba import njit

from kernels.conv.direct3x3 import (conv3x3_direct, conv3x3_direct_nhwc, padded_nhwc,
                                    weight_gradient3x3_columns, weight_gradient3x3_direct)
from kernels.conv.outer3x3 import block, conv3x3_outer
from kernels.conv.reference import backward_ref, check_groups, group_slices, output_size
from kernels.gemm import machine, matmul_abt
from kernels.threads import threads

CHUNK_BYTES = 2 * 2**20  # unrolled input per chunk of images (image_chunks)

# What is fast here:
#
# - VGG's 3x3 stride-1 convs skip the unrolling and the GEMM in forward (and in dx, a
#   forward conv of dy): direct3x3.py's compiled loops read x in place. With few channels
#   (those the "rows" layout below would take) they sum each output row where it lies and
#   each weight as one long dot product (dw too); with more, the outputs are outer
#   products of NHWC x with the filters, 8 pixels x 32 output channels in registers
#   (outer3x3.py; 5 x 16 on an AVX2 CPU; with fewer output channels than that, 3 dot
#   products of runs of NHWC x each: direct_forward), and dw goes through the "nhwc"
#   unrolling, or on more threads direct3x3.py's loops (direct_dw). The unrollings
#   remain for those dws and for other filters (5x5, 11x11, strides);
# - a 1x1 stride-1 conv unrolls nothing: its forward (and dx) is one GEMM an image,
#   (K, C) @ (C, H*W), on x as it lies (1.4-2.9x faster than through "nhwc" from 4
#   pixels up; 0.8x at 2 pixels with OpenBLAS's Haswell kernels: 64 tiny products);
# - the reference's im2col is one 6-D gather that moves Q pixels (8 to 32) at a time;
#   here the copies are few and their runs long, in one of two layouts:
#   "rows" (few channels, stride 1): output pixels on a grid as wide as the PADDED input,
#   Wp, so that filter row r of every output pixel is one contiguous run of P*Wp pixels
#   per (channel, image), starting at padded row r. Only the R filter rows are copied
#   (3 copies of x, not 9); filter column s is the same run read s pixels further on,
#   which the GEMM's output absorbs instead: it computes, for each s, the product of
#   w[:, :, :, s] with the copies, and the S products are added at offsets 0 .. S-1
#   (_conv_into, a loop compiled by Numba: 2-3x faster than NumPy's S-1 whole-array adds
#   and the strided copy out). The Wp - Q junk columns of each output row are dropped
#   there (6% to 25% more GEMM work at 32 to 8 pixels, against 2-3x faster copies);
#   "nhwc" (more channels than output columns: the deep layers): an NHWC unrolling whose
#   runs are the S*C values of a filter row (S pixels of C channels, side by side in NHWC);
# - dx of a stride-1 conv is computed as a conv of dy with the filter flipped and its
#   in/out channels swapped (padding R-1-pad): a gather like forward, instead of the
#   reference's GEMM-then-scatter-add (col2im), which moves 1.5x the bytes;
# - a few images at a time (image_chunks): each chunk's unrolling is read by its GEMM
#   while it is still in the cache (1.3-1.9x faster on VGG's 32 and 16 px layers, when
#   they were still unrolled);
# - the products whose operands both run along the reduction (the "nhwc" forward's
#   (pixels, R*S*C) · (K, R*S*C)ᵀ and the "rows" dw's (S*K, pixels) · (C*R, pixels)ᵀ) go
#   through kernels/gemm.py's matmul_abt: NumPy's BLAS, or a compiled loop where that
#   measured faster (where BLAS runs narrower vectors than the CPU has, as with
#   OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU: 1.3-1.6x; and for the few, very long dot
#   products of the early layers' dw, which BLAS blocks poorly: 1.3-2.4x);
# - groups: one ungrouped conv per group, as in the reference;
# - on n threads (kernels/threads.py: --threads, the bench's 2 threads), direct3x3.py's
#   loops and gemm.py's share their outer loop (images, pixels or output channels) among
#   them, and so does the "nhwc" convs' dw from 4 columns on (direct_dw);
#   NumPy's BLAS runs one thread a call, the copies here one thread.


def _unroll_rows(x, R, S, pad):
    """Stride 1: cols (C*R, N*P*Wp + S-1), cols[(c,r), (n, p*Wp + v)] = x_padded[n, c, p+r, v]
    for v in [0, Wp); the last S-1 columns are 0. Filter tap (r, s) of output pixel
    (n, p, v) is column (n, p*Wp + v) + s of row (c, r): for v < Q that stays in the
    pixel's own row (v + s < Wp); columns v >= Q are junk."""
    N, C, H, W = x.shape
    P, Hp, Wp = H + 2 * pad - R + 1, H + 2 * pad, W + 2 * pad
    xp = np.zeros((C, N, Hp, Wp), x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x.transpose(1, 0, 2, 3)
    flat = xp.reshape(C, N, Hp * Wp)
    L = N * P * Wp
    cols = np.empty((C, R, L + S - 1), x.dtype)
    cols[:, :, L:] = 0  # read only by the last image's junk columns
    runs = cols[:, :, :L].reshape(C, R, N, P * Wp)
    for r in range(R):
        runs[:, r] = flat[:, :, r * Wp:r * Wp + P * Wp]
    return cols.reshape(C * R, L + S - 1)


def _unroll_nhwc(x, R, S, stride, pad, P, Q):
    """cols (N*P*Q, R*S*C), cols[(n,p,q), (r,s,c)] = x_padded[n, c, p*stride+r, q*stride+s].

    In NHWC the S*C values of filter row r at output pixel (p, q) lie side by side in the
    padded input, so each filter row is one copy of an S*C-long run (3 copies, not 9)."""
    N, C, H, W = x.shape
    xp = padded_nhwc(x, pad)
    cols = np.empty((N * P * Q, R * S * C), x.dtype)
    _copy_runs(xp.reshape(N, -1), W + 2 * pad, C, R, S, stride, P, Q, cols)
    return cols


@njit(cache=True)
def _copy_runs(xp, Wp, C, R, S, stride, P, Q, cols):
    """The copies of _unroll_nhwc: xp (N, Hp*Wp*C), the padded input in NHWC, flat per
    image; cols (N*P*Q, R*S*C). One output pixel's R runs at a time (1.2-2x faster than
    NumPy's strided copy of the same runs, whose inner loop is only S*C long). On one
    thread however many the cpu device has: shared among two, conv4_2's at batch 64 took
    0.15 ms against 0.05."""
    N = xp.shape[0]
    SC = S * C
    for n in range(N):
        image = xp[n]
        for p in range(P):
            for q in range(Q):
                row = cols[(n * P + p) * Q + q]  # output pixel (n, p, q)
                for r in range(R):  # the run starts at x_padded[n, p*stride + r, q*stride, 0]
                    start = ((p * stride + r) * Wp + q * stride) * C
                    run, into = image[start:start + SC], row[r * SC:(r + 1) * SC]
                    for t in range(SC):  # [0, S*C): filter row r's taps (s, c)
                        into[t] = run[t]


def rows_layout(C, Q, stride):
    """Does unroll_fast lay out C channels for Q output columns as "rows" (else "nhwc",
    see above)? The longer copied run wins: Q pixels against C channels."""
    return stride == 1 and C <= Q


def unroll_fast(x, R, S, stride=1, pad=0):
    """(cols, Wp): x unrolled for the conv's GEMM; Wp > 0 for the "rows" layout, 0 for
    "nhwc" (see above)."""
    N, C, H, W = x.shape
    P, Q = output_size(H, W, R, S, stride, pad)
    if rows_layout(C, Q, stride):
        return _unroll_rows(x, R, S, pad), W + 2 * pad
    return _unroll_nhwc(x, R, S, stride, pad, P, Q), 0


def gemm_weights(w, rows):
    """w (K, C, R, S) as the matrix its layout's GEMM multiplies (made once per call, not
    per chunk): "rows" (S*K, C*R), row (s, k) = w[k, :, :, s]; "nhwc" (K, R*S*C), the
    transpose of what the GEMM multiplies by (matmul_abt's b)."""
    K, C, R, S = w.shape
    if rows:
        return np.ascontiguousarray(w.transpose(3, 0, 1, 2).reshape(S * K, C * R))
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(K, R * S * C))


@njit(cache=True)
def _add_columns(z, Wp, bias, out):
    """The "rows" layout's sum over the filter's columns s: z (S*K, N*P*Wp + S-1), the
    GEMM's products; out (N, K, P, Q) = bias[k] + sum_s z[s*K + k, (n*P + p)*Wp + q + s].
    One output row (n, k, p) at a time, each term a contiguous run of z: vector adds."""
    N, K, P, Q = out.shape
    S = z.shape[0] // K
    for n in range(N):
        for k in range(K):
            for p in range(P):
                j = (n * P + p) * Wp  # output row (n, p)'s first column in z; the Wp - Q
                row = out[n, k, p]    # junk columns after its Q are never read
                first = z[k, j:j + Q]
                for q in range(Q):
                    row[q] = bias[k] + first[q]
                for s in range(1, S):  # filter column s: z's rows (s, k), s pixels on
                    shifted = z[s * K + k, j + s:j + s + Q]
                    for q in range(Q):
                        row[q] += shifted[q]


def _conv_into(out, unrolled, wmat, bias=None):
    """out (N, K, P, Q) = conv(x, w) (+ bias), from x's unroll_fast output and
    gemm_weights(w) for its layout."""
    cols, Wp = unrolled
    N, K, P, Q = out.shape
    if bias is None:
        bias = np.zeros(K, out.dtype)
    if Wp:  # (S*K, C*R) @ (C*R, N*P*Wp + S-1): one product per filter column s
        _add_columns(wmat @ cols, Wp, bias, out)
    else:  # (NPQ, RSC) @ (K, RSC)ᵀ
        y = matmul_abt(cols, wmat).reshape(N, P, Q, K).transpose(0, 3, 1, 2)
        np.add(y, bias.reshape(1, K, 1, 1), out=out)


def image_chunks(N, C, H, W, R, S, rows=True):
    """Slices of the batch, each with about CHUNK_BYTES of unrolled input: a chunk's
    unrolling is still in the cache when its GEMM reads it (at 32 px, 8 channels, a
    whole batch of 32 unrolls to 10 MB; 6 images to the 2 MB of an L2 cache). rows=False
    (the "nhwc" layout, the deep layers): 4x the budget, since that GEMM has a row per
    output pixel and runs better the more it has (1-4% off config E's step at batch 64)."""
    per_image = 4 * C * R * S * (H + R) * (W + S)  # float32, padded grid: an upper bound
    most = max(1, (CHUNK_BYTES if rows else 4 * CHUNK_BYTES) // per_image)
    count = max(1, -(-N // most))  # as few chunks as hold the batch (one if it is empty),
    bounds = [N * i // count for i in range(count + 1)]  # as even as can be: 64 in chunks
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]  # of at most 57 -> 32 + 32


def pointwise(R, S, stride, pad):
    """Is the conv a 1x1, stride 1, unpadded (config C's): output pixel j reads only input
    pixel j, so x as it lies is the GEMM's operand?"""
    return R == S == 1 and stride == 1 and pad == 0


def direct_dw(Q):
    """Which of direct3x3.py's dws a 3x3 stride-1 conv with more channels than Q output
    columns (the "nhwc" layout) takes instead of the unrolling and a GEMM (None: the GEMM).
    From 8 columns on, the padded grid's (it then sums at most 1.56x the work), where the
    loops run on more threads than the GEMM (NumPy's BLAS: one thread a call) or where BLAS
    runs narrower vectors than the loop (gemm.machine()). conv3_2's dw at batch 64 (ms): 2
    threads 0.50 against 0.56 for the unrolling and GEMM with OpenBLAS's own kernels, 0.77
    with its Haswell ones; one thread, Haswell kernels, 0.34-0.87 against 0.47-1.07 at 8
    columns, but 0.64-1.02 against 0.43-0.87 at 4; one thread, own kernels, even at 8.
    At 4 to 7 columns on more threads, the column copies' (1.5x the work at 4, against the
    grid's 2.25x): conv4_2's dw at batch 64 on 2 threads 0.42-0.50 against 0.49 (own
    kernels) and 0.79 (Haswell) for the GEMM; conv4_1's 0.22-0.26 against 0.26 and 0.39.
    (At 2 columns, 2x the work: slower than the GEMM with OpenBLAS's own kernels.)"""
    if Q >= 8 and (threads() > 1 or machine()[0]):
        return weight_gradient3x3_direct
    if 4 <= Q < 8 and threads() > 1:
        return weight_gradient3x3_columns
    return None


def direct_forward(rows, K):
    """Which loop a 3x3 stride-1 conv's forward (and dx) takes: direct3x3.py's "rows"
    loops for few channels; with more channels than output columns, outer3x3.py's outer
    products where K fills a block's lanes (32 with AVX-512, 16 with AVX2: 1.1-1.5x
    faster than the dot products at conv3 and conv4, batch 64, on 1 and 2 threads on an
    AVX-512 CPU; 1.6-1.8x on an AVX2 one), else direct3x3.py's dot products (with 16 on
    AVX-512, half of the 32 lanes would be zeros: dx of conv3_1 0.39 ms against 0.30)."""
    if rows:
        return conv3x3_direct
    return conv3x3_outer if K >= block()[1] else conv3x3_direct_nhwc


def forward_fast(x, w, b, stride=1, pad=0, groups=1):
    """(y, unrolled): forward_ref's y, and x unrolled for backward_fast when the batch was
    one chunk (else None: backward unrolls each chunk again, in the cache; None too for a
    1x1 conv and where direct3x3.py ran, which unroll nothing; with groups, one ungrouped
    conv per group and a list of theirs)."""
    check_groups(x.shape[1], w.shape, groups)
    if groups > 1:
        parts = [forward_fast(x[:, cs], w[ks], b[ks], stride, pad)
                 for cs, ks in group_slices(x.shape[1], w.shape[0], groups)]
        return np.concatenate([y for y, _ in parts], axis=1), [u for _, u in parts]
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = output_size(H, W, R, S, stride, pad)
    rows = rows_layout(C, Q, stride)
    if stride == 1 and R == S == 3:  # VGG's convs: compiled loops, nothing unrolled
        return direct_forward(rows, K)(x, w, b, pad), None
    if pointwise(R, S, stride, pad):  # x needs no unrolling: a GEMM an image,
        y = np.empty((N, K, H, W), x.dtype)  # (owning its memory: the tape counts owners)
        np.matmul(w.reshape(K, C), x.reshape(N, C, H * W), out=y.reshape(N, K, H * W))
        y += b.reshape(1, K, 1, 1)  # (K, C) @ (C, H*W) an image, then the bias
        return y, None
    y = np.empty((N, K, P, Q), x.dtype)
    wmat = gemm_weights(w, rows)
    for part in image_chunks(N, C, H, W, R, S, rows):
        unrolled = unroll_fast(x[part], R, S, stride, pad)
        _conv_into(y[part], unrolled, wmat, b)
    return y, unrolled if part.stop - part.start == N else None


def _weight_gradient(unrolled, dy, w_shape):
    """dw of one chunk, from its unrolled input and dy (n, K, P, Q)."""
    cols, Wp = unrolled
    n, K, P, Q = dy.shape
    _, C, R, S = w_shape
    if Wp:  # dw[k, c, r, s] = sum over pixels j of dy[k, j] * cols[(c, r), j + s]
        L = n * P * Wp
        shifted = np.empty((S, K, L + S - 1), dy.dtype)  # row (s, k): dy, s columns on
        grid = shifted[0, :, :L].reshape(K, n, P, Wp)    # dy on the Wp-wide grid,
        grid[:, :, :, :Q] = dy.transpose(1, 0, 2, 3)
        grid[:, :, :, Q:] = 0                            # 0 in the junk columns
        shifted[0, :, L:] = 0
        for s in range(1, S):  # copies of the first, s columns on: contiguous runs
            shifted[s, :, :s] = 0
            shifted[s, :, s:] = shifted[0, :, :L + S - 1 - s]
        dw = matmul_abt(shifted.reshape(S * K, -1), cols)  # (S*K, C*R)
        return dw.reshape(S, K, C, R).transpose(1, 2, 3, 0)
    dyt = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(K, n * P * Q)
    return (dyt @ cols).reshape(K, R, S, C).transpose(0, 3, 1, 2)


def backward_fast(x, w, dy, stride=1, pad=0, need_dx=True, unrolled=None, groups=1):
    """(dx, dw, db) as backward_ref, a chunk of images at a time (image_chunks).
    unrolled: forward_fast's, if at hand."""
    check_groups(x.shape[1], w.shape, groups)
    if groups > 1:
        parts = [backward_fast(x[:, cs], w[ks], dy[:, ks], stride, pad, need_dx,
                               None if unrolled is None else unrolled[g])
                 for g, (cs, ks) in enumerate(group_slices(x.shape[1], w.shape[0], groups))]
        dx = np.concatenate([p[0] for p in parts], axis=1) if need_dx else None
        return dx, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    # db: the sum of dy over images and pixels (einsum: 3x faster here than .sum(axis=(0,2,3)))
    db = np.einsum("nkp->k", dy.reshape(N, K, dy.shape[2] * dy.shape[3]))
    db = db.astype(x.dtype, copy=False)
    rows = rows_layout(C, dy.shape[3], stride)
    loop = None if not (stride == 1 and R == S == 3) else (
        weight_gradient3x3_direct if rows else direct_dw(dy.shape[3]))
    if loop:  # as forward_fast
        dw = loop(x, dy, pad)
    elif pointwise(R, S, stride, pad):  # as forward_fast: a GEMM an image
        per_image = np.matmul(dy.reshape(N, K, -1), x.reshape(N, C, -1).transpose(0, 2, 1))
        dw = per_image.sum(axis=0).reshape(w.shape)  # (K, C) summed over the images
    else:
        dw = np.zeros(w.shape, np.result_type(x, dy))
        chunks = image_chunks(N, C, H, W, R, S, rows)
        for part in chunks:
            given = unrolled is not None and len(chunks) == 1  # then forward's was one too
            dw += _weight_gradient(unrolled if given else
                                   unroll_fast(x[part], R, S, stride, pad), dy[part], w.shape)
    dw = dw.astype(x.dtype, copy=False)
    if need_dx and stride == 1 and R == S and pad <= R - 1:  # always in VGG training
        w_flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, K, R, S)
        dx = forward_fast(dy, w_flipped, np.zeros(C, x.dtype), 1, R - 1 - pad)[0]
    elif need_dx:  # the reference's col2im
        dx = backward_ref(x, w, dy, stride, pad)[0]
    return (dx if need_dx else None), dw, db
