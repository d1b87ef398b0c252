"""Concatenation along channels: the maps of several inputs stacked into one output.

    forward   y[n, o_i + c, h, w] = x_i[n, c, h, w]      c in [0, C_i)
    backward  dx_i[n, c, h, w]    = dy[n, o_i + c, h, w]

where input i has C_i channels and starts at channel o_i = C_0 + ... + C_{i-1} of y.
Shapes: x_i, dx_i (N, C_i, H, W); y, dy (N, C, H, W) with C = sum of the C_i.

GoogLeNet's Inception module (Szegedy et al. 2014, sect. 4 and Fig. 2) runs a 1x1, a 3x3
and a 5x5 convolution and a 3x3 max-pooling side by side on the same input, each keeping
its size, and "their output filter banks concatenated into a single output vector forming
the input of the next stage". Nothing is added or multiplied: each input's block of
channels is a contiguous slab of y (NCHW), so forward is a copy into a channel slice and
backward a copy out of one.
"""
import numpy as np
from numba import cuda, int32

from kernels.common import F4, blocks_1d, check, check_size, launch


def output_shape(shapes):
    """(N, C_0 + C_1 + ..., H, W) of the inputs' (N, C_i, H, W); ValueError if they do not
    agree on N, H and W, or there are none."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if not shapes:
        raise ValueError("concat needs at least one input")
    for s in shapes:
        if len(s) != 4 or (s[0], s[2], s[3]) != (shapes[0][0], shapes[0][2], shapes[0][3]):
            raise ValueError(f"concat inputs must agree on N, H, W: got shapes "
                             f"{', '.join(map(str, shapes))}")
    N, _, H, W = shapes[0]
    return (N, sum(s[1] for s in shapes), H, W)


# ----------------------------------------------------------------------------------------
# NumPy reference

def forward_ref(xs):
    output_shape([x.shape for x in xs])
    return np.concatenate(xs, axis=1)


def backward_ref(dy, channels):
    """[dx_i]: dy's channel slices, C_i = channels[i] of them each, in order (copies)."""
    offsets = np.cumsum([0] + list(channels))
    return [dy[:, a:b].copy() for a, b in zip(offsets[:-1], offsets[1:])]


# ----------------------------------------------------------------------------------------
# CUDA kernels. One launch per input: its slab of y starts at channel `offset`.

@cuda.jit
def concat_forward_v1(x, y, offset):
    """x (N,Ci,H,W) into y (N,C,H,W) from channel `offset`. One thread per x element, a
    1-D grid of 1-D blocks over the N*Ci*H*W elements, w fastest (reads and writes are
    both contiguous runs). No shared memory. Overwrites y's channels [offset, offset+Ci).
    """
    N, Ci, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    i = int32(cuda.grid(1))  # [0, blocks*threads)
    if i >= N * Ci * H * W:
        return
    n = i // (Ci * H * W)  # [0, N)
    c = (i // (H * W)) % Ci  # [0, Ci)
    h = (i // W) % H  # [0, H)
    w = i % W  # [0, W)
    y[n, offset + c, h, w] = x[n, c, h, w]  # channel [offset, offset + Ci) of y


@cuda.jit
def concat_backward_v1(dy, dx, offset):
    """dx (N,Ci,H,W) from dy (N,C,H,W)'s channels [offset, offset+Ci). One thread per dx
    element, a 1-D grid of 1-D blocks over N*Ci*H*W, w fastest. No shared memory.
    Overwrites dx."""
    N, Ci, H, W = int32(dx.shape[0]), int32(dx.shape[1]), int32(dx.shape[2]), int32(dx.shape[3])
    i = int32(cuda.grid(1))  # [0, blocks*threads)
    if i >= N * Ci * H * W:
        return
    n = i // (Ci * H * W)  # [0, N)
    c = (i // (H * W)) % Ci  # [0, Ci)
    h = (i // W) % H  # [0, H)
    w = i % W  # [0, W)
    dx[n, c, h, w] = dy[n, offset + c, h, w]  # channel [offset, offset + Ci) of dy


PTX_SIGNATURES = [
    (concat_forward_v1, (F4, F4, int32)),
    (concat_backward_v1, (F4, F4, int32)),
]


# ----------------------------------------------------------------------------------------
# Launchers: one 1-D launch per input, `threads` a block (int32 indices: blocks_1d checks
# they cannot wrap).

THREADS = 256


def _check(parts, whole, part_name, whole_name):
    """Validate the inputs (or their gradients) against y (or dy): float32, C-contiguous,
    4-D, the same N, H, W, channels adding up to y's."""
    check(f"concat {whole_name}", whole, ndim=4)
    for i, a in enumerate(parts):
        check(f"concat {part_name}[{i}]", a, ndim=4)
    want = output_shape([a.shape for a in parts])
    if tuple(whole.shape) != want:
        raise ValueError(f"concat {whole_name} has shape {tuple(whole.shape)} for "
                         f"{part_name} of shapes {', '.join(str(tuple(a.shape)) for a in parts)}: "
                         f"expected {want}")
    check_size(f"concat {whole_name}", whole)


def _launch_per_input(kernel, what, whole, parts, threads):
    """One 1-D launch of `kernel` per non-empty part, each given its first channel in
    `whole` (the parts' channels follow each other in order)."""
    offset = 0
    for part in parts:
        if part.size:
            launch(kernel, blocks_1d(f"concat {what}", part.size, threads), threads,
                   *((part, whole) if what == "forward" else (whole, part)), np.int32(offset))
        offset += part.shape[1]


def forward(xs, y, threads=THREADS):
    """y = the xs stacked along channels, in order: one launch per input."""
    _check(xs, y, "x", "y")
    _launch_per_input(concat_forward_v1, "forward", y, xs, threads)


def backward(dy, dxs, threads=THREADS):
    """dxs[i] = dy's channel slice of input i: one launch per input."""
    _check(dxs, dy, "dx", "dy")
    _launch_per_input(concat_backward_v1, "backward", dy, dxs, threads)
