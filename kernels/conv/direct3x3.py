"""The cpu device's 3x3 stride-1 convolution with few channels (VGG's first two blocks at
the cpu preset: 3 to 16 channels on 16 to 32 pixels, paper Sec. 2.1), forward and weight
gradient, each as one compiled loop with no unrolled copy of the input and no GEMM.
fast.py sends them the convs it would lay out as "rows" (and dx, a forward conv of dy);
tests/test_cpu_fast.py checks them against reference.py.

Why not a GEMM there: with 8 or 16 channels the GEMM's reduction is 24 to 144 long, too
short for BLAS to keep its tiles busy (75-100 GFLOP/s here with OPENBLAS_CORETYPE=Haswell,
against PyTorch's 140-160), and the unrolled copy and the pass summing filter columns
cost as much again. Here every output row is summed where it lies, in the cache.

The arrangement is fast.py's "rows" grid: x padded, each channel flat, output pixels on a
grid as wide as the padded input (Wp), so that tap (r, s) of output position j is input
position j + r*Wp + s of every channel: a shifted contiguous run. One pass of the inner
loop adds 2 channels x 3 taps (one filter row) into 4 output channels: 6 runs read,
4 accumulator rows read and written, 24 multiply-adds a position. LLVM turns that loop
into 16-lane vector code (128-177 GFLOP/s measured; 4 output channels x 3 taps of one
channel, 91-105; 4 x 9 or 8 x 3 were not vectorised at all: too many pointers to check
for overlap).
"""
import numpy as np
from numba import float32, njit

BLOCK_K = 4  # output channels summed together (each read of the input feeds 4)
BLOCK_C = 2  # input channels a pass reads


