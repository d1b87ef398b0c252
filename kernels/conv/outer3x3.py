"""The cpu device's 3x3 stride-1 convolution (paper Sec. 2.1) for the deep blocks, where
the channels outnumber the output columns and there are 32 output channels or more:
8 output pixels by 32 output channels at a time, as outer products kept in registers.

direct3x3.py's NHWC forward (_conv3x3_dots) computes each output as a dot product: 16
vector sums (4 pixels x 4 channels) run along the reduction, and each ends in a
horizontal sum across its 16 lanes. At conv3's 16 channels a dot product is 144 long,
9 vector multiply-adds, and those 16 horizontal sums cost about as much again: conv3_1's
forward at batch 64 took 0.36 ms here against PyTorch's 0.22.

The other way round, the lanes of a vector register run over 16 output channels and
the reduction over taps t = (r, s, c) is the loop: at each tap, every pixel's input value
x[pixel, t] times the filters' row taps[t, k:k+32] is added into that pixel's 32 sums -
one outer product (8 x 32) per tap, no horizontal sum at the end. 8 pixels x 32 channels
is 16 vector sums, all in registers (AVX-512 has 32), and each tap reads 2 vectors of
filters and 8 input values for 16 vector multiply-adds.

Numba can only say "16 sums in registers" with 256 scalar variables (one per pixel and
channel): an array would live in memory, and LLVM's loop vectorizer vectorizes only an
innermost loop. LLVM's SLP vectorizer packs each run of 16 side-by-side scalar sums into
one vector register, so the kernel is compiled with it on (kernels/threads.py's
slp_vectorizer; Numba leaves it off by default). Writing 256 sums out by hand would be
unreadable and easy to get wrong, so a program writes them: kernel_source() below is the
kernel with its loops over pixels and channels unrolled, and `python
tools/write_kernels.py` writes it to outer3x3_8x32.py (tests/test_cpu_fast.py checks that
the file is what kernel_source() writes, and the kernel against reference.py).

Measured (batch 64, ms, dot products -> outer products, PyTorch 2.13's oneDNN beside;
benchmarks/RESULTS.md): one thread, conv3_1 0.36 -> 0.24 (PyTorch 0.22), conv3_2 0.53 ->
0.42 (0.39), conv4_1 0.30 -> 0.22 (0.21), conv4_2 0.44 -> 0.39 (0.37); two threads,
conv3_1 0.23 -> 0.16 (0.13), conv3_2 0.38 -> 0.26 (0.22). With fewer than 32 output
channels (dx of conv3_1: 16) half the lanes would be zeros, and the dot products stay
(fast.direct_forward chooses).
"""
import numpy as np

from kernels.conv.direct3x3 import padded_nhwc

PIXELS = 8  # output pixels a block (flat over images, rows and columns)
LANES = 32  # output channels a block: 2 vector registers of 16 floats (AVX-512; with
# AVX2's 16 registers of 8 the block's sums would fill 32: not measured on such a CPU)


def conv3x3_outer(x, w, b, pad):
    """forward_ref(x, w, b, 1, pad) for w (K, C, 3, 3): y (N, K, P, Q). x padded in NHWC,
    the filters as taps (3, 3*C, K32), row r's taps (s, c) by output channel, K padded
    with zero filters to whole blocks of LANES; the sums come out NHWC and are transposed
    to NCHW (0.02-0.05 ms of conv3's and conv4's 0.2-0.4 at batch 32 and 64)."""
    N, C, H, W = x.shape
    K = w.shape[0]
    P, Q = H + 2 * pad - 2, W + 2 * pad - 2
    K32 = -(-K // LANES) * LANES
    padded = padded_nhwc(x, pad)
    taps = np.zeros((3, 3 * C, K32), x.dtype)
    taps[:, :, :K] = w.transpose(2, 3, 1, 0).reshape(3, 3 * C, K)  # [r, s*C + c, k]
    bias = np.zeros(K32, x.dtype)
    bias[:K] = b
    sums = np.empty((N, P * Q, K32), x.dtype)
    _conv3x3_outer_kernel()(padded.reshape(N, -1), taps, bias, Q, sums)
    y = np.empty((N, K, P, Q), x.dtype)
    y.reshape(N, K, P * Q)[:] = sums[:, :, :K].transpose(0, 2, 1)
    return y


def _conv3x3_outer_kernel():
    """The written kernel (imported here, not at the top: this file writes it)."""
    from kernels.conv.outer3x3_8x32 import _conv3x3_outer
    return _conv3x3_outer


def _lines(statements, per_line, indent):
    """statements joined by '; ', per_line to a line (a row of the block reads as one)."""
    return [indent + "; ".join(statements[i:i + per_line])
            for i in range(0, len(statements), per_line)]


def kernel_source(pixels=PIXELS, lanes=LANES):
    """The source of outer3x3_8x32.py: _conv3x3_outer for blocks of `pixels` output pixels
    by `lanes` output channels, sum s{i}_{j} for pixel i, channel k + j."""
    P, J = range(pixels), range(lanes)
    i8, i12, i16, i20 = (" " * n for n in (8, 12, 16, 20))
    head = f'''"""Written by tools/write_kernels.py from kernels/conv/outer3x3.py's kernel_source(),
which says why: edit that, not this. {pixels} output pixels x {lanes} output channels a block."""
from numba import prange

from kernels.threads import loops


@loops(fastmath={{"contract"}}, cache=True, slp=True)
def _conv3x3_outer(padded, taps, bias, Q, out):
    """padded (N, Hp*Wp*C), each image's padded NHWC x flat; taps (3, 3*C, K32), taps[r,
    s*C + c, k] = w[k, c, r, s]; bias (K32,); out (N, P*Q, K32): out[n, p*Q + q, k] =
    bias[k] + sum over r of x's run of 3*C values at padded pixel (p + r, q) times
    taps[r, :, k]. Output pixels m = (n, p, q) flat, {pixels} at a time (where N*P*Q is not a
    multiple of {pixels} the last block repeats the last pixel, storing the same sums again),
    by {lanes} output channels; s{{i}}_{{j}} is pixel i's sum for channel k + j."""
    N = padded.shape[0]
    SC, K32 = taps.shape[1], taps.shape[2]  # SC = 3*C: a filter row's taps (s, c)
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
    body += [f"{i8}for k in range(0, K32, {lanes}):  # output channels k .. k+{lanes - 1}",
             f"{i12}b = bias[k:k + {lanes}]"]
    for i in P:  # every sum starts at its channel's bias
        body += _lines([f"s{i}_{j} = b[{j}]" for j in J], 8, i12)
    body += [f"{i12}for r in range(3):  # filter row r: a run of 3*C taps (s, c)",
             f"{i16}tr = taps[r]"]
    body += [f"{i16}a{i} = x{i}[o{i} + r * row:o{i} + r * row + SC]" for i in P]
    body += [f"{i16}for t in range(SC):  # [0, 3*C): one outer product a tap",
             f"{i20}f = tr[t, k:k + {lanes}]  # the tap's weights for the {lanes} channels"]
    body += _lines([f"w{j} = f[{j}]" for j in J], 8, i20)
    for i in P:
        body += [f"{i20}v = a{i}[t]  # pixel {i}'s input at the tap"]
        body += _lines([f"s{i}_{j} += v * w{j}" for j in J], 8, i20)
    for i in P:  # (side-by-side stores: how the SLP vectorizer finds the vectors)
        body += [f"{i12}y = out[n{i}, j{i}, k:k + {lanes}]"]
        body += _lines([f"y[{j}] = s{i}_{j}" for j in J], 8, i12)
    return head + "\n".join(body) + "\n"
