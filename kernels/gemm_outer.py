"""The fully connected layers' forward on the cpu device (paper Sec. 2.1: FC-4096, FC-4096,
FC-1000; the cpu preset's are 128 wide): y = x · wᵀ + b as outer products kept in registers.

    a (M, T), b (K, T), bias (K,): out[m, k] = bias[k] + sum over t of a[m, t] * b[k, t]

Why not kernels/gemm.py's loop: it computes each output as a dot product, 16 vector sums
(4 rows x 4 columns) running along t, and each ends in a horizontal sum across its
lanes. fc6's and fc7's dot products are short (64 and 128 terms at the cpu preset), so
those 16 horizontal sums a block cost about as much as the products: fc6's forward at
batch 64 on two threads took 34-42 us against PyTorch's 25-30 (AVX2, Zen 3).

Here the lanes of a vector register run over output features k, as in
kernels/conv/outer3x3.py (whose docstring says why the sums are one scalar variable each
and why a program writes the kernel). A thread takes a strip of `lanes` output features
k .. k+lanes-1 and first transposes b's rows for them into bt (T, lanes), so that term
t's weights lie side by side (numpy's transposed copy of a whole 128 x 128 b took 20-24
us, rows 512 bytes apart; the same strip-wise loop alone, 5.7 us). Then at each t every
row's a[m, t] times bt[t] is added into that row's sums, and no horizontal sum is left at
the end. The block is outer3x3's, sized to the vector registers: 5 rows x 16 features
with AVX2, 8 x 32 with AVX-512. The sums start at the bias and add the terms in the order of
t, so out[m, k] is the float32 sum of bias[k] + a[m, 0] b[k, 0] + ... in that order
(multiply-adds fused: fastmath "contract" only).

`python tools/write_kernels.py` writes kernel_source() to gemm_outer_5x16.py and
gemm_outer_8x32.py; tests/test_cpu_fast.py checks both files are what it writes, and
tests/test_cpu_gemm.py both kernels against NumPy's product in float64 on any CPU.
"""
import functools
import importlib

import numpy as np

# outer3x3's blocks, (rows, lanes) here: the same register budget.
from kernels.conv.outer3x3 import BLOCKS, block, outer_product, stores, sums_from  # noqa: F401


def matmul_outer(a, b, bias, blocked=None):
    """a (M, T) · b (K, T)ᵀ + bias (K,) -> (M, K) float32, in blocks of `blocked` (rows,
    lanes) (this CPU's block() if None). Where K is not a multiple of the lanes, b and the
    bias are padded with zeros to whole strips (10 outputs: 16), and the padding's
    columns of out are cut off again."""
    rows, lanes = blocked or block()
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    bias = np.ascontiguousarray(bias, np.float32)
    M, T = a.shape
    K = b.shape[0]
    KL = -(-K // lanes) * lanes
    if KL != K:
        b = np.concatenate([b, np.zeros((KL - K, T), np.float32)])
        bias = np.concatenate([bias, np.zeros(KL - K, np.float32)])
    out = np.empty((M, KL), np.float32)
    if M and KL:
        written_kernel(rows, lanes)(a, b, bias, out)
    return out if KL == K else np.ascontiguousarray(out[:, :K])


def written_file(rows, lanes):
    """The written kernel's module name for a block: gemm_outer_{rows}x{lanes}."""
    return f"gemm_outer_{rows}x{lanes}"


@functools.cache
def written_kernel(rows, lanes):
    """The written kernel for a block (imported here, not at the top: this file writes it;
    cached: an import statement costs a microsecond or two a call)."""
    return importlib.import_module(f"kernels.{written_file(rows, lanes)}")._matmul_outer


def kernel_source(rows, lanes):
    """The source of gemm_outer_{rows}x{lanes}.py: _matmul_outer for strips of `lanes`
    columns of out, by blocks of `rows` rows of a; sum s{i}_{j} for row i, column k + j."""
    R = range(rows)
    i8, i12, i16 = (" " * n for n in (8, 12, 16))
    head = f'''"""Written by tools/write_kernels.py from kernels/gemm_outer.py's kernel_source(),
which says why: edit that, not this. {rows} rows x {lanes} columns a block."""
import numpy as np
from numba import float32, prange

from kernels.threads import loops


@loops(fastmath={{"contract"}}, cache=True, slp=True)
def _matmul_outer(a, b, bias, out):
    """a (M, T), b (KL, T), bias (KL,), out (M, KL) float32, KL a multiple of {lanes}:
    out[m, k] = bias[k] + sum over t of a[m, t] * b[k, t], added in the order of t.
    A strip of {lanes} columns at a time: b's {lanes} rows transposed into bt (T, {lanes}),
    then the rows of a {rows} at a time (where M is not a multiple of {rows} the last block
    repeats the last row, storing the same sums again); s{{i}}_{{j}} is row i's sum for
    column k + j."""
    M, T = a.shape
    KL = b.shape[0]
    for strip in prange(KL // {lanes}):  # columns {lanes}*strip .. +{lanes - 1}: a thread's share
        k = {lanes} * strip
        bt = np.empty((T, {lanes}), float32)  # bt[t, j] = b[k + j, t]: the strip transposed
        for t in range(T):  # [0, T)
            for j in range({lanes}):  # [0, {lanes})
                bt[t, j] = b[k + j, t]
        bb = bias[k:k + {lanes}]
        for block in range((M + {rows - 1}) // {rows}):  # rows {rows}*block .. +{rows - 1}
'''
    body = []
    for i in R:
        body += [f"{i12}m{i} = min({rows} * block + {i}, M - 1)" + ("  # [0, M)" if i == 0 else ""),
                 f"{i12}a{i} = a[m{i}]"]
    body += sums_from("bb", rows, lanes, i12)  # every sum starts at its column's bias
    body += [f"{i12}for t in range(T):  # [0, T): one outer product a term",
             f"{i16}f = bt[t]  # term t's weights for the {lanes} columns"]
    body += outer_product(rows, lanes, i16, "row {i}'s input at term t")
    body += stores([f"out[m{i}, k:k + {lanes}]" for i in R], lanes, i12)
    return head + "\n".join(body) + "\n"
