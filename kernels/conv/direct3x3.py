"""The cpu device's 3x3 stride-1 convolution (VGG's, paper Sec. 2.1) as compiled loops with
no unrolled copy of the input: fast.py sends 3x3 stride-1 convs' forward here (and dx, a
forward conv of dy) but for those outer3x3.py takes (deep, with as many output channels
as its block's lanes or more: 32 with AVX-512, 16 with AVX2), and the few-channel ones'
dw (on more than one thread, the others' too from 4 output columns on: fast.direct_dw);
tests/test_cpu_fast.py checks them against reference.py. On more threads
(kernels/threads.py) each loop shares its outer loop among them: groups of images (the
"rows" forward), blocks of 4 output channels (dw), blocks of 4 output pixels (the NHWC
forward).

Few channels (where fast.py would lay x out as "rows": the cpu preset's first two blocks,
3 to 16 channels on 16 to 32 pixels), forward and dw. With 8 or 16 channels a GEMM's
reduction is 24 to 144 long, too short for BLAS to keep its tiles busy (75-100 GFLOP/s
here with OPENBLAS_CORETYPE=Haswell, against PyTorch's 140-160), and the unrolled copy
and the pass summing filter columns cost as much again. Here every output row is summed
where it lies, in the cache. The arrangement is fast.py's "rows" grid: x padded, each
channel flat, output pixels on a grid as wide as the padded input (Wp), so that tap
(r, s) of output position j is input position j + r*Wp + s of every channel: a shifted
contiguous run. One pass of the inner loop adds 2 channels x 3 taps (one filter row)
into 4 output channels: 6 runs read, 4 accumulator rows read and written, 24
multiply-adds a position. LLVM turns that loop into 16-lane vector code (136-185
GFLOP/s measured; 4 output channels x 3 taps of one channel, 91-105; 4 x 9, 8 x 3 or
4 x 4 channels were not vectorised at all: too many pointers to check for overlap).

More channels than output columns (the deep blocks at 2 to 8 pixels) but fewer output
channels than outer3x3.py's block's lanes (dx of conv3_1 on an AVX-512 CPU; outer3x3.py
takes the rest), forward: in NHWC the S*C values of filter row r at an output pixel lie
side by side in the padded input, so each output is a dot product of 3 runs of x with 3
runs of the filter, read in place (the "nhwc" unrolling copies them into a matrix first,
and its GEMM's output must then be transposed to NCHW: together 20-40% of that path's
time). 4 pixels x 4 output channels at a time, 16 running sums in registers, as
kernels/gemm.py's blocks.
"""
import numpy as np
from numba import float32, prange

from kernels.threads import loops, threads

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
    _conv3x3_rows(np.ascontiguousarray(x), wb, bb, pad, y, threads())
    return y


