"""The differentiable ops: the one place that calls kernels/ and records backward.

Each op reads top to bottom as: forward (kernel launch on cuda/sim, NumPy reference on
cpu), the output Tensor, then its backward closure right underneath, which adds into the
parents' gradients. Gradients are only computed for parents that need them (the input
image never does, which saves the first layer's backward-data pass).

Shape letters (DESIGN.md): N batch, C in-channels, H W input size, K out-channels,
R S filter size, P Q output size.
"""
import contextlib

import numpy as np

from kernels import activations, avgpool, conv, dropout as dropout_k, linear as linear_k
from kernels import lrn as lrn_k, mask as mask_k, pool, relu as relu_k, softmax_xent
from kernels import concat as concat_k, euclidean as euclidean_k, subsample as subsample_k
from minivgg import backend
from minivgg.tape import Tensor, is_recording


def _empty(shape):
    return backend.xp().empty(shape, dtype=np.float32)


# The kernel version each op launches on cuda and sim. kernels/ keeps every version (the
# tests run them all); these are the ones training uses: v2 until a GPU has timed v3
# against it (benchmarks/RESULTS.md).
VERSIONS = {"conv": 2, "linear": 2}


@contextlib.contextmanager
def kernel_versions(**versions):
    """Launch other kernel versions inside the block: `with kernel_versions(conv=3): ...`"""
    unknown = set(versions) - set(VERSIONS)
    if unknown:
        raise ValueError(f"kernel_versions: no op {sorted(unknown)[0]!r}; have {sorted(VERSIONS)}")
    before = dict(VERSIONS)
    VERSIONS.update(versions)
    try:
        yield
    finally:
        VERSIONS.clear()
        VERSIONS.update(before)


def _workspace(shape):
    """Scratch for a split gradient's partial sums, when the launcher asks for one."""
    return None if shape is None else _empty(shape)


def _kernels():
    """True when the current device launches CUDA kernels (cuda, sim); False on cpu."""
    return backend.device().runs_kernels


def conv2d(x, w, b, stride=1, pad=0, groups=1):
    """y = conv(x, w) + b. x (N,C,H,W), w (K,C/groups,R,S), b (K,) -> y (N,K,P,Q). Paper
    sect. 2.1; groups (PyTorch's): AlexNet's two towers (its sect. 3.2), groups=2."""
    cols = None  # cpu: the unrolled input, kept for backward when the batch unrolled in
    # one chunk (kernels/conv/fast.py: a few MB, or one image); else backward unrolls again
    if _kernels():
        N, _, H, W = x.shape
        K, _, R, S = w.shape
        P, Q = conv.output_size(H, W, R, S, stride, pad)
        y = _empty((N, K, P, Q))
        conv.forward(x.data, w.data, b.data, y, stride, pad, VERSIONS["conv"], groups=groups)
    else:  # cpu: the fast path beside the reference (kernels/conv/fast.py)
        y, cols = conv.forward_fast(x.data, w.data, b.data, stride, pad, groups)
        if not (is_recording() and (x.requires_grad or w.requires_grad)):
            cols = None
    out = Tensor(y, (x, w, b), "conv2d")

    def _backward():
        dy = out.grad
        if _kernels():
            if x.requires_grad:
                dx = _empty(x.shape)
                conv.backward_data(dy, w.data, dx, stride, pad, VERSIONS["conv"],
                                   groups=groups)
                x.accumulate(dx, "conv2d", owned=True)
            dw, db = _empty(w.shape), _empty(b.shape)
            version = VERSIONS["conv"]
            conv.backward_weight(x.data, dy, dw, stride, pad, version, workspace=_workspace(
                conv.backward_weight_workspace(x.shape, w.shape, stride, pad, version)),
                groups=groups)
            conv.backward_bias(dy, db, _workspace(conv.backward_bias_workspace(dy.shape)))
        else:
            dx, dw, db = conv.backward_fast(x.data, w.data, dy, stride, pad,
                                            need_dx=x.requires_grad, unrolled=cols,
                                            groups=groups)
            if x.requires_grad:
                x.accumulate(dx, "conv2d", owned=True)
        w.accumulate(dw, "conv2d", owned=True)
        b.accumulate(db, "conv2d", owned=True)
    out._backward = _backward
    return out


