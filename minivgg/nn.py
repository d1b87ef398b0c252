"""Layers as Modules, torch-like and small: Parameter, Conv2d (and MaskedConv2d), Linear,
ReLU, Tanh, Sigmoid, MaxPool2d, AvgPool2d, GlobalAvgPool2d, Subsample2d, LRN, Dropout,
ChannelMean, Identity, Flatten, Sequential.

A Module's parameters and children are simply its attributes that are Parameters or
Modules, in the order they were set (no registration magic). Names join attribute names
with dots, and a Sequential names its children 0..n-1, so a VGG's parameters are called
features.0.weight, classifier.6.bias, ... exactly as in torchvision.

Parameters live on the current device (minivgg.backend). Loading and initialising write
INTO the existing arrays rather than replacing them: views of them (the dense view of
model.py, an optimizer's references) stay valid.
"""
import numpy as np

from minivgg import backend, ops
from minivgg.errors import UserError
from minivgg.tape import Tensor


class Parameter(Tensor):
    """A Tensor that is learned: requires_grad=True. `trainable`: how many of its elements
    are parameters of the model (all of them, unless a connection table masks some)."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)
        self.trainable = int(data.size)

    def __repr__(self):
        return f"Parameter(shape={tuple(self.shape)})"


def _shape(s):
    return "(" + ", ".join(str(int(d)) for d in s) + ")"


class Module:
    """Base class: forward(), parameters by name, train/eval, state_dict."""

    training = True

    def forward(self, x):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # -- the tree ------------------------------------------------------------------------
    def named_children(self):
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every descendant, depth first."""
        out = [(prefix, self)]
        for name, child in self.named_children():
            out += child.named_modules(f"{prefix}.{name}" if prefix else name)
        return out

    def named_parameters(self):
        """(name, Parameter) in definition order: features.0.weight, features.0.bias, ..."""
        out = []
        for prefix, m in self.named_modules():
            for k, v in vars(m).items():
                if isinstance(v, Parameter):
                    out.append((f"{prefix}.{k}" if prefix else k, v))
        return out

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        """The model's parameters: every trainable element (LeNet-5's C3 counts only the
        weights its connection table keeps)."""
        return sum(p.trainable for p in self.parameters())

    # -- modes and gradients ---------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout on) for this module and all below it."""
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # -- state -----------------------------------------------------------------------------
    def state_dict(self):
        """{name: NumPy host array}: a copy of every parameter (synchronises the device)."""
        return {n: backend.to_host(p.data, copy=True) for n, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy `state` {name: array} into the parameters, in place.

        Every name must be present with the same shape, and nothing else may be there; the
        first offender is named in a one-line UserError, before anything is written.
        """
        params = dict(self.named_parameters())
        for name, p in params.items():
            if name not in state:
                raise UserError(f"missing tensor {name!r} (model shape {_shape(p.shape)})")
            got = backend.shape(state[name])
            if tuple(got) != tuple(p.shape):
                raise UserError(f"tensor {name!r} has shape {_shape(got)} in the state but "
                                f"{_shape(p.shape)} in the model")
        for name in state:
            if name not in params:
                raise UserError(f"unexpected tensor {name!r} of shape "
                                f"{_shape(backend.shape(state[name]))}: the model has no such "
                                "parameter")
        for name, p in params.items():
            backend.copy_into(p.data, state[name])


# -- initialisation (paper sect. 3.1) -------------------------------------------------------
INITS = ("paper", "glorot", "kaiming", "zeros", "alexnet")


def fans(shape):
    """(fan_in, fan_out) of a weight (out, in, *kernel): channels times receptive field."""
    field = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * field, shape[0] * field


def init_weight(shape, scheme, rng):
    """A float32 host array for a weight of `shape` drawn by `scheme` from Generator `rng`.

    paper    N(0, 0.01^2), sect. 3.1. The paper says "10^-2 variance", i.e. std 0.1, but
             its nets were trained with Caffe (sect. 3.3), whose gaussian filler takes a
             standard deviation, and the released VGG Caffe definitions say std: 0.01;
             std 0.1 also blows the activations up through 11+ layers. We use std 0.01.
    glorot   Glorot & Bengio 2010 uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)),
             variance 2 / (fan_in + fan_out) (the paper's note at the end of sect. 3.1).
    kaiming  He et al. 2015 normal for ReLU nets: N(0, 2 / fan_in).
    zeros    all zero: for a model whose weights are about to be loaded.
    alexnet  N(0, 0.01^2), as "paper" (AlexNet sect. 5 too); the model then sets AlexNet's
             biases of 1 (model.VGG).
    """
    fan_in, fan_out = fans(shape)
    if scheme in ("paper", "alexnet"):
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(0.01)  # in place: fc6 alone is 400 MB at full size
        return w
    if scheme == "glorot":
        a = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.random(shape, dtype=np.float32)  # [0, 1), drawn directly in float32
        w *= np.float32(2 * a)
        w -= np.float32(a)
        return w
    if scheme == "kaiming":
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / fan_in))
        return w
    if scheme == "zeros":
        return np.zeros(shape, dtype=np.float32)
    raise ValueError(f"unknown init {scheme!r}: choose one of {', '.join(INITS)}")


def _weight_and_bias(shape, init, rng):
    """A weight drawn by `init` and a zero bias (all schemes: sect. 3.1, biases zero)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    w = Parameter(backend.to_device(init_weight(shape, init, rng)))
    b = Parameter(backend.to_device(np.zeros(shape[0], dtype=np.float32)))
    return w, b


# -- layers ----------------------------------------------------------------------------------
class Conv2d(Module):
    """weight (out, in/groups, k, k), bias (out,); stride and zero padding (sect. 2.1: 3x3,
    1, 1); groups as PyTorch's (AlexNet's two towers: 2)."""

    def __init__(self, in_channels, out_channels, kernel, stride=1, padding=0,
                 init="paper", rng=None, groups=1):
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise UserError(f"Conv2d({in_channels}, {out_channels}): groups {groups} must "
                            "divide both channel counts")
        self.stride, self.padding, self.groups = stride, padding, groups
        self.weight, self.bias = _weight_and_bias(
            (out_channels, in_channels // groups, kernel, kernel), init, rng)

    @classmethod
    def wrap(cls, weight, bias, stride=1, padding=0):
        """A Conv2d over existing Parameters (no allocation): model.py's dense view."""
        conv = cls.__new__(cls)
        conv.stride, conv.padding, conv.weight, conv.bias = stride, padding, weight, bias
        conv.groups = 1
        return conv

    def forward(self, x):
        return ops.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)

    def __repr__(self):
        K, Cg, R, _ = self.weight.shape
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return (f"Conv2d({Cg * self.groups}, {K}, kernel={R}, stride={self.stride}, "
                f"padding={self.padding}{groups})")


class MaskedConv2d(Conv2d):
    """A Conv2d whose filter k sees input channel c only where table[k, c] is 1 (LeNet-5's
    C3): it convolves with weight * table (ops.masked_weight), so the table is in the
    gradient too. The left-out weights start at 0 and never move; they are not counted as
    parameters. `table`: (out, in) 0/1 host array."""

    def __init__(self, in_channels, out_channels, kernel, table, stride=1, padding=0,
                 init="paper", rng=None):
        super().__init__(in_channels, out_channels, kernel, stride, padding, init, rng)
        table = np.asarray(table, dtype=np.float32)
        if table.shape != (out_channels, in_channels) or not np.isin(table, (0, 1)).all():
            raise UserError(f"MaskedConv2d({in_channels}, {out_channels}): the connection "
                            f"table must be ({out_channels}, {in_channels}) 0s and 1s, got "
                            f"shape {table.shape}")
        self.table = backend.to_device(table)
        w = backend.to_host(self.weight.data) * table[:, :, None, None]
        backend.copy_into(self.weight.data, w.astype(np.float32))
        self.weight.trainable = int(table.sum()) * kernel * kernel

    def forward(self, x):
        w = ops.masked_weight(self.weight, self.table)
        return ops.conv2d(x, w, self.bias, self.stride, self.padding)

    def __repr__(self):
        return super().__repr__().replace("Conv2d(", "MaskedConv2d(", 1) + \
            f" [{int(backend.to_host(self.table).sum())} connections]"


class Linear(Module):
    """weight (out, in) (torchvision's layout), bias (out,): y = x w^T + b."""

    def __init__(self, in_features, out_features, init="paper", rng=None):
        self.weight, self.bias = _weight_and_bias((out_features, in_features), init, rng)

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)

    def __repr__(self):
        return f"Linear({self.weight.shape[1]}, {self.weight.shape[0]})"


class ReLU(Module):
    def forward(self, x):
        return ops.relu(x)

    def __repr__(self):
        return "ReLU()"


class Tanh(Module):
    def forward(self, x):
        return ops.tanh(x)

    def __repr__(self):
        return "Tanh()"


class Sigmoid(Module):
    def forward(self, x):
        return ops.sigmoid(x)

    def __repr__(self):
        return "Sigmoid()"


class Subsample2d(Module):
    """LeNet-5's trainable sub-sampling: coef * (window average) + bias, per channel. coef
    starts at 1 and bias at 0: average pooling, until training moves them."""

    def __init__(self, channels, window=2, stride=2):
        self.window, self.stride = window, stride
        self.coef = Parameter(backend.to_device(np.ones(channels, dtype=np.float32)))
        self.bias = Parameter(backend.to_device(np.zeros(channels, dtype=np.float32)))

    def forward(self, x):
        return ops.subsample2d(x, self.coef, self.bias, self.window, self.stride)

    def __repr__(self):
        return f"Subsample2d({self.coef.shape[0]}, window={self.window}, stride={self.stride})"


class ChannelMean(Module):
    """(N, C, H, W) -> (N, 1, H, W): the grey level, in front of a 1-channel net fed RGB."""

    def forward(self, x):
        return ops.channel_mean(x)

    def __repr__(self):
        return "ChannelMean()"


class MaxPool2d(Module):
    """padding: -inf rows and columns around the input (GoogLeNet's 3x3/1 pad-1 branch)."""

    def __init__(self, window, stride, ceil_mode=False, padding=0):
        self.window, self.stride, self.ceil_mode = window, stride, ceil_mode
        self.padding = padding

    def forward(self, x):
        return ops.max_pool2d(x, self.window, self.stride, self.ceil_mode, self.padding)

    def __repr__(self):
        pad = f", padding={self.padding}" if self.padding else ""
        return f"MaxPool2d({self.window}, stride={self.stride}{pad})"


class AvgPool2d(Module):
    """Window averages, no padding; ceil_mode keeps a last clipped window (Caffe's)."""

    def __init__(self, window, stride, ceil_mode=False):
        self.window, self.stride, self.ceil_mode = window, stride, ceil_mode

    def forward(self, x):
        return ops.avg_pool2d(x, self.window, self.stride, self.ceil_mode)

    def __repr__(self):
        return f"AvgPool2d({self.window}, stride={self.stride})"


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): each map's mean, whatever its size (NiN's last layer)."""

    def forward(self, x):
        return ops.global_avg_pool(x)

    def __repr__(self):
        return "GlobalAvgPool2d()"


class LRN(Module):
    """Local response normalisation, AlexNet's constants by default (alpha on the sum)."""

    def __init__(self, size=5, k=2.0, alpha=1e-4, beta=0.75):
        self.size, self.k, self.alpha, self.beta = size, k, alpha, beta

    def forward(self, x):
        return ops.lrn(x, self.size, self.k, self.alpha, self.beta)

    def __repr__(self):
        return f"LRN(size={self.size}, k={self.k}, alpha={self.alpha}, beta={self.beta})"


