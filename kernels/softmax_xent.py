"""Soft-max cross-entropy: the multinomial logistic regression objective VGG trains with
(sect. 3.1), the mean over the batch of the negative log-probability of the true class.

    probs[n, m] = exp(z[n, m] - max_n) / s_n,      s_n = sum_m exp(z[n, m] - max_n)
    loss        = (1/N) sum_n (log s_n + max_n - z[n, label_n])    = mean_n -log probs[n, label_n]
    dz[n, m]    = (probs[n, m] - [m == label_n]) * dloss / N

Shapes: logits z (N, M) float32, labels (N,) int32 in [0, M), probs (N, M), loss (1,),
dloss (1,). N batch, M classes. Subtracting the row maximum max_n keeps every exponent
<= 0 (no overflow), and the loss is formed from log s_n (log-sum-exp) rather than from
log probs, so a true class with a probability that underflows to 0 still gives a finite loss.

Labels live on the device and the launchers cannot look at them without a host sync, so
the op validates them on the host before upload. The kernels still guard the index: a
label outside [0, M) makes the loss NaN (visible) and contributes no one-hot term to the
gradient, and never reads out of bounds.

Kernels:
    softmax_forward_v1   one block per row: the row's max and sum of exponentials by a
                         shared-memory tree reduction, then probs.
    xent_loss_v1         one block for the whole batch, one thread per row: the row's
                         log-sum-exp again from logits (a second read of the logits, cheap
                         next to the rest of a step), then a block sum. It is exact to
                         float32 rounding, needs no scratch buffer for per-row losses
                         (launchers never allocate) and no atomics (so the sum's order,
                         hence the result, is deterministic).
    xent_backward_v1     one thread per element of dlogits; dloss is read on the device.
                         Its grid's y dimension is the batch: N <= 65535.
"""
import math

import numpy as np
from numba import cuda, float32, int32, njit, types
from numba.extending import overload

from kernels.common import F1, F2, I1, blocks_1d, check, check_size, launch


# ----------------------------------------------------------------------------------------
# NumPy reference

def _check_labels(labels, M):
    if labels.size and (labels.min() < 0 or labels.max() >= M):
        raise ValueError(f"softmax_xent labels must be in [0, {M}), got "
                         f"[{labels.min()}, {labels.max()}]")


def forward_ref(logits, labels):
    """-> (loss (1,), probs (N, M)), both in logits' dtype."""
    N, M = logits.shape
    _check_labels(labels, M)
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    probs = e / s
    nll = np.log(s[:, 0]) - z[np.arange(N), labels]  # -log probs[n, label_n], via log s
    loss = np.array([nll.mean()], dtype=logits.dtype)
    return loss, probs.astype(logits.dtype, copy=False)


def backward_ref(probs, labels, dloss):
    N, M = probs.shape
    _check_labels(labels, M)
    onehot = np.zeros_like(probs)
    onehot[np.arange(N), labels] = 1
    return ((probs - onehot) * (dloss[0] / N)).astype(probs.dtype, copy=False)


# Fast CPU path (the cpu device's; tests/test_cpu_fast.py checks it against the above): the
# same sums, one compiled loop over the rows (Numba @njit). At VGG's shapes (64 x 10) on a
# Zen 5 the reference's dozen NumPy calls take 25 µs, PyTorch's loss 10, this one call 3.
# Labels are the op's to check (ops.softmax_cross_entropy does, on every device).
#
# A third of that call was 640 calls of the C library's expf, one element at a time
# (LLVM vectorises math.exp only with Intel's SVML, a 40 MB library). exp_nonpositive
# below is the textbook float32 exp (Cephes' expf) written as plain arithmetic, which LLVM
# turns into vector code: 8 or 16 exponentials an instruction. Every exponent is
# z - max_n <= 0. On an AVX2 CPU (Zen 3) at 64 x 10: the call 4.2 -> 3.3 us, the whole op
# (ops.softmax_cross_entropy) 9.3-9.9 -> 8.4 us, PyTorch's 8.5.