def relu(x):
    """y = max(x, 0), elementwise."""
    if _kernels():
        y = _empty(x.shape)
        relu_k.forward(x.data, y)
    else:
        y = relu_k.forward_fast(x.data)
    out = Tensor(y, (x,), "relu")

    def _backward():  # the gradient passes where the output is positive
        if _kernels():
            dx = _empty(x.shape)
            relu_k.backward(y, out.grad, dx)
        else:
            dx = relu_k.backward_fast(y, out.grad)
        x.accumulate(dx, "relu", owned=True)
    out._backward = _backward
    return out


def _squash(kind, x):
    """y = tanh(x) or sigmoid(x), elementwise: LeNet-5's squashing functions."""
    if _kernels():
        y = _empty(x.shape)
        activations.forward(kind, x.data, y)
    else:
        y = activations.forward_ref(kind, x.data)
    out = Tensor(y, (x,), kind)

    def _backward():  # both derivatives are functions of the output y
        if _kernels():
            dx = _empty(x.shape)
            activations.backward(kind, y, out.grad, dx)
        else:
            dx = activations.backward_ref(kind, y, out.grad)
        x.accumulate(dx, kind, owned=True)
    out._backward = _backward
    return out


def tanh(x):
    """y = tanh(x), elementwise (LeNet-5's squashing function)."""
    return _squash("tanh", x)


def sigmoid(x):
    """y = 1 / (1 + exp(-x)), elementwise (the compendium's other squashing function)."""
    return _squash("sigmoid", x)


def subsample2d(x, coef, bias, window=2, stride=2):
    """LeNet-5's trainable sub-sampling (S2, S4): y = coef * (window average of x) + bias,
    per channel. x (N,C,H,W), coef and bias (C,) -> y (N,C,P,Q)."""
    if _kernels():
        N, C, H, W = x.shape
        y = _empty((N, C) + subsample_k.output_size(H, W, window, stride))
        subsample_k.forward(x.data, coef.data, bias.data, y, window, stride)
    else:
        y = subsample_k.forward_ref(x.data, coef.data, bias.data, window, stride)
    out = Tensor(y, (x, coef, bias), "subsample2d")

    def _backward():
        dy = out.grad
        if _kernels():
            if x.requires_grad:
                dx = _empty(x.shape)
                subsample_k.backward_data(dy, coef.data, dx, window, stride)
                x.accumulate(dx, "subsample2d", owned=True)
            dcoef, dbias = _empty(coef.shape), _empty(bias.shape)
            subsample_k.backward_params(x.data, dy, dcoef, dbias, window, stride)
        else:
            dx, dcoef, dbias = subsample_k.backward_ref(x.data, coef.data, dy, window, stride)
            if x.requires_grad:
                x.accumulate(dx, "subsample2d", owned=True)
        coef.accumulate(dcoef, "subsample2d", owned=True)
        bias.accumulate(dbias, "subsample2d", owned=True)
    out._backward = _backward
    return out


def masked_weight(w, table):
    """w * table: a conv weight (K,C,R,S) through a connection table (K,C) of 0s and 1s, a
    device array (LeNet-5's C3). The table is a constant: only w gets a gradient, masked
    the same way."""
    if _kernels():
        y = _empty(w.shape)
        mask_k.forward(w.data, table, y)
    else:
        y = mask_k.forward_ref(w.data, table)
    out = Tensor(y, (w,), "masked_weight")

    def _backward():
        if _kernels():
            dw = _empty(w.shape)
            mask_k.backward(out.grad, table, dw)
        else:
            dw = mask_k.backward_ref(out.grad, table)
        w.accumulate(dw, "masked_weight", owned=True)
    out._backward = _backward
    return out


def channel_mean(x):
    """(N, C, H, W) -> (N, 1, H, W): the mean over channels, the grey level of an RGB image
    (a 1-channel net fed RGB sees (R + G + B) / 3; for a grey image read as RGB, R = G = B,
    the grey level itself). Array arithmetic, like add: nothing for a kernel to teach."""
    C = x.shape[1]
    out = Tensor(x.data.mean(axis=1, keepdims=True, dtype=x.dtype), (x,), "channel_mean")

    def _backward():
        xp = backend.array_module(out.grad)
        dx = xp.broadcast_to(out.grad / np.float32(C), x.shape).astype(x.dtype)
        x.accumulate(dx, "channel_mean", owned=True)
    out._backward = _backward
    return out


