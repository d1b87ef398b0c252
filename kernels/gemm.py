"""A matrix product for the cpu device's convolutions: out = a · bᵀ, written as 4 x 4 blocks
of dot products and compiled by Numba for this CPU's widest vectors.

    a (M, T), b (K, T), both row-major: out[i, k] = sum over t of a[i, t] * b[k, t]

Why a second GEMM beside NumPy's BLAS: OpenBLAS runs the kernels of the CPU it finds,
unless OPENBLAS_CORETYPE tells it otherwise; some machines set that (this project's build
machine sets OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU), and OpenBLAS then multiplies with
256-bit AVX2 kernels while Numba compiles for the 512-bit registers the CPU has. At the
deep conv layers' shapes (the "nhwc" unrolling of kernels/conv/fast.py: 1,024-4,096 rows,
T = 144-576, K = 32-64) this loop then runs at 140-180 GFLOP/s against OpenBLAS's Haswell
kernels' 95-117, and the cpu preset's whole training step was 6-13% faster. (VGG's 3x3
convs have since gone to kernels/conv/direct3x3.py, which unrolls nothing, and its 1x1
convs to one BLAS GEMM an image: this loop now serves the convs fast.py still unrolls,
the other filter sizes and strides of the compendium's nets, and on more than one thread
the fully connected layers' forward where kernels/gemm_outer.py's outer products do not,
kernels/linear.py.) With kernels
as wide as the CPU's, OpenBLAS is 10-35% faster than this loop there, but not on products
that are a few very long dot products (few_long_dots), which BLAS blocks poorly at any
width. matmul_abt uses the loop only where it measured faster (use_loop), so each machine
gets the faster of the two. On more threads (kernels/threads.py) the loop shares its
blocks of rows among them, while NumPy's BLAS runs one thread a call.

How the loop is fast: each block keeps 16 running sums, one per (row of a, row of b) pair;
the compiler turns the loop over t into vector loads of 4 rows of a and 4 of b (8 loads)
feeding 16 fused multiply-adds, so loads no longer limit it, and each sum stays in a
register for the whole of t. That the sums are re-associated (fastmath "reassoc": each
is split into per-lane partial sums) changes only rounding, as any BLAS's blocking does.
"""
import functools
import os

import numpy as np
from numba import float32, prange

from kernels.threads import loops

BLOCK_ROWS = 4  # rows of a and of b a block reads: 4 x 4 sums in registers