LOG2E = np.float32(1.4426950408889634)
LN2_HI, LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 = HI + LO,
# HI with 9 significant bits, so that m * HI is exact for m < 2^15 (Cody & Waite)
EXP_POLY = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                          4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
EXP_LOWEST = np.float32(-87.33654)  # ln 2^-126: below it exp(v) is subnormal, here 0
HALVINGS = np.array([2.0 ** -(2 ** bit) for bit in range(7)], np.float32)  # 2^-1 .. 2^-64


def exp_nonpositive(v):
    """exp(v) for v <= 0: float32's within 1 ulp (tests/test_cpu_fast.py), 0 below
    EXP_LOWEST, NaN for NaN; other dtypes by math.exp. For compiled loops (Numba)."""
    return math.exp(v)


@overload(exp_nonpositive, inline="always")
def _exp_nonpositive(v):
    if v != types.float32:
        return lambda v: math.exp(v)

    def exp_float32(v):
        # exp(v) = 2^-m exp(r), with m = round(-v / ln 2) in [0, 126] and r = v + m ln 2
        # in [-ln2 / 2, ln2 / 2], where a degree-7 polynomial is good to float32's precision
        m = int32(float32(0.5) - v * LOG2E)  # truncating a positive number: floor
        mf = float32(m)
        r = v + mf * LN2_HI + mf * LN2_LO
        p = EXP_POLY[0]
        for c in EXP_POLY[1:]:
            p = p * r + c
        p = p * r * r + r + float32(1.0)
        for bit in range(7):  # 2^-m: the product of 2^-(2^bit) over m's set bits
            p *= HALVINGS[bit] if (m >> bit) & 1 else float32(1.0)
        if v < EXP_LOWEST:
            return float32(0.0)
        return p if v >= EXP_LOWEST else v  # neither: v is NaN
    return exp_float32


@njit(cache=True)
def _forward_cpu(logits, labels, probs):
    """logits, probs (N, M) C-contiguous; labels (N,) in [0, M) -> the loss, (1/N) sum_n
    (log s_n + max_n - z[n, label_n]), its sums in float64. Three passes: z - max_n into
    probs; exp of all N*M in one flat loop (the vectorised one); normalise each row."""
    N, M = logits.shape
    total = 0.0
    for n in range(N):  # [0, N)
        top = logits[n, 0]  # max_n
        for m in range(1, M):
            top = max(top, logits[n, m])
        for m in range(M):
            probs[n, m] = logits[n, m] - top
        label = labels[n]  # checked by the op; as in the kernels, one outside [0, M) gives
        total -= probs[n, label] if 0 <= label < M else math.nan  # NaN, never a stray read
    flat = probs.reshape(N * M)
    for i in range(N * M):  # [0, N*M)
        flat[i] = exp_nonpositive(flat[i])
    for n in range(N):
        s = 0.0  # s_n
        for m in range(M):
            s += probs[n, m]
        inverse = 1.0 / s  # one division a row, not M; in float64, so the products
        for m in range(M):  # round to float32 as the quotients did (rarely not, by a bit)
            probs[n, m] *= inverse
        total += math.log(s)
    return total / N if N else math.nan  # the mean of nothing, as NumPy's


@njit(cache=True)
def label_range(labels):
    """(lowest, highest) of host labels (N,), N >= 1, in one compiled pass: the op's check
    (ops.softmax_cross_entropy) on the cpu device. NumPy's min and max, two calls, took
    6.5-11 us at 64 labels here, half the cpu loss's forward (PyTorch's whole loss: 10-17)."""
    low = high = labels[0]
    for n in range(1, labels.shape[0]):  # [1, N)
        low, high = min(low, labels[n]), max(high, labels[n])
    return low, high