def max_pool2d(x, window=2, stride=2, ceil_mode=False, pad=0):
    """Max over window x window patches, stride apart. Paper sect. 2.1: 2x2, stride 2.
    pad: rows and columns of -inf around x (GoogLeNet's 3x3/1 pad-1 branch keeps the size)."""
    if _kernels():
        N, C, H, W = x.shape
        P, Q = pool.output_size(H, W, window, stride, ceil_mode, pad)
        y = _empty((N, C, P, Q))
        pool.forward(x.data, y, window, stride, pad)
    else:  # cpu: compiled loops that keep each window's argmax for backward
        y, arg = pool.forward_fast(x.data, window, stride, ceil_mode, pad)
    out = Tensor(y, (x,), "max_pool2d")

    def _backward():  # the gradient goes to the first maximum of each window
        if _kernels():
            dx = _empty(x.shape)
            pool.backward(x.data, out.grad, dx, window, stride, pad)
        else:
            dx = pool.backward_fast(arg, out.grad, x.shape)
        x.accumulate(dx, "max_pool2d", owned=True)
    out._backward = _backward
    return out


def avg_pool2d(x, window, stride, ceil_mode=False):
    """Mean over window x window patches, stride apart (no padding; ceil_mode keeps a last,
    clipped window, averaged over the pixels it holds, as Caffe does). GoogLeNet: 5x5/3 in
    the auxiliary classifiers, 7x7/1 before the last FC layer (Szegedy et al. 2014)."""
    if _kernels():
        N, C, H, W = x.shape
        y = _empty((N, C) + avgpool.window_output_size(H, W, window, stride, ceil_mode))
        avgpool.window_forward(x.data, y, window, stride)
    else:
        y = avgpool.window_forward_ref(x.data, window, stride, ceil_mode)
    out = Tensor(y, (x,), "avg_pool2d")

    def _backward():  # each window's gradient shared evenly among its pixels
        if _kernels():
            dx = _empty(x.shape)
            avgpool.window_backward(out.grad, dx, window, stride)
        else:
            dx = avgpool.window_backward_ref(out.grad, x.shape[2], x.shape[3], window, stride)
        x.accumulate(dx, "avg_pool2d", owned=True)
    out._backward = _backward
    return out


def concat(xs):
    """Channel concatenation: (N, C_i, H, W) for each i -> (N, sum C_i, H, W), in order.
    GoogLeNet's Inception module joins its four branches this way (Szegedy et al. 2014,
    Fig. 2); backward hands each input its own slice of the gradient."""
    shape = concat_k.output_shape([x.shape for x in xs])  # ValueError on a mismatch
    if _kernels():
        y = _empty(shape)
        concat_k.forward([x.data for x in xs], y)
    else:
        y = concat_k.forward_ref([x.data for x in xs])
    out = Tensor(y, tuple(xs), "concat")

    def _backward():
        if _kernels():
            dxs = [_empty(x.shape) for x in xs]
            concat_k.backward(out.grad, dxs)
        else:
            dxs = concat_k.backward_ref(out.grad, [x.shape[1] for x in xs])
        for x, dx in zip(xs, dxs):
            x.accumulate(dx, "concat", owned=True)
    out._backward = _backward
    return out


def lrn(x, size=5, k=2.0, alpha=1e-4, beta=0.75):
    """Local response normalisation across channels (AlexNet sect. 3.3; VGG's A-LRN)."""
    if _kernels():
        y = _empty(x.shape)
        lrn_k.forward(x.data, y, size, k, alpha, beta)
    else:
        y = lrn_k.forward_ref(x.data, size, k, alpha, beta)
    out = Tensor(y, (x,), "lrn")

    def _backward():
        if _kernels():
            dx = _empty(x.shape)
            lrn_k.backward(x.data, out.grad, dx, size, k, alpha, beta)
        else:
            dx = lrn_k.backward_ref(x.data, out.grad, size, k, alpha, beta)
        x.accumulate(dx, "lrn", owned=True)
    out._backward = _backward
    return out


