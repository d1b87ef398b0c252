"""SGD with momentum and L2 weight decay, fused into one in-place update per parameter.

VGG trains "using mini-batch gradient descent with momentum" 0.9 and "weight decay (the L_2
penalty multiplier set to 5e-4)" (sect. 3.1), following Krizhevsky et al. 2012 (sect. 5),
whose update is, with learning rate lr and g = dL/dw:

    v <- momentum * v - weight_decay * lr * w - lr * g
    w <- w + v

PyTorch's torch.optim.SGD (dampening 0, no Nesterov) writes the same method as

    b <- momentum * b + (g + weight_decay * w)
    w <- w - lr * b

With a constant lr the two are identical (v = -lr * b at every step). They differ only in
when a change of lr takes effect: here the velocity already holds lr-scaled steps, so a
lower lr shrinks only the new gradient's contribution and the old momentum decays at its
own pace; in PyTorch the whole buffer b is rescaled by the new lr at once. For VGG's
schedule (lr divided by 10 a few times, sect. 3.1) the difference lasts a few dozen steps.

Any shape: w, g, v are seen as flat (T,) arrays. w and v are updated in place.
"""
import numpy as np
from numba import cuda, float32, int32

from kernels.common import F1, blocks_1d, check, check_size, launch


# ----------------------------------------------------------------------------------------
# NumPy reference

def step_ref(w, g, v, lr, momentum, weight_decay):
    """One update of w and v, in place (NumPy arrays of any shape, the same dtype)."""
    v *= momentum
    v -= (weight_decay * lr) * w
    v -= lr * g
    w += v


# ----------------------------------------------------------------------------------------
# CUDA kernel

@cuda.jit
def sgd_step_v1(w, g, v, lr, momentum, weight_decay):
    """w, g, v (T,); lr, momentum, weight_decay float32.

    Grid-stride loop, 1-D blocks, one element per thread per pass; no shared memory. Reads
    w, g, v and writes w, v in place (each element read and written by one thread only).
    """
    T = int32(w.shape[0])
    decay = weight_decay * lr  # float32
    i = int32(cuda.grid(1))  # [0, gridsize)
    stride = int32(cuda.gridsize(1))
    while i < T:  # i [0, T)
        vi = momentum * v[i] - decay * w[i] - lr * g[i]
        v[i] = vi
        w[i] += vi
        i += stride


PTX_SIGNATURES = [
    (sgd_step_v1, (F1, F1, F1, float32, float32, float32)),
]


# ----------------------------------------------------------------------------------------
# Launcher: a grid sized from T and capped at max_blocks (the loop strides over the rest);
# `threads` and `max_blocks` let a test launch a few small blocks and several passes.

THREADS = 256
MAX_BLOCKS = 65536


def step(w, g, v, lr, momentum, weight_decay, threads=THREADS, max_blocks=MAX_BLOCKS):
    """Update w and v (C-contiguous float32, any shape; g the same shape) in place."""
    check("sgd w", w)
    check("sgd g", g, shape=w.shape)
    check("sgd v", v, shape=w.shape)
    check_size("sgd w", w)
    T = w.size
    if T:
        blocks = blocks_1d("sgd", T, threads, max_blocks)
        launch(sgd_step_v1, blocks, threads, w.reshape(T), g.reshape(T), v.reshape(T),
               np.float32(lr), np.float32(momentum), np.float32(weight_decay))