def forward_fast(logits, labels):
    """forward_ref's (loss, probs); labels already checked."""
    logits = np.ascontiguousarray(logits)
    probs = np.empty_like(logits)
    loss = _forward_cpu(logits, labels, probs)
    return np.array([loss], logits.dtype), probs


# ----------------------------------------------------------------------------------------
# CUDA kernels. Both forward kernels find (max_n, s_n) in one pass over the row with the
# "online soft-max" (Milakov & Gimelshein 2018; llm.c's softmax_forward_online): a running
# maximum m and a running sum s of exp(z - m), rescaled whenever m grows,
#     z > m:  s <- s * exp(m - z) + 1,  m <- z        else:  s <- s + exp(z - m),
# and two partial results combine as m = max(m_a, m_b), s = s_a exp(m_a - m) + s_b exp(m_b - m).
# m starts at the lowest finite float32, not -inf: a thread with no columns (M < BLOCK)
# holds (LOWEST, 0), and two of those combine to 0 * exp(0) = 0, where -inf would give
# 0 * exp(-inf + inf) = NaN.

BLOCK = 128  # threads per block; a power of two (tree reduction)
LOWEST = -3.4028234663852886e38  # the lowest finite float32


@cuda.jit
def softmax_forward_v1(logits, probs):
    """logits, probs (N, M). Block n (grid N) computes row n of probs; BLOCK threads, thread
    tid covers columns tid, tid + BLOCK, ... Shared: bm, bs (BLOCK,) float32, the partial
    (max, sum) pairs of the tree reduction. Overwrites probs.
    """
    bm = cuda.shared.array(BLOCK, float32)
    bs = cuda.shared.array(BLOCK, float32)
    n = int32(cuda.blockIdx.x)  # [0, N)
    tid = int32(cuda.threadIdx.x)  # [0, BLOCK)
    M = int32(logits.shape[1])
    m, s = float32(LOWEST), float32(0.0)
    for j in range(tid, M, BLOCK):  # j [tid, M) step BLOCK: this thread's share of the row
        z = logits[n, j]
        if z > m:
            s = s * math.exp(m - z) + float32(1.0)
            m = z
        else:
            s += math.exp(z - m)
    bm[tid], bs[tid] = m, s
    cuda.syncthreads()  # every partial pair is in shared memory before the tree reads them
    half = int32(BLOCK // 2)
    while half > 0:  # half = BLOCK/2, ..., 2, 1: pair tid with tid + half
        if tid < half:
            other = int32(tid + half)  # [half, 2*half)
            ma, mb = bm[tid], bm[other]
            mx = max(ma, mb)
            bs[tid] = bs[tid] * math.exp(ma - mx) + bs[other] * math.exp(mb - mx)
            bm[tid] = mx
        cuda.syncthreads()  # this level is complete before the next level reads it
        half = int32(half // 2)
    m, inv = bm[0], float32(1.0) / bs[0]  # the row's max_n and 1 / s_n
    for j in range(tid, M, BLOCK):  # j [tid, M) step BLOCK
        probs[n, j] = math.exp(logits[n, j] - m) * inv


@cuda.jit
def xent_loss_v1(logits, labels, loss):
    """logits (N, M), labels (N,), loss (1,). A single block of BLOCK threads; thread tid
    takes rows tid, tid + BLOCK, ... and, for each, one serial online pass over the row
    gives log s_n + max_n - logits[n, label_n]. A shared-memory tree then sums the per-thread
    totals (fixed order: deterministic). Shared: buf (BLOCK,) float32. Overwrites loss[0]
    with the mean; NaN when a label is outside [0, M).
    """
    buf = cuda.shared.array(BLOCK, float32)
    tid = int32(cuda.threadIdx.x)  # [0, BLOCK)
    N, M = int32(logits.shape[0]), int32(logits.shape[1])
    total = float32(0.0)
    for n in range(tid, N, BLOCK):  # n [tid, N) step BLOCK: this thread's rows
        m, s = float32(LOWEST), float32(0.0)
        for j in range(M):  # j [0, M)
            z = logits[n, j]
            if z > m:
                s = s * math.exp(m - z) + float32(1.0)
                m = z
            else:
                s += math.exp(z - m)
        label = labels[n]
        if 0 <= label < M:
            total += math.log(s) + m - logits[n, label]
        else:  # guarded: never read outside the row
            total += float32(math.nan)
    buf[tid] = total
    cuda.syncthreads()  # every thread's total is in buf before the tree reads them
    half = int32(BLOCK // 2)
    while half > 0:  # half = BLOCK/2, ..., 2, 1
        if tid < half:
            buf[tid] += buf[int32(tid + half)]  # partner in [half, 2*half)
        cuda.syncthreads()  # this level is complete before the next level reads it
        half = int32(half // 2)
    if tid == 0:
        loss[0] = buf[0] / float32(N)


@cuda.jit
def xent_backward_v1(probs, labels, dloss, dlogits):
    """probs, dlogits (N, M), labels (N,), dloss (1,). Grid (ceil(M/threads), N) of 1-D
    blocks of `threads` (BLOCK by default); thread (n, j) computes dlogits[n, j]: a block
    covers consecutive columns of one row (coalesced, and no index division). No shared
    memory. Overwrites dlogits.
    """
    M = int32(probs.shape[1])
    n = int32(cuda.blockIdx.y)  # [0, N)
    j = int32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)  # [0, M) when in range
    if j < M:
        scale = dloss[0] / float32(probs.shape[0])  # read on the device: no host sync
        # A bad label (outside [0, M)) matches no j: no one-hot term, no bad read.
        hot = float32(1.0) if labels[n] == j else float32(0.0)
        dlogits[n, j] = (probs[n, j] - hot) * scale


PTX_SIGNATURES = [
    (softmax_forward_v1, (F2, F2)),
    (xent_loss_v1, (F2, I1, F1)),
    (xent_backward_v1, (F2, I1, F1, F2)),
]


# ----------------------------------------------------------------------------------------
# Launchers

MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y: the backward's rows


def _check_batch(name, a, labels):
    """Check a (N, M) float32 batch with N, M >= 1 and its (N,) int32 labels; -> (N, M)."""
    check(f"softmax_xent {name}", a, ndim=2)
    N, M = a.shape
    if N < 1 or M < 1:
        raise ValueError(f"softmax_xent {name} needs N, M >= 1, got shape {tuple(a.shape)}")
    check("softmax_xent labels", labels, shape=(N,), dtype=np.int32)
    check_size(f"softmax_xent {name}", a)
    return N, M


def forward(logits, labels, probs, loss):
    """probs (N,M) = softmax(logits (N,M)); loss (1,) = mean cross-entropy against labels (N,).
    Grids: N blocks of BLOCK threads for the soft-max, one block for the loss."""
    N, M = _check_batch("logits", logits, labels)
    check("softmax_xent probs", probs, shape=(N, M))
    check("softmax_xent loss", loss, shape=(1,))
    launch(softmax_forward_v1, N, BLOCK, logits, probs)
    launch(xent_loss_v1, 1, BLOCK, logits, labels, loss)


def backward(probs, labels, dloss, dlogits, threads=BLOCK):
    """dlogits (N,M) = (probs - onehot(labels)) * dloss[0] / N."""
    N, M = _check_batch("probs", probs, labels)
    check("softmax_xent dloss", dloss, shape=(1,))
    check("softmax_xent dlogits", dlogits, shape=(N, M))
    if N > MAX_GRID_Y:
        raise ValueError(f"softmax_xent backward: batch {N} exceeds the grid's y limit "
                         f"{MAX_GRID_Y}")
    launch(xent_backward_v1, (blocks_1d("softmax_xent backward", M, threads), N), threads,
           probs, labels, dloss, dlogits)