def linear(x, w, b):
    """y = x w^T + b. x (N,I), w (O,I) (torchvision's layout), b (O,) -> y (N,O)."""
    if _kernels():
        y = _empty((x.shape[0], w.shape[0]))
        linear_k.forward(x.data, w.data, b.data, y, VERSIONS["linear"])
    else:
        y = linear_k.forward_fast(x.data, w.data, b.data)
    out = Tensor(y, (x, w, b), "linear")

    def _backward():
        dy = out.grad
        if _kernels():
            if x.requires_grad:
                dx = _empty(x.shape)
                linear_k.backward_data(dy, w.data, dx, VERSIONS["linear"])
                x.accumulate(dx, "linear", owned=True)
            dw, db = _empty(w.shape), _empty(b.shape)
            linear_k.backward_weight(x.data, dy, dw, VERSIONS["linear"])
            linear_k.backward_bias(dy, db)
        else:
            dx, dw, db = linear_k.backward_ref(x.data, w.data, dy)
            if x.requires_grad:
                x.accumulate(dx, "linear", owned=True)
        w.accumulate(dw, "linear", owned=True)
        b.accumulate(db, "linear", owned=True)
    out._backward = _backward
    return out


def dropout(x, p, seed, offset=0):
    """Inverted dropout (training only): keep with probability 1-p, scale kept by 1/(1-p).

    The mask is a hash of (seed, element index), so backward recomputes it: nothing stored.
    offset is the global flat index of x's element 0: 0 on one device; a process training
    samples [s, ...) of a batch in data parallel (sect. 3.3) passes s * (elements per
    sample), and draws the masks one device would. Paper sect. 3.1: p = 0.5 on the first
    two FC layers.
    """
    if _kernels():
        y = _empty(x.shape)
        dropout_k.forward(x.data, y, p, seed, offset)
    else:
        y = dropout_k.forward_ref(x.data, p, seed, offset)
    out = Tensor(y, (x,), "dropout")

    def _backward():
        if _kernels():
            dx = _empty(x.shape)
            dropout_k.backward(out.grad, dx, p, seed, offset)
        else:
            dx = dropout_k.backward_ref(out.grad, p, seed, offset)
        x.accumulate(dx, "dropout", owned=True)
    out._backward = _backward
    return out


