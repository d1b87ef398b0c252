"""The cpu device's convolution: the same GEMMs as the reference (reference.py), with the
unrolling arranged for speed; tests/test_cpu_fast.py checks it against the reference."""
import numpy as np

from kernels.conv.reference import backward_ref, check_groups, group_slices, output_size

CHUNK_BYTES = 2 * 2**20  # unrolled input per chunk of images (image_chunks)

# What is fast here:
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
#   reference's GEMM-then-scatter-add (col2im), which moves 1.5x the bytes;
# - a few images at a time (image_chunks): each chunk's unrolling is read by its GEMM
#   while it is still in the cache (1.3-1.9x faster on the 32 and 16 px layers);
# - groups: one ungrouped conv per group, as in the reference.


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


def image_chunks(N, C, H, W, R, S):
    """Slices of the batch, each with about CHUNK_BYTES of unrolled input: a chunk's
    unrolling is still in the cache when its GEMM reads it (at 32 px, 8 channels, a
    whole batch of 32 unrolls to 10 MB; 6 images to the 2 MB of an L2 cache)."""
    per_image = 4 * C * R * S * (H + R) * (W + S)  # float32, padded grid: an upper bound
    n = max(1, min(N, CHUNK_BYTES // per_image))
    return [slice(i, min(i + n, N)) for i in range(0, N, n)]


def forward_fast(x, w, b, stride=1, pad=0, groups=1):
    """(y, unrolled): forward_ref's y, and x unrolled for backward_fast when the batch was
    one chunk (else None: backward unrolls each chunk again, in the cache; with groups,
    one ungrouped conv per group and a list of theirs)."""
    check_groups(x.shape[1], w.shape, groups)
    if groups > 1:
        parts = [forward_fast(x[:, cs], w[ks], b[ks], stride, pad)
                 for cs, ks in group_slices(x.shape[1], w.shape[0], groups)]
        return np.concatenate([y for y, _ in parts], axis=1), [u for _, u in parts]
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = output_size(H, W, R, S, stride, pad)
    y = np.empty((N, K, P, Q), x.dtype)
    for part in image_chunks(N, max(C, K), H, W, R, S):  # as backward_fast's chunks
        unrolled = unroll_fast(x[part], R, S, stride, pad)
        n = part.stop - part.start
        np.add(_gemm_fast(unrolled, w, n, P, Q), b.reshape(1, K, 1, 1), out=y[part])  # bias
    return y, unrolled if n == N else None


def _weight_gradient(unrolled, dy, w_shape):
    """dw of one chunk, from its unrolled input and dy (n, K, P, Q)."""
    cols, Wp = unrolled
    n, K, P, Q = dy.shape
    if Wp:  # dy on the same Wp-wide grid, 0 in the junk columns so they add nothing
        dyt = np.zeros((K, n, P, Wp), dy.dtype)
        dyt[:, :, :, :Q] = dy.transpose(1, 0, 2, 3)
        # (CRS, nPWp) @ (nPWp, K), transposed: OpenBLAS runs this long, thin reduction
        # 25-40% faster with K as the short output side than as the short row count
        return (cols @ dyt.reshape(K, -1).T).T.reshape(w_shape)
    dyt = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(K, n * P * Q)
    _, C, R, S = w_shape
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
    db = dy.sum(axis=(0, 2, 3)).astype(x.dtype, copy=False)
    dx_by_gather = need_dx and stride == 1 and R == S and pad <= R - 1
    if dx_by_gather:  # never otherwise in VGG training (else: the reference's col2im)
        dx = np.empty(x.shape, x.dtype)
        w_flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # CKRS
    dw = np.zeros(w.shape, np.result_type(x, dy))
    chunks = image_chunks(N, max(C, K), H, W, R, S)  # dy's unrolling counts too (K)
    for part in chunks:
        given = unrolled is not None and len(chunks) == 1  # forward's covers the batch
        dw += _weight_gradient(unrolled if given else unroll_fast(x[part], R, S, stride, pad),
                               dy[part], w.shape)
        if dx_by_gather:
            dunrolled = unroll_fast(dy[part], R, S, 1, R - 1 - pad)
            dx[part] = _gemm_fast(dunrolled, w_flipped, part.stop - part.start, H, W)
    dw = dw.astype(x.dtype, copy=False)
    if need_dx and not dx_by_gather:
        dx = backward_ref(x, w, dy, stride, pad)[0]
    return (dx if need_dx else None), dw, db
