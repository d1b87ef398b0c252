"""Launch geometry without a GPU: the real launchers, called with stand-in arrays that
have a shape and nothing else, inside kernels.common.recording(execute=False), which
notes each launch's grid and block instead of running it.

The training step goes through minivgg.ops exactly as training does (so the kernel
versions and workspaces are ops' choices), on a stand-in device whose array module makes
stand-ins; the other kernel versions are called on the launchers directly.
"""
import contextlib
import math
from types import SimpleNamespace

import numpy as np

from minivgg import backend
from minivgg.model import defaults, plan


class StandIn:
    """A C-contiguous array that has a shape and a dtype and no memory: enough for the
    launchers' checks and grid arithmetic. fill() and += do nothing."""

    def __init__(self, shape, dtype=np.float32):
        self.shape = tuple(int(s) for s in (shape if isinstance(shape, tuple) else (shape,)))
        self.dtype = np.dtype(dtype)
        self.ndim, self.size = len(self.shape), math.prod(self.shape)
        self.nbytes = self.size * self.dtype.itemsize
        self.flags = SimpleNamespace(c_contiguous=True)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} to {shape}")
        return StandIn(shape, self.dtype)

    def fill(self, value):
        pass

    def copy(self):
        return StandIn(self.shape, self.dtype)

    def __iadd__(self, other):
        return self

    def __repr__(self):
        return f"StandIn{self.shape}"


class _StandInModule:
    """The array module of the stand-in device: every array it makes is a StandIn."""
    float32, int32 = np.float32, np.int32

    @staticmethod
    def empty(shape, dtype=np.float32):
        return StandIn(shape, dtype)

    zeros = ones = empty

    @staticmethod
    def empty_like(a, dtype=None):
        return StandIn(a.shape, dtype or a.dtype)

    zeros_like = ones_like = empty_like

    @staticmethod
    def array(a, dtype=None, copy=True, order="C"):
        """A host array sent to the device (labels, say): a stand-in of its shape."""
        return StandIn(np.shape(a), dtype or np.asarray(a).dtype)

    asarray = array


@contextlib.contextmanager
def stand_in_device():
    """minivgg.ops launches kernels (runs_kernels) on stand-ins, recording only."""
    from kernels.common import recording
    before = backend._current  # restored below: this device is never seen outside
    backend._current = backend.Device("stand-in", _StandInModule, "launch geometry")
    try:
        with recording(execute=False) as launches:
            yield launches
    finally:
        backend._current = before


class Marks:
    """Which layer and pass each recorded launch belongs to: mark(label) before the calls,
    then label_of(i) for launch i."""

    def __init__(self, launches):
        self.launches, self.starts = launches, []

    def mark(self, label):
        self.starts.append((len(self.launches), label))

    def around(self, tensor, label):
        """Wrap tensor's backward so its launches are marked `label`."""
        inner = tensor._backward

        def backward():
            self.mark(label)
            inner()
        tensor._backward = backward

    def labelled(self):
        """[(label, Launch)] in launch order."""
        out, bounds = [], self.starts + [(len(self.launches), None)]
        for (start, label), (end, _) in zip(bounds, bounds[1:]):
            out += [(label, launch) for launch in self.launches[start:end]]
        return out