def mix32(a, b):
    """A 32-bit hash of two integers (murmur3's finaliser over a simple combination).

    Neighbouring (seed, call) pairs give unrelated values, so consecutive dropout masks
    are independent while the whole sequence is a pure function of the base seed.
    """
    m = 0xFFFFFFFF
    h = (int(a) * 0x9E3779B1 + int(b) * 0x85EBCA77 + 0x165667B1) & m
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & m
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & m
    h ^= h >> 16
    return h


class Dropout(Module):
    """Inverted dropout with probability p in training mode; the identity in eval mode.

    Sect. 3.1: p = 0.5 after the first two FC layers. The mask is a hash of a per-call
    seed (kernels/dropout.py); the seed of call number `calls` is mix32(seed, calls), so a
    run is reproducible from `seed`, every call draws a fresh mask, and a checkpoint that
    stores (seed, calls) resumes the exact sequence.

    first_sample: the index, in the whole batch, of this input's first sample (0 on one
    device). A process that trains a slice of the batch in data parallel (sect. 3.3,
    minivgg/distributed.py) sets it, and its masks are the whole batch's rows for its
    samples; a process whose slice is empty calls skip() instead, so that every process
    counts the same calls.
    """

    def __init__(self, p=0.5, seed=0):
        self.p, self.seed, self.calls = p, int(seed), 0
        self.first_sample = 0

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        call_seed = mix32(self.seed, self.calls)
        self.calls += 1
        per_sample = int(x.data.size) // max(1, int(x.shape[0]))
        return ops.dropout(x, self.p, call_seed, self.first_sample * per_sample)

    def skip(self):
        """Count a call without running one (a process with no samples in this batch)."""
        if self.training and self.p != 0:
            self.calls += 1

    def __repr__(self):
        return f"Dropout(p={self.p})"


class Identity(Module):
    """Passes its input on (stands where dropout was in the eval-only dense view)."""

    def forward(self, x):
        return x

    def __repr__(self):
        return "Identity()"


class Flatten(Module):
    def forward(self, x):
        return ops.flatten(x)

    def __repr__(self):
        return "Flatten()"


class Sequential(Module):
    """Children called 0..n-1, run in order."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def named_children(self):
        return [(str(i), m) for i, m in enumerate(self.layers)]

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __repr__(self):
        inner = "\n".join(f"  ({i}): {m!r}" for i, m in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
