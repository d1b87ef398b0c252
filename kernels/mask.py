"""A conv weight through a connection table: LeNet-5's C3 (LeCun et al. 1998, Table I; the
compendium's LeNet-5 section), whose 16 maps each see only 3, 4 or 6 of S2's 6 maps.

The conv keeps a full weight w (K, C, R, S) and a table (K, C) of 0s and 1s (table[k, c]
= 1: output map k sees input map c); what it convolves with is the masked weight

    wm[k,c,r,s] = w[k,c,r,s] * table[k,c]          (forward)
    dw[k,c,r,s] = dwm[k,c,r,s] * table[k,c]        (backward: the mask in the gradient too)

so a weight the table leaves out gets no gradient and never moves (its decay term, wd * w,
is 0 too: it starts at 0). Counting parameters counts the table's ones times R*S: C3 has
60 connections x 25 taps + 16 biases = 1,516, not 16 x 6 x 25 + 16 = 2,416.

The same kernel serves both directions: out = a * table, broadcast over the R*S taps.
Shapes: a, out (K, C, R, S), table (K, C); the kernel sees them flat, (K*C*R*S,) and
(K*C,).
"""
import numpy as np
from numba import cuda, int32

from kernels.common import F1, blocks_1d, check, check_size, launch


# ----------------------------------------------------------------------------------------
# NumPy reference

def forward_ref(w, table):
    """wm = w * table, the table broadcast over each filter's taps."""
    return (w * table[:, :, None, None]).astype(w.dtype, copy=False)


def backward_ref(dwm, table):
    """dw = dL/dwm * table: the derivative of w * table with respect to w is the table."""
    return (dwm * table[:, :, None, None]).astype(dwm.dtype, copy=False)


# ----------------------------------------------------------------------------------------
# CUDA kernel

@cuda.jit
def mask_multiply_v1(a, table, out, taps):
    """a, out (T,) = (K*C*R*S,) flat, table (K*C,), taps = R*S. Grid-stride loop, one
    element per thread per pass: out[i] = a[i] * table[i // taps]. No shared memory.
    Overwrites out."""
    T = int32(a.shape[0])
    i = int32(cuda.grid(1))  # [0, gridsize)
    stride = int32(cuda.gridsize(1))
    while i < T:
        out[i] = a[i] * table[i // taps]  # i // taps = (k, c), in [0, K*C)
        i += stride


PTX_SIGNATURES = [(mask_multiply_v1, (F1, F1, F1, int32))]


# ----------------------------------------------------------------------------------------
# Launchers

THREADS = 256
MAX_BLOCKS = 65536


def _multiply(name, a, table, out, threads, max_blocks):
    check(f"mask {name}", a, ndim=4)
    check("mask table", table, shape=a.shape[:2])
    check(f"mask {name} out", out, shape=a.shape)
    check_size(f"mask {name}", a)
    T = a.size
    if T:
        blocks = blocks_1d("mask", T, threads, max_blocks)
        launch(mask_multiply_v1, blocks, threads, a.reshape(T), table.reshape(table.size),
               out.reshape(T), np.int32(a.shape[2] * a.shape[3]))


def forward(w, table, wm, threads=THREADS, max_blocks=MAX_BLOCKS):
    """wm = w * table: w, wm (K,C,R,S), table (K,C), all float32."""
    _multiply("w", w, table, wm, threads, max_blocks)


def backward(dwm, table, dw, threads=THREADS, max_blocks=MAX_BLOCKS):
    """dw = dwm * table."""
    _multiply("dwm", dwm, table, dw, threads, max_blocks)
