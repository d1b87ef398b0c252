"""Euclidean loss of bounding-box regression: the localisation ConvNet's objective (VGG
appendix A.1, "we replace the logistic regression objective with a Euclidean loss, which
penalises the deviation of the predicted bounding box parameters from the ground-truth").

The net's last layer has M = 4 G outputs per image: one box (4 numbers) for each of G
groups. Single-class regression (SCR) has G = 1, one box shared by every class; per-class
regression (PCR) has G = classes, one box per class, and only the ground-truth class's
box enters the loss. With c_n the group of image n (its class for PCR, 0 for SCR):

    gather    b[n, j]     = pred[n, 4 c_n + j]                       j in [0, 4)
    loss      L           = (1 / 2N) sum_n sum_j (b[n, j] - t[n, j])^2
    scatter   dpred[n, m] = (pred[n, m] - t[n, m % 4]) * dL / N      if m // 4 == c_n
                          = 0                                        otherwise

Shapes: pred, dpred (N, M) float32 with M = 4 G; t (N, 4) float32 targets; c (N,) int32
in [0, G); b (N, 4) the gathered boxes (kept: the task measures IoU with them); loss and
dL (1,). The 1/2 is Caffe's EuclideanLoss (the paper's code base): the gradient is then
the plain difference. N batch, G groups, M outputs.

Groups live on the device and the launchers cannot look at them without a host sync, so
the op checks them on the host before the upload. The kernels still guard the index: a
group outside [0, G) gathers NaN (so the loss is NaN, visible), scatters nothing, and
never reads or writes out of bounds.

Kernels:
    euclidean_gather_v1     one thread per element of b (a 1-D grid over the 4 N values).
    euclidean_loss_v1       one block for the whole batch: each thread sums the squared
                            differences of elements tid, tid + BLOCK, ..., then a shared-
                            memory tree adds the BLOCK partial sums. A fixed order, no
                            atomics: deterministic, and no scratch buffer to allocate.
    euclidean_backward_v1   one thread per element of dpred, grid (ceil(M / threads), N):
                            writes every element, the zeros of the other groups included.
"""
import math

import numpy as np
from numba import cuda, float32, int32

from kernels.common import F1, F2, I1, blocks_1d, check, check_size, launch


# ----------------------------------------------------------------------------------------
# NumPy reference

def _check_groups(groups, G):
    if groups.size and (groups.min() < 0 or groups.max() >= G):
        raise ValueError(f"euclidean groups must be in [0, {G}), got "
                         f"[{groups.min()}, {groups.max()}]")