def conv3x3_direct(x, w, b, pad):
    """forward_ref(x, w, b, 1, pad) for w (K, C, 3, 3): y (N, K, H + 2*pad - 2,
    W + 2*pad - 2). Channels padded with zeros to whole blocks (K to 4s, C to 2s)."""
    N, C, H, W = x.shape
    K = w.shape[0]
    C2 = -(-C // BLOCK_C) * BLOCK_C
    K4 = -(-K // BLOCK_K) * BLOCK_K
    wb = np.zeros((K4, C2, 3, 3), x.dtype)
    wb[:K, :C] = w
    bb = np.zeros(K4, x.dtype)
    bb[:K] = b
    y = np.empty((N, K, H + 2 * pad - 2, W + 2 * pad - 2), x.dtype)
    _conv3x3_rows(np.ascontiguousarray(x), wb, bb, pad, y)
    return y


@njit(fastmath={"reassoc", "contract"}, cache=True)
def _conv3x3_rows(x, w, bias, pad, out):
    """x (N, C, H, W), w (K4, C2, 3, 3), bias (K4,), out (N, K, P, Q) with C <= C2 and
    K <= K4: out[n, k, p, q] = bias[k] + sum over (c, r, s) of w[k, c, r, s] *
    x_padded[n, c, p + r, q + s]. One image at a time, padded into a scratch that stays
    in the cache (flat: 12% faster than padding the whole batch first)."""
    N, C, H, W = x.shape
    C2, K4 = w.shape[1], w.shape[0]
    K, P, Q = out.shape[1], out.shape[2], out.shape[3]
    Wp = W + 2 * pad
    L = P * Wp  # grid positions of one output channel; the Wp - Q junk ones a row are
    acc = np.empty((BLOCK_K, L), out.dtype)  # summed too, and never copied out
    # one padded image, each channel flat, plus 2 zeros: the last grid position's taps
    # s = 1, 2 read them; the borders (and channels C .. C2-1) stay 0, written once
    flat = np.zeros((C2, (H + 2 * pad) * Wp + 2), out.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(H):  # row i of x[n, c] into row i + pad of the padded image
                start = (i + pad) * Wp + pad
                into, row = flat[c, start:start + W], x[n, c, i]
                for col in range(W):  # (slices from index 0: a vectorised copy)
                    into[col] = row[col]
        for k in range(0, K4, BLOCK_K):  # output channels k .. k+3
            g0, g1, g2, g3 = acc[0], acc[1], acc[2], acc[3]
            g0[:], g1[:], g2[:], g3[:] = bias[k], bias[k + 1], bias[k + 2], bias[k + 3]
            for c in range(0, C2, BLOCK_C):  # input channels c, c+1
                for r in range(3):  # filter row r: its taps s = 0, 1, 2 at j + r*Wp + s
                    o = r * Wp
                    u, v = flat[c], flat[c + 1]
                    u0, u1, u2 = u[o:o + L], u[o + 1:o + 1 + L], u[o + 2:o + 2 + L]
                    v0, v1, v2 = v[o:o + L], v[o + 1:o + 1 + L], v[o + 2:o + 2 + L]
                    a, e = w[k, c, r], w[k, c + 1, r]  # (3,) each: channel c's, c+1's
                    b, f = w[k + 1, c, r], w[k + 1, c + 1, r]
                    d, h = w[k + 2, c, r], w[k + 2, c + 1, r]
                    m, t = w[k + 3, c, r], w[k + 3, c + 1, r]
                    for j in range(L):  # [0, P*Wp): one vector lane a position
                        x0, x1, x2, y0, y1, y2 = u0[j], u1[j], u2[j], v0[j], v1[j], v2[j]
                        g0[j] += a[0]*x0 + a[1]*x1 + a[2]*x2 + e[0]*y0 + e[1]*y1 + e[2]*y2
                        g1[j] += b[0]*x0 + b[1]*x1 + b[2]*x2 + f[0]*y0 + f[1]*y1 + f[2]*y2
                        g2[j] += d[0]*x0 + d[1]*x1 + d[2]*x2 + h[0]*y0 + h[1]*y1 + h[2]*y2
                        g3[j] += m[0]*x0 + m[1]*x1 + m[2]*x2 + t[0]*y0 + t[1]*y1 + t[2]*y2
            for i in range(min(BLOCK_K, K - k)):  # the block's real channels, junk dropped
                for p in range(P):
                    row, sums = out[n, k + i, p], acc[i, p * Wp:p * Wp + Q]
                    for q in range(Q):  # (a loop over runs from index 0 is vectorised;
                        row[q] = sums[q]  # sums[p*Wp + q] or row[:] = sums: 3-4x slower)


def weight_gradient3x3_direct(x, dy, pad):
    """backward_ref's dw for a 3x3 stride-1 conv: dw[k, c, r, s] = sum over images and
    output pixels of dy[n, k, p, q] * x_padded[n, c, p + r, q + s].

    The same grid as the forward, with the images end to end: x channel-major and padded
    (C, N*Hp*Wp + 2*Wp + 2), dy on x's padded grid (K, N*Hp*Wp) with 0 wherever no output
    pixel lies, so that every (k, c, r, s) is one dot product N*Hp*Wp long of dy's row k
    and x's row c read r*Wp + s further on."""
    N, C, H, W = x.shape
    K, P, Q = dy.shape[1:]
    Hp, Wp = H + 2 * pad, W + 2 * pad
    T = N * Hp * Wp
    rows = np.zeros((C, T + 2 * Wp + 2), x.dtype)  # the last 2*Wp + 2: taps past the end
    rows[:, :T].reshape(C, N, Hp, Wp)[:, :, pad:pad + H, pad:pad + W] = x.transpose(1, 0, 2, 3)
    K4 = -(-K // BLOCK_K) * BLOCK_K
    grid = np.zeros((K4, T), dy.dtype)  # output channels K .. K4-1: 0, dropped at the end
    grid[:K].reshape(K, N, Hp, Wp)[:, :, :P, :Q] = dy.transpose(1, 0, 2, 3)
    dw = np.empty((K4, C, 3, 3), np.result_type(x, dy))
    _dw3x3_rows(rows, grid, Wp, dw)
    return dw[:K]


@njit(fastmath={"reassoc", "contract"}, cache=True)
def _dw3x3_rows(rows, grid, Wp, dw):
    """rows (C, T + 2*Wp + 2), grid (K4, T), dw (K4, C, 3, 3): dw[k, c, r, s] = sum over
    j in [0, T) of grid[k, j] * rows[c, j + r*Wp + s]. 12 running sums at a time (4 output
    channels x the 3 taps of one filter row): the loop over j reads 4 + 3 runs for 12
    multiply-adds, vectorised by LLVM (the sums may be reordered: fastmath reassoc)."""
    C = rows.shape[0]
    K4, T = grid.shape
    for k in range(0, K4, BLOCK_K):
        d0, d1, d2, d3 = grid[k], grid[k + 1], grid[k + 2], grid[k + 3]
        for c in range(C):
            for r in range(3):
                o, u = r * Wp, rows[c]
                x0s, x1s, x2s = u[o:o + T], u[o + 1:o + 1 + T], u[o + 2:o + 2 + T]
                # typed zeros: a Python 0.0 would make float32 sums float64 (3x slower)
                s00 = s01 = s02 = s10 = s11 = s12 = float32(0)
                s20 = s21 = s22 = s30 = s31 = s32 = float32(0)
                for j in range(T):
                    x0, x1, x2 = x0s[j], x1s[j], x2s[j]
                    y0, y1, y2, y3 = d0[j], d1[j], d2[j], d3[j]
                    s00 += y0 * x0; s01 += y0 * x1; s02 += y0 * x2  # noqa: E702
                    s10 += y1 * x0; s11 += y1 * x1; s12 += y1 * x2  # noqa: E702
                    s20 += y2 * x0; s21 += y2 * x1; s22 += y2 * x2  # noqa: E702
                    s30 += y3 * x0; s31 += y3 * x1; s32 += y3 * x2  # noqa: E702
                dw[k, c, r, 0], dw[k, c, r, 1], dw[k, c, r, 2] = s00, s01, s02
                dw[k + 1, c, r, 0], dw[k + 1, c, r, 1], dw[k + 1, c, r, 2] = s10, s11, s12
                dw[k + 2, c, r, 0], dw[k + 2, c, r, 1], dw[k + 2, c, r, 2] = s20, s21, s22
                dw[k + 3, c, r, 0], dw[k + 3, c, r, 1], dw[k + 3, c, r, 2] = s30, s31, s32
