"""The cpu device's 3x3 stride-1 convolution (paper Sec. 2.1) for the deep blocks, where
the channels outnumber the output columns: a block of output pixels by output channels
at a time (8 x 32 with AVX-512, 5 x 16 with AVX2), as outer products kept in registers.

direct3x3.py's NHWC forward (_conv3x3_dots) computes each output as a dot product: 16
vector sums (4 pixels x 4 channels) run along the reduction, and each ends in a
horizontal sum across its lanes. At conv3's 16 channels a dot product is 144 long,
9 vector multiply-adds of 16 floats, and those 16 horizontal sums cost about as much
again: conv3_1's forward at batch 64 took 0.36 ms on an AVX-512 CPU against PyTorch's
0.22.

The other way round, the lanes of a vector register run over output channels and the
reduction over taps t = (r, s, c) is the loop: at each tap, every pixel's input value
x[pixel, t] times the filters' row taps[t, k:k+lanes] is added into that pixel's sums -
one outer product (pixels x lanes) per tap, no horizontal sum at the end. The block is
sized to the CPU's vector registers (block()): with AVX-512 (32 registers of 16 floats),
8 pixels x 32 channels, 16 registers of sums, each tap reading 2 vectors of filters and
8 input values for 16 vector multiply-adds; with AVX2 (16 registers of 8 floats),
5 pixels x 16 channels, 10 registers of sums, leaving the rest for the filters and the
input values (8 x 32 there would need 32 registers of sums: they spill to memory).

Numba can only say "16 sums in registers" with one scalar variable per pixel and
channel (256 of them): an array would live in memory, and LLVM's loop vectorizer
vectorizes only an innermost loop. LLVM's SLP vectorizer packs each run of side-by-side
scalar sums into one vector register, so the kernel is compiled with it on
(kernels/threads.py's slp_vectorizer; Numba leaves it off by default). Writing 256 sums
out by hand would be unreadable and easy to get wrong, so a program writes them:
kernel_source() below is the kernel with its loops over pixels and channels unrolled,
and `python tools/write_kernels.py` writes it to outer3x3_8x32.py and outer3x3_5x16.py
(tests/test_cpu_fast.py checks that each file is what kernel_source() writes, and both
kernels against reference.py on any CPU).

Measured (batch 64, ms, dot products -> outer products, PyTorch 2.13's oneDNN beside;
benchmarks/RESULTS.md). AVX-512 (AMD EPYC, Zen 5), 8 x 32: one thread, conv3_1 0.36 ->
0.24 (PyTorch 0.22), conv3_2 0.53 -> 0.42 (0.39), conv4_1 0.30 -> 0.22 (0.21), conv4_2
0.44 -> 0.39 (0.37); two threads, conv3_1 0.23 -> 0.16 (0.13), conv3_2 0.38 -> 0.26
(0.22). AVX2 (AMD EPYC, Zen 3), 5 x 16, one thread: conv3_1 1.60 -> 0.92 (1.31), conv3_2
2.58 -> 1.66 (1.91), conv4_1 0.94 -> 0.58 (0.87), conv4_2 1.64 -> 1.03 (1.34); 8 x 32 on
that CPU, 1.15-1.7x slower than the dot products (conv3_1 to conv5_1, one thread).
fast.direct_forward sends convs with fewer output channels than a block's lanes to the
dot products (on AVX-512, dx of conv3_1: 16 channels, half the 32 lanes would be zeros,
0.39 ms against 0.30; on AVX2 the block has 16 lanes: 0.65 against the dots' 1.04).
"""
import importlib

import numpy as np

from kernels.conv.direct3x3 import padded_nhwc
from kernels.gemm import cpu_has_avx512

# A block: (output pixels, flat over images, rows and columns; output channels, the lanes
# of 2 vector registers), by the CPU's widest vectors (module docstring).
BLOCKS = {"avx512": (8, 32), "avx2": (5, 16)}


def block():
    """(pixels, lanes) of this CPU's block: AVX-512's, else AVX2's (on a CPU with
    narrower vectors still, the kernel is correct, and slower than the dot products)."""
    return BLOCKS["avx512" if cpu_has_avx512() else "avx2"]


