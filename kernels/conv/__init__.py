"""Convolution: every conv layer of VGG (paper sect. 2.1: 3x3, stride 1, pad 1; config C's
1x1), the dense evaluation's FC-as-conv layers (sect. 3.2: 7x7 and 1x1), AlexNet's 11x11
stride 4 first layer and its grouped ("two-tower") conv2, conv4 and conv5 (AlexNet sect.
3.2), and LeNet-5's C1, C3 and C5.

Shapes (NCHW):  x (N, C, H, W)   w (K, C/G, R, S)   b (K,)   y (N, K, P, Q)
                P = (H + 2*pad - R) // stride + 1,   Q = (W + 2*pad - S) // stride + 1

Groups (PyTorch's `groups`, so weights interchange): the C input channels and the K
filters are cut into G equal groups, Cg = C/G channels and Kg = K/G filters each, and
filter k (group g = k // Kg) sees only its group's channels g*Cg ... g*Cg + Cg - 1. G = 1
is the ordinary conv; AlexNet's towers are G = 2 (each GPU's filters see only the maps on
its own GPU); G = C = K is a depthwise conv. A grouped conv is G independent convs side
by side, with 1/G of the weights and multiply-adds of the full one.

forward, a cross-correlation (no filter flip), as in every framework:
    y[n,k,p,q] = b[k] + sum_{c<Cg,r,s} w[k,c,r,s] * x[n, g*Cg + c, p*stride - pad + r, ...]
with x read as 0 outside [0,H) x [0,W) (zero padding).

backward, given dy = dL/dy of y's shape:
    db[k]       = sum_{n,p,q} dy[n,k,p,q]
    dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, g*Cg + c, p*stride - pad + r, ...]
    dx[n,g*Cg+c,h,v] = sum over the group's filters k, the taps (r, s) and the (p, q) with
                  p*stride - pad + r = h and q*stride - pad + s = v of dy[n,k,p,q] * w[k,c,r,s]
                  (for stride > 1 only every stride-th (h + pad - r) has such a p)

Implicit GEMM view (one per group). Unroll x into a matrix A with one row per output pixel
m = (n,p,q) and one column per filter tap j = (c,r,s): A[m, j] = x[n, c, p*stride - pad +
r, ...]. Then, for each group g (A_g: the columns of its channels, w_g: its filters)
    y_g  (M x Kg)   = A_g (M x CgRS) @ w_g^T (CgRS x Kg)   M = N*P*Q rows, Cg*R*S reduction
    dw_g (Kg x CgRS) = dy_g^T (Kg x M) @ A_g (M x CgRS)    reduction over N*P*Q
    dx_g            = dy_g (M x Kg) @ w_g (Kg x CgRS), scattered back through the unrolling
The references build A^T (im2col, one matrix for the whole batch) in memory; the v2 and
v3 kernels never do: they gather tiles of A straight from x into shared memory (v3 also
keeps a 4 x 4 tile of outputs per thread in registers, and splits dw's long reduction
across blocks). Every output tile of a kernel lies within one group, so the kernels tile
each group's GEMM as they tile the whole one for G = 1, the group on the grid's z axis
(folded into y for the weight gradient, whose z axis is its chunks). v1 reads the groups
from the shapes (G = C / w.shape[1]); v2 and v3 are given kg = K / G, the filters per
group (v2.py says why); the launchers take `groups` and check it against the shapes.

Index arithmetic in the kernels is int32, so every array must have fewer than 2**31
elements (the launchers check).

One module per concern, all of it importable from here (`from kernels import conv;
conv.forward(...)`):
    reference.py   output_size, the NumPy reference (forward_ref, backward_ref): the oracle
    fast.py        the cpu device's fast path (forward_fast, backward_fast)
    direct3x3.py   the cpu device's 3x3 convs as compiled loops (few channels; the deep
                   ones' dw, and forward with fewer output channels than outer3x3.py's
                   block's lanes)
    outer3x3.py    the deep 3x3 convs' forward (and dx) as outer products in registers
                   (its kernels, outer3x3_8x32.py for AVX-512 and outer3x3_5x16.py for
                   AVX2, written by tools/write_kernels.py)
    v1.py          one thread per output; the bias gradient and the sum of partials
    v2.py          tiled implicit GEMM through shared memory
    v3.py          register-blocked implicit GEMM, split-K for dw
    launchers.py   forward, backward_data, backward_weight, backward_bias and workspaces
"""
from numba import cuda, float32, int32  # noqa: F401  (lesson 5 re-jits v1 in this namespace)

from kernels.conv import v1, v2, v3
from kernels.conv.fast import backward_fast, forward_fast, unroll_fast  # noqa: F401
from kernels.conv.launchers import (  # noqa: F401
    BIAS_BLOCKS, MAX_GRID_YZ, SPLITK_BLOCKS, SPLITK_MIN_CHUNK, SPLITK_STEP, THREADS,
    backward_bias, backward_bias_workspace, backward_data, backward_weight,
    backward_weight_workspace, bias_chunks, forward, split_k)
from kernels.conv.reference import (  # noqa: F401
    backward_ref, check_groups, forward_ref, forward_ref_cols, group_slices, output_size)
from kernels.conv.v1 import (  # noqa: F401
    BIAS_THREADS, conv_backward_bias_v1, conv_backward_data_v1, conv_backward_weight_v1,
    conv_forward_v1, conv_sum_partials_v1)
from kernels.conv.v2 import (  # noqa: F401
    TILE, conv_backward_data_v2, conv_backward_weight_v2, conv_forward_v2)
from kernels.conv.v3 import (  # noqa: F401
    BK, BM, BN, THREADS_V3, conv_backward_data_v3, conv_backward_weight_v3, conv_forward_v3)

# Every kernel with the argument types its launcher passes (rung 3: tests/test_ptx.py).
PTX_SIGNATURES = v1.PTX_SIGNATURES + v2.PTX_SIGNATURES + v3.PTX_SIGNATURES

__all__ = [
    "BIAS_BLOCKS", "BIAS_THREADS", "BK", "BM", "BN", "MAX_GRID_YZ", "PTX_SIGNATURES",
    "SPLITK_BLOCKS", "SPLITK_MIN_CHUNK", "SPLITK_STEP", "THREADS", "THREADS_V3", "TILE",
    "backward_bias", "backward_bias_workspace", "backward_data", "backward_fast",
    "backward_ref", "backward_weight", "backward_weight_workspace", "bias_chunks",
    "check_groups", "conv_backward_bias_v1", "conv_backward_data_v1",
    "conv_backward_data_v2", "conv_backward_data_v3", "conv_backward_weight_v1",
    "conv_backward_weight_v2", "conv_backward_weight_v3", "conv_forward_v1",
    "conv_forward_v2", "conv_forward_v3", "conv_sum_partials_v1", "cuda", "float32",
    "forward", "forward_fast", "forward_ref", "forward_ref_cols", "group_slices", "int32",
    "output_size", "split_k", "unroll_fast",
]