def gather_ref(pred, groups):
    """(N, 4): each row's box of its group, pred[n, 4 c_n : 4 c_n + 4]."""
    N, M = pred.shape
    _check_groups(groups, M // 4)
    return pred.reshape(N, M // 4, 4)[np.arange(N), groups]


def forward_ref(pred, target, groups):
    """-> (loss (1,), boxes (N, 4)), in pred's dtype."""
    boxes = gather_ref(pred, groups)
    d = boxes - target
    loss = np.array([0.5 * np.sum(d * d) / len(pred)], dtype=pred.dtype)
    return loss, boxes


def backward_ref(pred, target, groups, dloss):
    """dpred (N, M): the difference in the group's four columns, zero elsewhere."""
    N, M = pred.shape
    dpred = np.zeros_like(pred)
    cols = 4 * np.asarray(groups)[:, None] + np.arange(4)  # (N, 4) the gathered columns
    rows = np.arange(N)[:, None]
    dpred[rows, cols] = (gather_ref(pred, groups) - target) * (dloss[0] / N)
    return dpred


# ----------------------------------------------------------------------------------------
# CUDA kernels

BLOCK = 128  # threads of the loss's one block; a power of two (tree reduction)


@cuda.jit
def euclidean_gather_v1(pred, groups, boxes):
    """pred (N, M), groups (N,), boxes (N, 4). A 1-D grid of 1-D blocks over the 4 N
    elements of boxes; thread i computes boxes[i // 4, i % 4]. No shared memory.
    Overwrites boxes; NaN where a group is outside [0, M / 4).
    """
    N, G = int32(pred.shape[0]), int32(pred.shape[1] // 4)
    i = int32(cuda.grid(1))  # [0, blocks*threads)
    if i >= N * int32(4):
        return
    n = i // int32(4)  # [0, N)
    j = i % int32(4)  # [0, 4): cx, cy, w, h
    c = groups[n]
    if 0 <= c < G:
        boxes[n, j] = pred[n, int32(4) * c + j]  # column in [4c, 4c + 4) within [0, M)
    else:  # guarded: never read outside the row
        boxes[n, j] = float32(math.nan)


@cuda.jit
def euclidean_loss_v1(boxes, target, loss):
    """boxes, target (N, 4), loss (1,). A single block of BLOCK threads; thread tid sums
    (boxes - target)^2 over the flat elements tid, tid + BLOCK, ... of the 4 N, then a
    shared-memory tree sums the per-thread totals (fixed order: deterministic). Shared:
    buf (BLOCK,) float32. Overwrites loss[0] with the total / (2 N).
    """
    buf = cuda.shared.array(BLOCK, float32)
    tid = int32(cuda.threadIdx.x)  # [0, BLOCK)
    N = int32(boxes.shape[0])
    total = float32(0.0)
    for i in range(tid, N * int32(4), BLOCK):  # i [tid, 4N) step BLOCK: this thread's share
        d = boxes[i // int32(4), i % int32(4)] - target[i // int32(4), i % int32(4)]
        total += d * d
    buf[tid] = total
    cuda.syncthreads()  # every thread's total is in buf before the tree reads them
    half = int32(BLOCK // 2)
    while half > 0:  # half = BLOCK/2, ..., 2, 1
        if tid < half:
            buf[tid] += buf[int32(tid + half)]  # partner in [half, 2*half)
        cuda.syncthreads()  # this level is complete before the next level reads it
        half = int32(half // 2)
    if tid == 0:
        loss[0] = buf[0] / float32(2 * N)


@cuda.jit
def euclidean_backward_v1(pred, target, groups, dloss, dpred):
    """pred, dpred (N, M), target (N, 4), groups (N,), dloss (1,). Grid (ceil(M/threads), N)
    of 1-D blocks; thread (n, m) computes dpred[n, m]: a block covers consecutive columns
    of one row (coalesced, no index division by M). No shared memory. Overwrites dpred,
    zeros included (the scatter: only the group's four columns get a gradient).
    """
    M = int32(pred.shape[1])
    n = int32(cuda.blockIdx.y)  # [0, N)
    m = int32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)  # [0, M) when in range
    if m < M:
        g = float32(0.0)
        if m // int32(4) == groups[n]:  # a bad group matches no m: no gradient, no bad read
            scale = dloss[0] / float32(pred.shape[0])  # read on the device: no host sync
            g = (pred[n, m] - target[n, m % int32(4)]) * scale  # m % 4 in [0, 4)
        dpred[n, m] = g


PTX_SIGNATURES = [
    (euclidean_gather_v1, (F2, I1, F2)),
    (euclidean_loss_v1, (F2, F2, F1)),
    (euclidean_backward_v1, (F2, F2, I1, F1, F2)),
]


# ----------------------------------------------------------------------------------------
# Launchers

THREADS = 128  # the gather's and the backward's block size
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y: the backward's rows


def _check_batch(name, pred, target, groups):
    """Check pred (N, 4G) with N, G >= 1, target (N, 4), groups (N,) int32; -> (N, M)."""
    check(f"euclidean {name}", pred, ndim=2)
    N, M = pred.shape
    if N < 1 or M < 4 or M % 4:
        raise ValueError(f"euclidean {name} needs N >= 1 and 4 x groups columns, got shape "
                         f"{tuple(pred.shape)}")
    check("euclidean target", target, shape=(N, 4))
    check("euclidean groups", groups, shape=(N,), dtype=np.int32)
    check_size(f"euclidean {name}", pred)
    return N, M


def forward(pred, target, groups, boxes, loss, threads=THREADS):
    """boxes (N, 4) = each row's group's box of pred (N, 4G); loss (1,) = the Euclidean
    loss against target (N, 4). Grids: 4N threads for the gather, one block for the loss."""
    N, _ = _check_batch("pred", pred, target, groups)
    check("euclidean boxes", boxes, shape=(N, 4))
    check("euclidean loss", loss, shape=(1,))
    launch(euclidean_gather_v1, blocks_1d("euclidean gather", 4 * N, threads), threads,
           pred, groups, boxes)
    launch(euclidean_loss_v1, 1, BLOCK, boxes, target, loss)


def backward(pred, target, groups, dloss, dpred, threads=THREADS):
    """dpred (N, M) = (pred - target) * dloss[0] / N in each row's group, 0 elsewhere."""
    N, M = _check_batch("pred", pred, target, groups)
    check("euclidean dloss", dloss, shape=(1,))
    check("euclidean dpred", dpred, shape=(N, M))
    if N > MAX_GRID_Y:
        raise ValueError(f"euclidean backward: batch {N} exceeds the grid's y limit "
                         f"{MAX_GRID_Y}")
    launch(euclidean_backward_v1, (blocks_1d("euclidean backward", M, threads), N), threads,
           pred, target, groups, dloss, dpred)