def conv3x3_outer(x, w, b, pad, blocked=None):
    """forward_ref(x, w, b, 1, pad) for w (K, C, 3, 3): y (N, K, P, Q), in blocks of
    `blocked` (pixels, lanes) (this CPU's block() if None). x padded in NHWC, the filters
    as taps (3, 3*C, KL), row r's taps (s, c) by output channel, K padded with zero
    filters to whole blocks of lanes; the sums come out NHWC and are transposed to NCHW
    (0.02-0.05 ms of conv3's and conv4's 0.2-0.4 at batch 32 and 64, AVX-512)."""
    pixels, lanes = blocked or block()
    N, C, H, W = x.shape
    K = w.shape[0]
    P, Q = H + 2 * pad - 2, W + 2 * pad - 2
    KL = -(-K // lanes) * lanes
    padded = padded_nhwc(x, pad)
    taps = np.zeros((3, 3 * C, KL), x.dtype)
    taps[:, :, :K] = w.transpose(2, 3, 1, 0).reshape(3, 3 * C, K)  # [r, s*C + c, k]
    bias = np.zeros(KL, x.dtype)
    bias[:K] = b
    sums = np.empty((N, P * Q, KL), x.dtype)
    written_kernel(pixels, lanes)(padded.reshape(N, -1), taps, bias, Q, sums)
    y = np.empty((N, K, P, Q), x.dtype)
    y.reshape(N, K, P * Q)[:] = sums[:, :, :K].transpose(0, 2, 1)
    return y


def written_file(pixels, lanes):
    """The written kernel's module name for a block: outer3x3_{pixels}x{lanes}."""
    return f"outer3x3_{pixels}x{lanes}"


def written_kernel(pixels, lanes):
    """The written kernel for a block (imported here, not at the top: this file writes
    it)."""
    module = importlib.import_module(f"kernels.conv.{written_file(pixels, lanes)}")
    return module._conv3x3_outer


def _lines(statements, per_line, indent):
    """statements joined by '; ', per_line to a line (a row of the block reads as one)."""
    return [indent + "; ".join(statements[i:i + per_line])
            for i in range(0, len(statements), per_line)]


# The three parts of a written kernel that kernels/gemm_outer.py's writes alike: the
# sums s{i}_{j} (row i of the block, lane j) set from a vector, one outer product added to
# them, and their stores.

def sums_from(vector, rows, lanes, indent):
    """Lines setting every row's sums s{i}_{j} to vector[j]."""
    return [line for i in range(rows)
            for line in _lines([f"s{i}_{j} = {vector}[{j}]" for j in range(lanes)], 8, indent)]


def outer_product(rows, lanes, indent, says):
    """Lines adding one outer product to the sums: the weights f[j] into w{j}, then each
    row's input a{i}[t] times them (`says` the comment on that read, {i} its row)."""
    J = range(lanes)
    body = _lines([f"w{j} = f[{j}]" for j in J], 8, indent)
    for i in range(rows):
        body += [f"{indent}v = a{i}[t]  # " + says.format(i=i)]
        body += _lines([f"s{i}_{j} += v * w{j}" for j in J], 8, indent)
    return body


def stores(targets, lanes, indent):
    """Lines storing row i's sums into the slice targets[i], side by side (how the SLP
    vectorizer finds the vectors)."""
    return [line for i, target in enumerate(targets)
            for line in [f"{indent}y = {target}"] +
            _lines([f"y[{j}] = s{i}_{j}" for j in range(lanes)], 8, indent)]


def kernel_source(pixels, lanes):
    """The source of outer3x3_{pixels}x{lanes}.py: _conv3x3_outer for blocks of `pixels`
    output pixels by `lanes` output channels, sum s{i}_{j} for pixel i, channel k + j."""
    P = range(pixels)
    i8, i12, i16, i20 = (" " * n for n in (8, 12, 16, 20))
    head = f'''"""Written by tools/write_kernels.py from kernels/conv/outer3x3.py's kernel_source(),
which says why: edit that, not this. {pixels} output pixels x {lanes} output channels a block."""
from numba import prange

from kernels.threads import loops


@loops(fastmath={{"contract"}}, cache=True, slp=True)
def _conv3x3_outer(padded, taps, bias, Q, out):
    """padded (N, Hp*Wp*C), each image's padded NHWC x flat; taps (3, 3*C, KL), taps[r,
    s*C + c, k] = w[k, c, r, s], KL the output channels in whole blocks of {lanes} (zero
    filters past K); bias (KL,); out (N, P*Q, KL): out[n, p*Q + q, k] =
    bias[k] + sum over r of x's run of 3*C values at padded pixel (p + r, q) times
    taps[r, :, k]. Output pixels m = (n, p, q) flat, {pixels} at a time (where N*P*Q is not a
    multiple of {pixels} the last block repeats the last pixel, storing the same sums again),
    by {lanes} output channels; s{{i}}_{{j}} is pixel i's sum for channel k + j."""
    N = padded.shape[0]
    SC, KL = taps.shape[1], taps.shape[2]  # SC = 3*C: a filter row's taps (s, c)
    C = SC // 3
    PQ = out.shape[1]
    M = N * PQ
    row = (Q + 2) * C  # one padded row of x: Q + 2 pixels of C channels
    for block in prange((M + {pixels - 1}) // {pixels}):  # pixels {pixels}*block .. +{pixels - 1}: a thread's share
'''
    body = []
    for i in P:  # pixel i: image n_i, x_i its padded x, o_i its window's top left
        body += [f"{i8}m{i} = min({pixels} * block + {i}, M - 1)",
                 f"{i8}n{i}, j{i} = m{i} // PQ, m{i} % PQ",
                 f"{i8}x{i} = padded[n{i}]",
                 f"{i8}o{i} = (j{i} // Q * (Q + 2) + j{i} % Q) * C"]
    body[:4] = [body[0] + "  # [0, M)", body[1] + "  # image, p*Q + q", body[2],
                body[3] + "  # the window's top left: padded pixel (p, q)"]
    body += [f"{i8}for k in range(0, KL, {lanes}):  # output channels k .. k+{lanes - 1}",
             f"{i12}b = bias[k:k + {lanes}]"]
    body += sums_from("b", pixels, lanes, i12)  # every sum starts at its channel's bias
    body += [f"{i12}for r in range(3):  # filter row r: a run of 3*C taps (s, c)",
             f"{i16}tr = taps[r]"]
    body += [f"{i16}a{i} = x{i}[o{i} + r * row:o{i} + r * row + SC]" for i in P]
    body += [f"{i16}for t in range(SC):  # [0, 3*C): one outer product a tap",
             f"{i20}f = tr[t, k:k + {lanes}]  # the tap's weights for the {lanes} channels"]
    body += outer_product(pixels, lanes, i20, "pixel {i}'s input at the tap")
    body += stores([f"out[n{i}, j{i}, k:k + {lanes}]" for i in P], lanes, i12)
    return head + "\n".join(body) + "\n"