def add(a, b):
    """a + b, same shapes (the tape's tests use it to build a diamond-shaped graph)."""
    if a.shape != b.shape:
        raise ValueError(f"add: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    out = Tensor(a.data + b.data, (a, b), "add")

    def _backward():
        a.accumulate(out.grad, "add")
        b.accumulate(out.grad, "add")
    out._backward = _backward
    return out


def scale(x, c):
    """c * x for a host number c (GoogLeNet's auxiliary losses enter the objective times
    0.3). Array arithmetic, like add."""
    c = np.float32(c)
    out = Tensor(x.data * c, (x,), "scale")

    def _backward():
        x.accumulate(out.grad * c, "scale", owned=True)
    out._backward = _backward
    return out


def flatten(x):
    """(N, C, H, W) -> (N, C*H*W), C-order: the order torchvision's classifier expects."""
    out = Tensor(x.data.reshape(x.shape[0], -1), (x,), "flatten")

    def _backward():
        x.accumulate(out.grad.reshape(x.shape), "flatten")
    out._backward = _backward
    return out


def global_avg_pool(x):
    """(N, C, H, W) -> (N, C): the spatial mean of a class score map (paper sect. 3.2)."""
    if _kernels():
        y = _empty(x.shape[:2])
        avgpool.forward(x.data, y)
    else:
        y = avgpool.forward_ref(x.data)
    out = Tensor(y, (x,), "global_avg_pool")

    def _backward():
        if _kernels():
            dx = _empty(x.shape)
            avgpool.backward(out.grad, dx)
        else:
            dx = avgpool.backward_ref(out.grad, x.shape[2], x.shape[3])
        x.accumulate(dx, "global_avg_pool", owned=True)
    out._backward = _backward
    return out


def softmax_cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[label] (paper sect. 3.1's objective).

    logits (N, classes) Tensor; labels (N,) integers, a NumPy array (checked on the host,
    then copied to the device) or already a device array (checked there: on cuda that
    costs a host synchronisation, so pass host labels in a training loop) -> loss Tensor
    (1,). A label outside [0, classes) is a ValueError on every device. The soft-max
    probabilities are kept on the output as `.probs`, the device labels as `.labels`.
    """
    labels = _checked_labels(labels, logits.shape)
    if _kernels():
        probs, loss = _empty(logits.shape), _empty((1,))
        softmax_xent.forward(logits.data, labels, probs, loss)
    else:
        loss, probs = softmax_xent.forward_fast(logits.data, labels)
    out = Tensor(loss, (logits,), "softmax_cross_entropy")
    out.probs, out.labels = probs, labels

    def _backward():  # d loss / d logits = (probs - onehot(labels)) * dloss / N
        if _kernels():
            dlogits = _empty(logits.shape)
            softmax_xent.backward(probs, labels, out.grad, dlogits)
        else:
            dlogits = softmax_xent.backward_ref(probs, labels, out.grad)
        logits.accumulate(dlogits, "softmax_cross_entropy", owned=True)
    out._backward = _backward
    return out


def _checked_labels(labels, logits_shape):
    """labels as an int32 device array, after checking shape and range (ValueError)."""
    N, M = logits_shape
    if tuple(labels.shape) != (N,):
        raise ValueError(f"softmax_cross_entropy: labels have shape {tuple(labels.shape)} "
                         f"for logits of shape {(N, M)}")
    if N:  # on cuda a sync, see above; host labels in one compiled pass
        low, high = map(int, (labels.min(), labels.max()) if backend.is_device_array(labels)
                        else softmax_xent.label_range(labels))
        if low < 0 or high >= M:
            raise ValueError(f"softmax_cross_entropy: labels must be in [0, {M}), got "
                             f"[{low}, {high}]")
    if backend.is_device_array(labels):
        return labels.astype(np.int32, copy=False)
    return backend.to_device(labels, dtype=np.int32)


def euclidean_loss(pred, target, groups):
    """Box regression's loss (appendix A.1): (1/2N) sum_n ||box_n - target_n||^2, where
    box_n = pred[n, 4 g_n : 4 g_n + 4] is image n's box of its group g_n.

    pred (N, 4G) Tensor: SCR has G = 1 (groups all 0), PCR G = classes (groups = the
    ground-truth labels, so only that class's box is trained). target (N, 4) float32, host
    or device; groups (N,) integers, checked on the host like softmax_cross_entropy's
    labels (ValueError outside [0, G)). -> loss Tensor (1,), keeping the gathered boxes
    (N, 4) as `.boxes` and the device targets as `.target` (the task measures IoU on them).
    """
    N, M = pred.shape
    groups = _checked_groups(groups, N, M // 4)
    target = target if backend.is_device_array(target) else backend.to_device(target)
    if tuple(target.shape) != (N, 4):
        raise ValueError(f"euclidean_loss: target has shape {tuple(target.shape)} for "
                         f"predictions of shape {(N, M)}")
    if _kernels():
        boxes, loss = _empty((N, 4)), _empty((1,))
        euclidean_k.forward(pred.data, target, groups, boxes, loss)
    else:
        loss, boxes = euclidean_k.forward_ref(pred.data, target, groups)
    out = Tensor(loss, (pred,), "euclidean_loss")
    out.boxes, out.target = boxes, target

    def _backward():  # the difference in each row's group's 4 columns, zero elsewhere
        if _kernels():
            dpred = _empty(pred.shape)
            euclidean_k.backward(pred.data, target, groups, out.grad, dpred)
        else:
            dpred = euclidean_k.backward_ref(pred.data, target, groups, out.grad)
        pred.accumulate(dpred, "euclidean_loss", owned=True)
    out._backward = _backward
    return out


def _checked_groups(groups, N, G):
    """groups as an int32 device array, after checking shape and range on the host."""
    if backend.is_device_array(groups):
        groups = backend.to_host(groups)  # a sync on cuda: pass host groups in training
    groups = np.asarray(groups)
    if groups.shape != (N,):
        raise ValueError(f"euclidean_loss: groups have shape {groups.shape} for a batch of {N}")
    if N and (groups.min() < 0 or groups.max() >= G):
        raise ValueError(f"euclidean_loss: groups must be in [0, {G}), got "
                         f"[{groups.min()}, {groups.max()}]")
    return backend.to_device(groups, dtype=np.int32)