@loops(fastmath={"reassoc", "contract"}, cache=True)
def _conv3x3_rows(x, w, bias, pad, out, groups):
    """x (N, C, H, W), w (K4, C2, 3, 3), bias (K4,), out (N, K, P, Q) with C <= C2 and
    K <= K4: out[n, k, p, q] = bias[k] + sum over (c, r, s) of w[k, c, r, s] *
    x_padded[n, c, p + r, q + s]. The batch in `groups` runs of images, one a thread;
    in each, one image at a time, padded into a scratch that stays in the cache (flat:
    12% faster than padding the whole batch first)."""
    N, C, H, W = x.shape
    C2, K4 = w.shape[1], w.shape[0]
    K, P, Q = out.shape[1], out.shape[2], out.shape[3]
    Wp = W + 2 * pad
    L = P * Wp  # grid positions of one output channel; the Wp - Q junk ones a row are
    accs = np.empty((groups, BLOCK_K, L), out.dtype)  # summed too, never copied out
    # a padded image a group, each channel flat, plus 2 zeros: the last grid position's
    # taps s = 1, 2 read them; the borders (and channels C .. C2-1) stay 0, written once
    flats = np.zeros((groups, C2, (H + 2 * pad) * Wp + 2), out.dtype)
    for group in prange(groups):
        acc, flat = accs[group], flats[group]
        for n in range(N * group // groups, N * (group + 1) // groups):  # its images
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
                            x0, x1, x2 = u0[j], u1[j], u2[j]
                            y0, y1, y2 = v0[j], v1[j], v2[j]
                            g0[j] += (a[0]*x0 + a[1]*x1 + a[2]*x2
                                      + e[0]*y0 + e[1]*y1 + e[2]*y2)
                            g1[j] += (b[0]*x0 + b[1]*x1 + b[2]*x2
                                      + f[0]*y0 + f[1]*y1 + f[2]*y2)
                            g2[j] += (d[0]*x0 + d[1]*x1 + d[2]*x2
                                      + h[0]*y0 + h[1]*y1 + h[2]*y2)
                            g3[j] += (m[0]*x0 + m[1]*x1 + m[2]*x2
                                      + t[0]*y0 + t[1]*y1 + t[2]*y2)
                for i in range(min(BLOCK_K, K - k)):  # the block's real channels only
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
    Hp, Wp = H + 2 * pad, W + 2 * pad
    T = N * Hp * Wp
    rows = np.empty((C, T + 2 * Wp + 2), x.dtype)  # the last 2*Wp + 2: taps past the end
    _on_grid(np.ascontiguousarray(x), pad, pad, Hp, Wp, rows)
    return _dw_against(rows, 1, dy, Hp, Wp, Wp, 1)  # dw[k, c, r, s]


def _dw_against(rows, copies, dy, Hp, width, g_step, t_step):
    """_dw3x3_taps of x's rows (as laid out by the caller) against dy on the same grid
    (Hp x width an image, 0 where no output pixel lies): dw (K, C, 3, 3) in _dw3x3_taps's
    (g, t) order."""
    N, K = dy.shape[:2]
    K4 = -(-K // BLOCK_K) * BLOCK_K
    grid = np.empty((K4, N * Hp * width), dy.dtype)  # channels K .. K4-1: 0, dropped below
    _on_grid(np.ascontiguousarray(dy), 0, 0, Hp, width, grid)
    dw = np.empty((K4, rows.shape[0] // copies, 3, 3), np.result_type(rows, dy))
    _dw3x3_taps(rows, copies, grid, g_step, t_step, dw)
    return dw[:K]


@loops(cache=True)
def _on_grid(a, top, left, Hp, Wp, out):
    """a (N, C, h, w), out (C2, T) with C2 >= C, T >= N*Hp*Wp: row c of out holds channel c
    of every image end to end, each on a grid of Hp x Wp with a[n, c] at (top, left), 0
    everywhere else (rows C .. C2-1 and past N*Hp*Wp too). A channel a thread's share:
    NumPy's zeros and strided copy of the same took 0.12 ms for conv3_2's dw at batch 64,
    on one thread."""
    N, C, h, w = a.shape
    for c in prange(out.shape[0]):
        row = out[c]
        row[:] = 0
        if c < C:
            for n in range(N):
                start = n * Hp * Wp + top * Wp + left  # a[n, c, 0, 0]'s place
                for i in range(h):  # row i of a[n, c]
                    into, src = row[start + i * Wp:start + i * Wp + w], a[n, c, i]
                    for j in range(w):  # (slices from index 0: a vectorised copy)
                        into[j] = src[j]


def weight_gradient3x3_columns(x, dy, pad):
    """weight_gradient3x3_direct's dw on a grid only Q wide: no junk columns, so it sums
    Hp/P times the output pixels (1.5x at 4 columns, against the padded grid's 2.25x).
    Each channel of x is copied 3 times, copy s shifted s columns (x_padded[n, c, i, q + s]
    at (n, i, q) of an (N, Hp, Q) grid), dy lies on the same grid with 0 in each image's
    last Hp - P rows, and tap (r, s) of output pixel j is copy s's position j + r*Q. For
    the deep convs on more threads than BLAS's one (fast.direct_dw)."""
    N, C, H, W = x.shape
    Q = dy.shape[3]
    Hp = H + 2 * pad
    T = N * Hp * Q
    copies = np.empty((3 * C, T + 2 * Q), x.dtype)  # the last 2*Q: taps past the end
    _shifted_copies(np.ascontiguousarray(x), pad, Hp, copies)
    dw = _dw_against(copies, 3, dy, Hp, Q, 0, Q)  # dw[k, c, s, r]
    return np.ascontiguousarray(dw.transpose(0, 1, 3, 2))


@loops(cache=True)
def _shifted_copies(x, pad, Hp, out):
    """x (N, C, H, W), out (3*C, L) with L >= N*Hp*Q, Q = W + 2*pad - 2 (the output's
    width): row 3*c + s holds x_padded[n, c, i, q + s] at (n*Hp + i)*Q + q, 0 elsewhere
    (padding, and past N*Hp*Q). A row a thread's share."""
    N, C, H, W = x.shape
    Q = W + 2 * pad - 2
    for cs in prange(out.shape[0]):
        c, s = cs // 3, cs % 3
        row = out[cs]
        row[:] = 0
        q0, q1 = max(0, pad - s), min(Q, W + pad - s)  # [q0, q1): columns q that hold x,
        for n in range(N):                             # x[..., q + s - pad]
            for i in range(H):  # row i of x[n, c] at row i + pad of image n's grid
                start = (n * Hp + i + pad) * Q
                into, src = row[start + q0:start + q1], x[n, c, i, q0 + s - pad:q1 + s - pad]
                for j in range(q1 - q0):  # (slices from index 0: a vectorised copy)
                    into[j] = src[j]


@loops(fastmath={"reassoc", "contract"}, cache=True)
def _dw3x3_taps(rows, copies, grid, g_step, t_step, dw):
    """rows (C*copies, T + 2*g_step + 2*t_step), grid (K4, T), dw (K4, C, 3, 3):
    dw[k, c, g, t] = sum over j in [0, T) of grid[k, j] * rows[c*copies + g*(copies > 1),
    j + g*g_step + t*t_step]. On the padded grid (copies 1, g_step Wp, t_step 1) that is
    dw[k, c, r, s]; on the column copies (copies 3, g_step 0, t_step Q), dw[k, c, s, r].
    12 running sums at a time (4 output channels x 3 taps t): the loop over j reads 4 + 3
    runs for 12 multiply-adds, vectorised by LLVM (the sums may be reordered: fastmath
    reassoc)."""
    C = rows.shape[0] // copies
    K4, T = grid.shape
    g_row = 1 if copies > 1 else 0  # rows a step in g moves on
    for block in prange(K4 // BLOCK_K):  # output channels k .. k+3, a thread's share
        k = block * BLOCK_K
        d0, d1, d2, d3 = grid[k], grid[k + 1], grid[k + 2], grid[k + 3]
        for c in range(C):
            for g in range(3):
                o, u = g * g_step, rows[c * copies + g * g_row]
                x0s = u[o:o + T]
                x1s = u[o + t_step:o + t_step + T]
                x2s = u[o + 2 * t_step:o + 2 * t_step + T]
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
                dw[k, c, g, 0], dw[k, c, g, 1], dw[k, c, g, 2] = s00, s01, s02
                dw[k + 1, c, g, 0], dw[k + 1, c, g, 1], dw[k + 1, c, g, 2] = s10, s11, s12
                dw[k + 2, c, g, 0], dw[k + 2, c, g, 1], dw[k + 2, c, g, 2] = s20, s21, s22
                dw[k + 3, c, g, 0], dw[k + 3, c, g, 1], dw[k + 3, c, g, 2] = s30, s31, s32


def padded_nhwc(x, pad):
    """x (N, C, H, W) zero-padded by pad on each side, in NHWC: (N, H + 2*pad, W + 2*pad,
    C), so that the S*C values of a filter row at an output pixel lie side by side (the
    NHWC forwards here and in outer3x3.py, and fast.py's "nhwc" unrolling)."""
    N, C, H, W = x.shape
    padded = np.zeros((N, H + 2 * pad, W + 2 * pad, C), x.dtype)
    padded[:, pad:pad + H, pad:pad + W] = x.transpose(0, 2, 3, 1)
    return padded


def conv3x3_direct_nhwc(x, w, b, pad):
    """forward_ref(x, w, b, 1, pad) for w (K, C, 3, 3), through _conv3x3_dots: x padded
    in NHWC, w as (K, 3*3*C) in (r, s, c) order."""
    N, C, H, W = x.shape
    K = w.shape[0]
    P, Q = H + 2 * pad - 2, W + 2 * pad - 2
    padded = padded_nhwc(x, pad)
    taps = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(K, 9 * C))
    y = np.empty((N, K, P, Q), x.dtype)
    _conv3x3_dots(padded.reshape(N, -1), taps, b.astype(x.dtype), Q, y.reshape(N, K, P * Q))
    return y


@loops(fastmath={"reassoc", "contract"}, cache=True)
def _conv3x3_dots(padded, taps, bias, Q, out):
    """padded (N, Hp*Wp*C), each image's padded NHWC x flat; taps (K, 9*C); bias (K,);
    out (N, K, P*Q): out[n, k, p*Q + q] = bias[k] + sum over r of the dot product of
    filter row r's taps[k, r*3*C:(r+1)*3*C] with the run of 3*C values at
    padded[n, ((p + r)*Wp + q)*C:...]. Output pixels m = (n, p, q) flat, 4 at a time, by 4
    output channels; where M or K is not a multiple of 4 the last block repeats the last
    pixel or channel (and stores the same sum twice)."""
    N = padded.shape[0]
    K, SC = taps.shape[0], taps.shape[1] // 3  # SC = 3*C, a filter row's taps
    C = SC // 3
    PQ = out.shape[2]
    row, two = (Q + 2) * C, 2 * (Q + 2) * C  # one and two padded rows of x (Wp pixels)
    M = N * PQ
    for block in prange((M + 3) // 4):  # output pixels i .. i+3, a thread's share
        i = 4 * block
        m0, m1, m2, m3 = i, min(i + 1, M - 1), min(i + 2, M - 1), min(i + 3, M - 1)
        n0, n1, n2, n3 = m0 // PQ, m1 // PQ, m2 // PQ, m3 // PQ
        j0, j1, j2, j3 = m0 % PQ, m1 % PQ, m2 % PQ, m3 % PQ  # p*Q + q
        # pixel (p, q)'s window starts at padded pixel (p, q): ((p*Wp + q)*C) in its image
        o0 = (j0 // Q * (Q + 2) + j0 % Q) * C
        o1 = (j1 // Q * (Q + 2) + j1 % Q) * C
        o2 = (j2 // Q * (Q + 2) + j2 % Q) * C
        o3 = (j3 // Q * (Q + 2) + j3 % Q) * C
        x0, x1, x2, x3 = padded[n0], padded[n1], padded[n2], padded[n3]
        # aXr: pixel X's filter row r, a run of SC values (slices: vectorised loads)
        a00, a01, a02 = (x0[o0:o0 + SC], x0[o0 + row:o0 + row + SC],
                          x0[o0 + two:o0 + two + SC])
        a10, a11, a12 = (x1[o1:o1 + SC], x1[o1 + row:o1 + row + SC],
                          x1[o1 + two:o1 + two + SC])
        a20, a21, a22 = (x2[o2:o2 + SC], x2[o2 + row:o2 + row + SC],
                          x2[o2 + two:o2 + two + SC])
        a30, a31, a32 = (x3[o3:o3 + SC], x3[o3 + row:o3 + row + SC],
                          x3[o3 + two:o3 + two + SC])
        for k in range(0, K, 4):  # [0, K): output channels k .. k+3
            k1, k2, k3 = min(k + 1, K - 1), min(k + 2, K - 1), min(k + 3, K - 1)
            w0, w1, w2, w3 = taps[k], taps[k1], taps[k2], taps[k3]
            b00, b01, b02 = w0[:SC], w0[SC:2 * SC], w0[2 * SC:]  # bYr: channel Y's row r
            b10, b11, b12 = w1[:SC], w1[SC:2 * SC], w1[2 * SC:]
            b20, b21, b22 = w2[:SC], w2[SC:2 * SC], w2[2 * SC:]
            b30, b31, b32 = w3[:SC], w3[SC:2 * SC], w3[2 * SC:]
            s00 = s01 = s02 = s03 = float32(0)  # sXY: pixel X, channel Y
            s10 = s11 = s12 = s13 = float32(0)
            s20 = s21 = s22 = s23 = float32(0)
            s30 = s31 = s32 = s33 = float32(0)
            for t in range(SC):  # [0, 3*C): the three filter rows side by side
                p0, q0, r0 = a00[t], a01[t], a02[t]
                p1, q1, r1 = a10[t], a11[t], a12[t]
                p2, q2, r2 = a20[t], a21[t], a22[t]
                p3, q3, r3 = a30[t], a31[t], a32[t]
                u0, v0, z0 = b00[t], b01[t], b02[t]
                u1, v1, z1 = b10[t], b11[t], b12[t]
                u2, v2, z2 = b20[t], b21[t], b22[t]
                u3, v3, z3 = b30[t], b31[t], b32[t]
                s00 += p0 * u0 + q0 * v0 + r0 * z0
                s01 += p0 * u1 + q0 * v1 + r0 * z1
                s02 += p0 * u2 + q0 * v2 + r0 * z2
                s03 += p0 * u3 + q0 * v3 + r0 * z3
                s10 += p1 * u0 + q1 * v0 + r1 * z0
                s11 += p1 * u1 + q1 * v1 + r1 * z1
                s12 += p1 * u2 + q1 * v2 + r1 * z2
                s13 += p1 * u3 + q1 * v3 + r1 * z3
                s20 += p2 * u0 + q2 * v0 + r2 * z0
                s21 += p2 * u1 + q2 * v1 + r2 * z1
                s22 += p2 * u2 + q2 * v2 + r2 * z2
                s23 += p2 * u3 + q2 * v3 + r2 * z3
                s30 += p3 * u0 + q3 * v0 + r3 * z0
                s31 += p3 * u1 + q3 * v1 + r3 * z1
                s32 += p3 * u2 + q3 * v2 + r3 * z2
                s33 += p3 * u3 + q3 * v3 + r3 * z3
            bk, b1, b2, b3 = bias[k], bias[k1], bias[k2], bias[k3]
            out[n0, k, j0], out[n0, k1, j0], out[n0, k2, j0], out[n0, k3, j0] = (
                s00 + bk, s01 + b1, s02 + b2, s03 + b3)
            out[n1, k, j1], out[n1, k1, j1], out[n1, k2, j1], out[n1, k3, j1] = (
                s10 + bk, s11 + b1, s12 + b2, s13 + b3)
            out[n2, k, j2], out[n2, k1, j2], out[n2, k2, j2], out[n2, k3, j2] = (
                s20 + bk, s21 + b1, s22 + b2, s23 + b3)
            out[n3, k, j3], out[n3, k1, j3], out[n3, k2, j3], out[n3, k3, j3] = (
                s30 + bk, s31 + b1, s32 + b2, s33 + b3)