def _forward(row, h, p, marks, seed):
    """One plan row through minivgg.ops, its forward and backward launches marked."""
    from minivgg import ops
    from minivgg.tape import Tensor
    marks.mark(f"{row.name} fwd")
    if row.kind == "conv":  # groups (AlexNet's towers) and LeNet-5's C3 table too
        K, C, k, G = row.out_shape[0], h.shape[1], row.kernel, row.spec.groups
        w, b = Tensor(StandIn((K, C // G, k, k)), requires_grad=True), \
            Tensor(StandIn((K,)), requires_grad=True)
        p[f"{row.name}.weight"], p[f"{row.name}.bias"] = w, b
        if row.spec.table is not None:
            w = ops.masked_weight(w, StandIn((K, C)))
        out = ops.conv2d(h, w, b, row.stride, row.padding, G)
    elif row.kind == "fc":
        if len(h.shape) > 2:
            h = ops.flatten(h)
        w = Tensor(StandIn((row.out_shape[0], h.shape[1])), requires_grad=True)
        b = Tensor(StandIn((row.out_shape[0],)), requires_grad=True)
        p[f"{row.name}.weight"], p[f"{row.name}.bias"] = w, b
        out = ops.linear(h, w, b)
    elif row.kind == "relu":
        out = ops.relu(h)
    elif row.kind in ("tanh", "sigmoid"):
        out = getattr(ops, row.kind)(h)
    elif row.kind == "subsample":
        coef, b = (Tensor(StandIn((h.shape[1],)), requires_grad=True) for _ in range(2))
        p[f"{row.name}.coef"], p[f"{row.name}.bias"] = coef, b
        out = ops.subsample2d(h, coef, b, row.kernel, row.stride)
    elif row.kind == "dropout":
        out = ops.dropout(h, 0.5, seed)
    elif row.kind == "lrn":
        s = row.spec
        out = ops.lrn(h, s.size, s.k, s.alpha, s.beta)
    else:
        out = ops.max_pool2d(h, row.kernel, row.stride, row.spec.ceil)
    marks.around(out, f"{row.name} bwd")
    return out


def training_step(config, N, size=224, classes=1000, width=1.0, fc=4096):
    """[(label, Launch)] of one SGD step of VGG `config` (or a classic net of configs.py)
    at batch N through minivgg.ops."""
    from minivgg import ops
    from minivgg.optim import SGD
    from minivgg.tape import Tensor
    with stand_in_device() as launches:
        marks, params = Marks(launches), {}
        h = Tensor(StandIn((N, defaults(config)[3], size, size)))
        for row in plan(config, classes, width, fc, size):
            h = _forward(row, h, params, marks, seed=1)
        marks.mark("loss fwd")
        loss = ops.softmax_cross_entropy(h, np.arange(N) % classes)  # host labels
        marks.around(loss, "loss bwd")
        loss.backward(StandIn((1,)))
        for name, p in params.items():  # one optimizer per parameter, to mark each
            marks.mark(f"{name} SGD")
            SGD([(name, p)], lr=0.01).step()
    return marks.labelled()


def conv_version_launches(shape, N, pass_, version):
    """[Launch] of one conv pass of a bench.shapes.ConvShape at batch N, kernel `version`,
    on the launchers directly (with the split-K workspace they ask for)."""
    from kernels import conv
    from kernels.common import recording
    P, Q = shape.PQ
    x, w = StandIn((N, shape.C, shape.H, shape.W)), StandIn((shape.K, shape.C, shape.R, shape.S))
    y, st, pad = StandIn((N, shape.K, P, Q)), shape.stride, shape.pad
    with recording(execute=False) as launches:
        if pass_ == "fwd":
            conv.forward(x, w, StandIn((shape.K,)), y, st, pad, version=version)
        elif pass_ == "bwd-data":
            conv.backward_data(y, w, x, st, pad, version=version)
        else:
            ws = None if version == 1 else conv.backward_weight_workspace(
                x.shape, w.shape, st, pad, version)
            conv.backward_weight(x, y, w, st, pad, version=version,
                                 workspace=ws and StandIn(ws))
    return list(launches)


def linear_version_launches(N, I, O, pass_, version):
    """[Launch] of one linear pass (x (N, I), w (O, I)) with kernel `version`."""
    from kernels import linear
    from kernels.common import recording
    x, w, y = StandIn((N, I)), StandIn((O, I)), StandIn((N, O))
    with recording(execute=False) as launches:
        if pass_ == "fwd":
            linear.forward(x, w, StandIn((O,)), y, version=version)
        elif pass_ == "bwd-data":
            linear.backward_data(y, w, x, version=version)
        else:
            linear.backward_weight(x, y, w, version=version)
    return list(launches)


def other_launches(N, size=224):
    """[(label, Launch)] of the launchers VGG-16's step does not use: A-LRN's LRN after
    conv1_1, dense evaluation's average over the class score map (sect. 3.2; 6 x 6 for
    VGG-16 at Q = 384), and LeNet-5's layers up to S4 (tanh, sub-sampling, the C3 table's
    mask) with the sigmoid, the localisation net's Euclidean loss (appendix A.1), and
    GoogLeNet's padded pooling, concatenation and windowed average pooling."""
    from minivgg import ops
    from minivgg.tape import Tensor
    with stand_in_device() as launches:
        marks = Marks(launches)
        x = Tensor(StandIn((N, 64, size, size)), requires_grad=True)
        marks.mark("norm1 (A-LRN) fwd")
        y = ops.lrn(x, 5, 2.0, 1e-4, 0.75)
        marks.around(y, "norm1 (A-LRN) bwd")
        y.backward(StandIn(y.shape))
        s = Tensor(StandIn((N, 1000, 6, 6)), requires_grad=True)
        marks.mark("dense score map (Q=384) fwd")
        m = ops.global_avg_pool(s)
        marks.around(m, "dense score map (Q=384) bwd")
        m.backward(StandIn(m.shape))
        h, params = Tensor(StandIn((N, 1, 32, 32))), {}
        for row in plan("LeNet-5")[:8]:  # C1 ... tanh4: tanh, S2, C3 through its table, S4
            h = _forward(row, h, params, marks, seed=1)
        h.backward(StandIn(h.shape))
        s = Tensor(StandIn((N, 6, 14, 14)), requires_grad=True)
        marks.mark("sigmoid (LeNet-5's other squashing) fwd")
        y = ops.sigmoid(s)
        marks.around(y, "sigmoid (LeNet-5's other squashing) bwd")
        y.backward(StandIn(y.shape))
        p = Tensor(StandIn((N, 4000)), requires_grad=True)  # App. A.1: PCR, 1000 classes
        marks.mark("Euclidean loss (localisation, PCR) fwd")
        e = ops.euclidean_loss(p, np.zeros((N, 4), np.float32), np.arange(N) % 1000)
        marks.around(e, "Euclidean loss (localisation, PCR) bwd")
        e.backward(StandIn((1,)))
        _googlenet_launches(N, marks)
    return marks.labelled()


def _googlenet_launches(N, marks):
    """GoogLeNet's own launches (Szegedy et al. 2014, Table 1): inception (3a)'s pool
    branch (3x3/1, padding 1, on 192 maps at 28 x 28) and the concatenation of its four
    branches (64 + 128 + 32 + 32 maps), and an auxiliary head's 5x5/3 average pool (on 4a's
    512 maps at 14 x 14, to 4 x 4)."""
    from minivgg import ops
    from minivgg.tape import Tensor
    x = Tensor(StandIn((N, 192, 28, 28)), requires_grad=True)
    marks.mark("inception_3a pool branch 3x3/1 pad 1 fwd")
    y = ops.max_pool2d(x, 3, 1, False, 1)
    marks.around(y, "inception_3a pool branch 3x3/1 pad 1 bwd")
    y.backward(StandIn(y.shape))
    branches = [Tensor(StandIn((N, c, 28, 28)), requires_grad=True) for c in (64, 128, 32, 32)]
    marks.mark("inception_3a concat (4 branches) fwd")
    y = ops.concat(branches)
    marks.around(y, "inception_3a concat (4 branches) bwd")
    y.backward(StandIn(y.shape))
    x = Tensor(StandIn((N, 512, 14, 14)), requires_grad=True)
    marks.mark("aux head avg pool 5x5/3 fwd")
    y = ops.avg_pool2d(x, 5, 3, True)
    marks.around(y, "aux head avg pool 5x5/3 bwd")
    y.backward(StandIn(y.shape))
