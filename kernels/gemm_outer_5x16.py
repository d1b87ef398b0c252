"""Written by tools/write_kernels.py from kernels/gemm_outer.py's kernel_source(),
which says why: edit that, not this. 5 rows x 16 columns a block."""
import numpy as np
from numba import float32, prange

from kernels.threads import loops


@loops(fastmath={"contract"}, cache=True, slp=True)
def _matmul_outer(a, b, bias, out):
    """a (M, T), b (KL, T), bias (KL,), out (M, KL) float32, KL a multiple of 16:
    out[m, k] = bias[k] + sum over t of a[m, t] * b[k, t], added in the order of t.
    A strip of 16 columns at a time: b's 16 rows transposed into bt (T, 16),
    then the rows of a 5 at a time (where M is not a multiple of 5 the last block
    repeats the last row, storing the same sums again); s{i}_{j} is row i's sum for
    column k + j."""
    M, T = a.shape
    KL = b.shape[0]
    for strip in prange(KL // 16):  # columns 16*strip .. +15: a thread's share
        k = 16 * strip
        bt = np.empty((T, 16), float32)  # bt[t, j] = b[k + j, t]: the strip transposed
        for t in range(T):  # [0, T)
            for j in range(16):  # [0, 16)
                bt[t, j] = b[k + j, t]
        bb = bias[k:k + 16]
        for block in range((M + 4) // 5):  # rows 5*block .. +4
            m0 = min(5 * block + 0, M - 1)  # [0, M)
            a0 = a[m0]
            m1 = min(5 * block + 1, M - 1)
            a1 = a[m1]
            m2 = min(5 * block + 2, M - 1)
            a2 = a[m2]
            m3 = min(5 * block + 3, M - 1)
            a3 = a[m3]
            m4 = min(5 * block + 4, M - 1)
            a4 = a[m4]
            s0_0 = bb[0]; s0_1 = bb[1]; s0_2 = bb[2]; s0_3 = bb[3]; s0_4 = bb[4]; s0_5 = bb[5]; s0_6 = bb[6]; s0_7 = bb[7]
            s0_8 = bb[8]; s0_9 = bb[9]; s0_10 = bb[10]; s0_11 = bb[11]; s0_12 = bb[12]; s0_13 = bb[13]; s0_14 = bb[14]; s0_15 = bb[15]
            s1_0 = bb[0]; s1_1 = bb[1]; s1_2 = bb[2]; s1_3 = bb[3]; s1_4 = bb[4]; s1_5 = bb[5]; s1_6 = bb[6]; s1_7 = bb[7]
            s1_8 = bb[8]; s1_9 = bb[9]; s1_10 = bb[10]; s1_11 = bb[11]; s1_12 = bb[12]; s1_13 = bb[13]; s1_14 = bb[14]; s1_15 = bb[15]
            s2_0 = bb[0]; s2_1 = bb[1]; s2_2 = bb[2]; s2_3 = bb[3]; s2_4 = bb[4]; s2_5 = bb[5]; s2_6 = bb[6]; s2_7 = bb[7]
            s2_8 = bb[8]; s2_9 = bb[9]; s2_10 = bb[10]; s2_11 = bb[11]; s2_12 = bb[12]; s2_13 = bb[13]; s2_14 = bb[14]; s2_15 = bb[15]
            s3_0 = bb[0]; s3_1 = bb[1]; s3_2 = bb[2]; s3_3 = bb[3]; s3_4 = bb[4]; s3_5 = bb[5]; s3_6 = bb[6]; s3_7 = bb[7]
            s3_8 = bb[8]; s3_9 = bb[9]; s3_10 = bb[10]; s3_11 = bb[11]; s3_12 = bb[12]; s3_13 = bb[13]; s3_14 = bb[14]; s3_15 = bb[15]
            s4_0 = bb[0]; s4_1 = bb[1]; s4_2 = bb[2]; s4_3 = bb[3]; s4_4 = bb[4]; s4_5 = bb[5]; s4_6 = bb[6]; s4_7 = bb[7]
            s4_8 = bb[8]; s4_9 = bb[9]; s4_10 = bb[10]; s4_11 = bb[11]; s4_12 = bb[12]; s4_13 = bb[13]; s4_14 = bb[14]; s4_15 = bb[15]
            for t in range(T):  # [0, T): one outer product a term
                f = bt[t]  # term t's weights for the 16 columns
                w0 = f[0]; w1 = f[1]; w2 = f[2]; w3 = f[3]; w4 = f[4]; w5 = f[5]; w6 = f[6]; w7 = f[7]
                w8 = f[8]; w9 = f[9]; w10 = f[10]; w11 = f[11]; w12 = f[12]; w13 = f[13]; w14 = f[14]; w15 = f[15]
                v = a0[t]  # row 0's input at term t
                s0_0 += v * w0; s0_1 += v * w1; s0_2 += v * w2; s0_3 += v * w3; s0_4 += v * w4; s0_5 += v * w5; s0_6 += v * w6; s0_7 += v * w7
                s0_8 += v * w8; s0_9 += v * w9; s0_10 += v * w10; s0_11 += v * w11; s0_12 += v * w12; s0_13 += v * w13; s0_14 += v * w14; s0_15 += v * w15
                v = a1[t]  # row 1's input at term t
                s1_0 += v * w0; s1_1 += v * w1; s1_2 += v * w2; s1_3 += v * w3; s1_4 += v * w4; s1_5 += v * w5; s1_6 += v * w6; s1_7 += v * w7
                s1_8 += v * w8; s1_9 += v * w9; s1_10 += v * w10; s1_11 += v * w11; s1_12 += v * w12; s1_13 += v * w13; s1_14 += v * w14; s1_15 += v * w15
                v = a2[t]  # row 2's input at term t
                s2_0 += v * w0; s2_1 += v * w1; s2_2 += v * w2; s2_3 += v * w3; s2_4 += v * w4; s2_5 += v * w5; s2_6 += v * w6; s2_7 += v * w7
                s2_8 += v * w8; s2_9 += v * w9; s2_10 += v * w10; s2_11 += v * w11; s2_12 += v * w12; s2_13 += v * w13; s2_14 += v * w14; s2_15 += v * w15
                v = a3[t]  # row 3's input at term t
                s3_0 += v * w0; s3_1 += v * w1; s3_2 += v * w2; s3_3 += v * w3; s3_4 += v * w4; s3_5 += v * w5; s3_6 += v * w6; s3_7 += v * w7
                s3_8 += v * w8; s3_9 += v * w9; s3_10 += v * w10; s3_11 += v * w11; s3_12 += v * w12; s3_13 += v * w13; s3_14 += v * w14; s3_15 += v * w15
                v = a4[t]  # row 4's input at term t
                s4_0 += v * w0; s4_1 += v * w1; s4_2 += v * w2; s4_3 += v * w3; s4_4 += v * w4; s4_5 += v * w5; s4_6 += v * w6; s4_7 += v * w7
                s4_8 += v * w8; s4_9 += v * w9; s4_10 += v * w10; s4_11 += v * w11; s4_12 += v * w12; s4_13 += v * w13; s4_14 += v * w14; s4_15 += v * w15
            y = out[m0, k:k + 16]
            y[0] = s0_0; y[1] = s0_1; y[2] = s0_2; y[3] = s0_3; y[4] = s0_4; y[5] = s0_5; y[6] = s0_6; y[7] = s0_7
            y[8] = s0_8; y[9] = s0_9; y[10] = s0_10; y[11] = s0_11; y[12] = s0_12; y[13] = s0_13; y[14] = s0_14; y[15] = s0_15
            y = out[m1, k:k + 16]
            y[0] = s1_0; y[1] = s1_1; y[2] = s1_2; y[3] = s1_3; y[4] = s1_4; y[5] = s1_5; y[6] = s1_6; y[7] = s1_7
            y[8] = s1_8; y[9] = s1_9; y[10] = s1_10; y[11] = s1_11; y[12] = s1_12; y[13] = s1_13; y[14] = s1_14; y[15] = s1_15
            y = out[m2, k:k + 16]
            y[0] = s2_0; y[1] = s2_1; y[2] = s2_2; y[3] = s2_3; y[4] = s2_4; y[5] = s2_5; y[6] = s2_6; y[7] = s2_7
            y[8] = s2_8; y[9] = s2_9; y[10] = s2_10; y[11] = s2_11; y[12] = s2_12; y[13] = s2_13; y[14] = s2_14; y[15] = s2_15
            y = out[m3, k:k + 16]
            y[0] = s3_0; y[1] = s3_1; y[2] = s3_2; y[3] = s3_3; y[4] = s3_4; y[5] = s3_5; y[6] = s3_6; y[7] = s3_7
            y[8] = s3_8; y[9] = s3_9; y[10] = s3_10; y[11] = s3_11; y[12] = s3_12; y[13] = s3_13; y[14] = s3_14; y[15] = s3_15
            y = out[m4, k:k + 16]
            y[0] = s4_0; y[1] = s4_1; y[2] = s4_2; y[3] = s4_3; y[4] = s4_4; y[5] = s4_5; y[6] = s4_6; y[7] = s4_7
            y[8] = s4_8; y[9] = s4_9; y[10] = s4_10; y[11] = s4_11; y[12] = s4_12; y[13] = s4_13; y[14] = s4_14; y[15] = s4_15
