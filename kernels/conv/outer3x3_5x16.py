"""Written by tools/write_kernels.py from kernels/conv/outer3x3.py's kernel_source(),
which says why: edit that, not this. 5 output pixels x 16 output channels a block."""
from numba import prange

from kernels.threads import loops


@loops(fastmath={"contract"}, cache=True, slp=True)
def _conv3x3_outer(padded, taps, bias, Q, out):
    """padded (N, Hp*Wp*C), each image's padded NHWC x flat; taps (3, 3*C, KL), taps[r,
    s*C + c, k] = w[k, c, r, s], KL the output channels in whole blocks of 16 (zero
    filters past K); bias (KL,); out (N, P*Q, KL): out[n, p*Q + q, k] =
    bias[k] + sum over r of x's run of 3*C values at padded pixel (p + r, q) times
    taps[r, :, k]. Output pixels m = (n, p, q) flat, 5 at a time (where N*P*Q is not a
    multiple of 5 the last block repeats the last pixel, storing the same sums again),
    by 16 output channels; s{i}_{j} is pixel i's sum for channel k + j."""
    N = padded.shape[0]
    SC, KL = taps.shape[1], taps.shape[2]  # SC = 3*C: a filter row's taps (s, c)
    C = SC // 3
    PQ = out.shape[1]
    M = N * PQ
    row = (Q + 2) * C  # one padded row of x: Q + 2 pixels of C channels
    for block in prange((M + 4) // 5):  # pixels 5*block .. +4: a thread's share
        m0 = min(5 * block + 0, M - 1)  # [0, M)
        n0, j0 = m0 // PQ, m0 % PQ  # image, p*Q + q
        x0 = padded[n0]
        o0 = (j0 // Q * (Q + 2) + j0 % Q) * C  # the window's top left: padded pixel (p, q)
        m1 = min(5 * block + 1, M - 1)
        n1, j1 = m1 // PQ, m1 % PQ
        x1 = padded[n1]
        o1 = (j1 // Q * (Q + 2) + j1 % Q) * C
        m2 = min(5 * block + 2, M - 1)
        n2, j2 = m2 // PQ, m2 % PQ
        x2 = padded[n2]
        o2 = (j2 // Q * (Q + 2) + j2 % Q) * C
        m3 = min(5 * block + 3, M - 1)
        n3, j3 = m3 // PQ, m3 % PQ
        x3 = padded[n3]
        o3 = (j3 // Q * (Q + 2) + j3 % Q) * C
        m4 = min(5 * block + 4, M - 1)
        n4, j4 = m4 // PQ, m4 % PQ
        x4 = padded[n4]
        o4 = (j4 // Q * (Q + 2) + j4 % Q) * C
        for k in range(0, KL, 16):  # output channels k .. k+15
            b = bias[k:k + 16]
            s0_0 = b[0]; s0_1 = b[1]; s0_2 = b[2]; s0_3 = b[3]; s0_4 = b[4]; s0_5 = b[5]; s0_6 = b[6]; s0_7 = b[7]
            s0_8 = b[8]; s0_9 = b[9]; s0_10 = b[10]; s0_11 = b[11]; s0_12 = b[12]; s0_13 = b[13]; s0_14 = b[14]; s0_15 = b[15]
            s1_0 = b[0]; s1_1 = b[1]; s1_2 = b[2]; s1_3 = b[3]; s1_4 = b[4]; s1_5 = b[5]; s1_6 = b[6]; s1_7 = b[7]
            s1_8 = b[8]; s1_9 = b[9]; s1_10 = b[10]; s1_11 = b[11]; s1_12 = b[12]; s1_13 = b[13]; s1_14 = b[14]; s1_15 = b[15]
            s2_0 = b[0]; s2_1 = b[1]; s2_2 = b[2]; s2_3 = b[3]; s2_4 = b[4]; s2_5 = b[5]; s2_6 = b[6]; s2_7 = b[7]
            s2_8 = b[8]; s2_9 = b[9]; s2_10 = b[10]; s2_11 = b[11]; s2_12 = b[12]; s2_13 = b[13]; s2_14 = b[14]; s2_15 = b[15]
            s3_0 = b[0]; s3_1 = b[1]; s3_2 = b[2]; s3_3 = b[3]; s3_4 = b[4]; s3_5 = b[5]; s3_6 = b[6]; s3_7 = b[7]
            s3_8 = b[8]; s3_9 = b[9]; s3_10 = b[10]; s3_11 = b[11]; s3_12 = b[12]; s3_13 = b[13]; s3_14 = b[14]; s3_15 = b[15]
            s4_0 = b[0]; s4_1 = b[1]; s4_2 = b[2]; s4_3 = b[3]; s4_4 = b[4]; s4_5 = b[5]; s4_6 = b[6]; s4_7 = b[7]
            s4_8 = b[8]; s4_9 = b[9]; s4_10 = b[10]; s4_11 = b[11]; s4_12 = b[12]; s4_13 = b[13]; s4_14 = b[14]; s4_15 = b[15]
            for r in range(3):  # filter row r: a run of 3*C taps (s, c)
                tr = taps[r]
                a0 = x0[o0 + r * row:o0 + r * row + SC]
                a1 = x1[o1 + r * row:o1 + r * row + SC]
                a2 = x2[o2 + r * row:o2 + r * row + SC]
                a3 = x3[o3 + r * row:o3 + r * row + SC]
                a4 = x4[o4 + r * row:o4 + r * row + SC]
                for t in range(SC):  # [0, 3*C): one outer product a tap
                    f = tr[t, k:k + 16]  # the tap's weights for the 16 channels
                    w0 = f[0]; w1 = f[1]; w2 = f[2]; w3 = f[3]; w4 = f[4]; w5 = f[5]; w6 = f[6]; w7 = f[7]
                    w8 = f[8]; w9 = f[9]; w10 = f[10]; w11 = f[11]; w12 = f[12]; w13 = f[13]; w14 = f[14]; w15 = f[15]
                    v = a0[t]  # pixel 0's input at the tap
                    s0_0 += v * w0; s0_1 += v * w1; s0_2 += v * w2; s0_3 += v * w3; s0_4 += v * w4; s0_5 += v * w5; s0_6 += v * w6; s0_7 += v * w7
                    s0_8 += v * w8; s0_9 += v * w9; s0_10 += v * w10; s0_11 += v * w11; s0_12 += v * w12; s0_13 += v * w13; s0_14 += v * w14; s0_15 += v * w15
                    v = a1[t]  # pixel 1's input at the tap
                    s1_0 += v * w0; s1_1 += v * w1; s1_2 += v * w2; s1_3 += v * w3; s1_4 += v * w4; s1_5 += v * w5; s1_6 += v * w6; s1_7 += v * w7
                    s1_8 += v * w8; s1_9 += v * w9; s1_10 += v * w10; s1_11 += v * w11; s1_12 += v * w12; s1_13 += v * w13; s1_14 += v * w14; s1_15 += v * w15
                    v = a2[t]  # pixel 2's input at the tap
                    s2_0 += v * w0; s2_1 += v * w1; s2_2 += v * w2; s2_3 += v * w3; s2_4 += v * w4; s2_5 += v * w5; s2_6 += v * w6; s2_7 += v * w7
                    s2_8 += v * w8; s2_9 += v * w9; s2_10 += v * w10; s2_11 += v * w11; s2_12 += v * w12; s2_13 += v * w13; s2_14 += v * w14; s2_15 += v * w15
                    v = a3[t]  # pixel 3's input at the tap
                    s3_0 += v * w0; s3_1 += v * w1; s3_2 += v * w2; s3_3 += v * w3; s3_4 += v * w4; s3_5 += v * w5; s3_6 += v * w6; s3_7 += v * w7
                    s3_8 += v * w8; s3_9 += v * w9; s3_10 += v * w10; s3_11 += v * w11; s3_12 += v * w12; s3_13 += v * w13; s3_14 += v * w14; s3_15 += v * w15
                    v = a4[t]  # pixel 4's input at the tap
                    s4_0 += v * w0; s4_1 += v * w1; s4_2 += v * w2; s4_3 += v * w3; s4_4 += v * w4; s4_5 += v * w5; s4_6 += v * w6; s4_7 += v * w7
                    s4_8 += v * w8; s4_9 += v * w9; s4_10 += v * w10; s4_11 += v * w11; s4_12 += v * w12; s4_13 += v * w13; s4_14 += v * w14; s4_15 += v * w15
            y = out[n0, j0, k:k + 16]
            y[0] = s0_0; y[1] = s0_1; y[2] = s0_2; y[3] = s0_3; y[4] = s0_4; y[5] = s0_5; y[6] = s0_6; y[7] = s0_7
            y[8] = s0_8; y[9] = s0_9; y[10] = s0_10; y[11] = s0_11; y[12] = s0_12; y[13] = s0_13; y[14] = s0_14; y[15] = s0_15
            y = out[n1, j1, k:k + 16]
            y[0] = s1_0; y[1] = s1_1; y[2] = s1_2; y[3] = s1_3; y[4] = s1_4; y[5] = s1_5; y[6] = s1_6; y[7] = s1_7
            y[8] = s1_8; y[9] = s1_9; y[10] = s1_10; y[11] = s1_11; y[12] = s1_12; y[13] = s1_13; y[14] = s1_14; y[15] = s1_15
            y = out[n2, j2, k:k + 16]
            y[0] = s2_0; y[1] = s2_1; y[2] = s2_2; y[3] = s2_3; y[4] = s2_4; y[5] = s2_5; y[6] = s2_6; y[7] = s2_7
            y[8] = s2_8; y[9] = s2_9; y[10] = s2_10; y[11] = s2_11; y[12] = s2_12; y[13] = s2_13; y[14] = s2_14; y[15] = s2_15
            y = out[n3, j3, k:k + 16]
            y[0] = s3_0; y[1] = s3_1; y[2] = s3_2; y[3] = s3_3; y[4] = s3_4; y[5] = s3_5; y[6] = s3_6; y[7] = s3_7
            y[8] = s3_8; y[9] = s3_9; y[10] = s3_10; y[11] = s3_11; y[12] = s3_12; y[13] = s3_13; y[14] = s3_14; y[15] = s3_15
            y = out[n4, j4, k:k + 16]
            y[0] = s4_0; y[1] = s4_1; y[2] = s4_2; y[3] = s4_3; y[4] = s4_4; y[5] = s4_5; y[6] = s4_6; y[7] = s4_7
            y[8] = s4_8; y[9] = s4_9; y[10] = s4_10; y[11] = s4_11; y[12] = s4_12; y[13] = s4_13; y[14] = s4_14; y[15] = s4_15