@loops(fastmath={"reassoc", "contract"}, cache=True)
def _dot_blocks(a, b, out):
    """a (M, T), b (K, T), out (M4, K4) float32, M4 and K4 being M and K rounded up to
    multiples of 4. One block of out (4 rows x 4 columns) at a time; where M or K is not a
    multiple of 4, the last block repeats a's or b's last row (out's extra rows and
    columns are the caller's scratch)."""
    M, T = a.shape
    K = b.shape[0]
    for block in prange((M + 3) // 4):  # rows i .. i+3 of a, a thread's share
        i = 4 * block
        a0 = a[i]
        a1 = a[min(i + 1, M - 1)]
        a2 = a[min(i + 2, M - 1)]
        a3 = a[min(i + 3, M - 1)]
        o0, o1, o2, o3 = out[i], out[i + 1], out[i + 2], out[i + 3]
        for k in range(0, K, 4):  # [0, K) in steps of 4
            b0 = b[k]
            b1 = b[min(k + 1, K - 1)]
            b2 = b[min(k + 2, K - 1)]
            b3 = b[min(k + 3, K - 1)]
            s00 = s01 = s02 = s03 = float32(0)
            s10 = s11 = s12 = s13 = float32(0)
            s20 = s21 = s22 = s23 = float32(0)
            s30 = s31 = s32 = s33 = float32(0)
            for t in range(T):  # [0, T): the reduction
                x0, x1, x2, x3 = a0[t], a1[t], a2[t], a3[t]
                y0, y1, y2, y3 = b0[t], b1[t], b2[t], b3[t]
                s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3  # noqa: E702
                s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3  # noqa: E702
                s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3  # noqa: E702
                s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3  # noqa: E702
            o0[k], o0[k + 1], o0[k + 2], o0[k + 3] = s00, s01, s02, s03
            o1[k], o1[k + 1], o1[k + 2], o1[k + 3] = s10, s11, s12, s13
            o2[k], o2[k + 1], o2[k + 2], o2[k + 3] = s20, s21, s22, s23
            o3[k], o3[k + 1], o3[k + 2], o3[k + 3] = s30, s31, s32, s33


def matmul_abt_loop(a, b):
    """a · bᵀ by _dot_blocks: a (M, T), b (K, T) float32 -> (M, K)."""
    M, K = a.shape[0], b.shape[0]
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    M4, K4 = -(-M // BLOCK_ROWS) * BLOCK_ROWS, -(-K // BLOCK_ROWS) * BLOCK_ROWS
    out = np.empty((M4, K4), a.dtype)
    if M and K:
        _dot_blocks(a, b, out)
    return out[:M, :K]


# OpenBLAS's names for the kernels it runs with 512-bit vectors (threadpoolctl reports the
# one in use as "architecture"); every other OpenBLAS core is 256 bits or narrower.
OPENBLAS_AVX512 = ("skylakex", "cooperlake", "sapphirerapids")


@functools.cache
def cpu_has_avx512():
    """Has this CPU AVX-512 (32 vector registers of 16 floats; else AVX2's 16 of 8, or
    less), as LLVM, which compiles Numba's loops, reads it?"""
    import llvmlite.binding as llvm
    return bool(llvm.get_host_cpu_features().get("avx512f", False))


@functools.cache
def machine():
    """(blas_is_narrower, cpu_has_avx512), read once: does NumPy's BLAS multiply with
    narrower vectors than Numba compiles for here (OpenBLAS running non-AVX-512 kernels on
    a CPU with AVX-512), and has the CPU AVX-512 at all? MINIVGG_CPU_GEMM=blas makes both
    False (BLAS throughout), =loop both True (the loop wherever use_loop allows it)."""
    forced = os.environ.get("MINIVGG_CPU_GEMM", "").lower()
    if forced in ("blas", "loop"):
        return (forced == "loop",) * 2
    import threadpoolctl
    if not cpu_has_avx512():
        return False, False
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    return bool(blas) and all(i["internal_api"] == "openblas" and
                              str(i.get("architecture", "")).lower() not in OPENBLAS_AVX512
                              for i in blas), True


def long_dots(T):
    """Are dot products of T terms long enough for the loop? Each block ends by adding up
    its 16 registers' lanes and storing 16 sums, about as long as 64 terms take, and terms
    past the last whole vector of 16 go one at a time: against OpenBLAS's Haswell kernels
    the loop is 0.67-0.8x their time from T = 96 in whole vectors, 1.2-2.7x at T = 16-48
    (the 1x1 convs' 32 channels) and 1.1-1.5x at T = 72 (measured at K = 16-64)."""
    return T >= 96 and (T % 16 == 0 or T >= 1024)


def few_long_dots(M, K, T):
    """A few dot products over long rows: the "rows" unrolling's dw, (S*K, pixels) ·
    (C*R, pixels)ᵀ, at most 48 x 24 of them over 4,096 pixels or more. BLAS blocks such a
    product poorly whatever its vectors: with OpenBLAS's own AVX-512 kernels the loop took
    0.41-0.78x their time at 24 x 9, 24 x 24 and 48 x 24 (the cpu preset's conv1_1, conv1_2
    and conv2_1, measured before direct3x3.py took them), the same at 48 x 48, and
    1.2-1.35x from 96 x 48 on."""
    return M * K <= 48 * 24 and T >= 4096


def use_loop(M, K, T):
    """Does a float32 a·bᵀ of (M, T) and (K, T) go through the loop here? Where BLAS is
    narrower, for long dot products; on any AVX-512 CPU, for a few very long ones."""
    narrower, avx512 = machine()
    return (narrower and long_dots(T)) or (avx512 and few_long_dots(M, K, T))


def matmul_abt(a, b):
    """a (M, T) · b (K, T)ᵀ -> (M, K): by _dot_blocks for float32 where use_loop says so,
    else by NumPy's BLAS."""
    if a.dtype == b.dtype == np.float32 and use_loop(a.shape[0], b.shape[0], a.shape[1]):
        return matmul_abt_loop(a, b)
    return a @ b.T
