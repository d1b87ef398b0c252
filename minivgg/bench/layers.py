"""One layer of the cpu device's net, forward and backward, ours (minivgg.ops on the NumPy
references, as a training step calls it) and PyTorch's op (autograd, as its step calls it)."""
from dataclasses import dataclass

import numpy as np

from minivgg.model import plan


@dataclass(frozen=True)
class Layer:
    """A layer of a plan with the shape of its input, at batch N. `first`: its input is the
    image, which needs no gradient (both sides then skip the conv's backward-data)."""
    name: str
    kind: str            # conv | relu | lrn | pool | fc | dropout | xent
    in_shape: tuple      # (C, H, W) or (features,)
    out: int = 0         # conv K, fc outputs
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    first: bool = False
    spec: object = None

    def key(self):
        return (self.kind, self.in_shape, self.out, self.kernel, self.stride, self.pad,
                self.first)

    def describe(self, N):
        shape = "x".join(map(str, (N,) + self.in_shape))
        if self.kind == "conv":
            return f"{shape} -> {self.out} ({self.kernel}x{self.kernel})"
        return f"{shape} -> {self.out}" if self.kind == "fc" else shape


def net_layers(net):
    """The layers of `net` (bench.step.Net) in order, the loss last."""
    layers, shape = [], (3, net.size, net.size)
    for r in plan(net.config, net.classes, net.width, net.fc, net.size):
        if r.kind == "dropout" and not net.dropout:
            continue
        if r.kind == "fc":
            flat = (int(np.prod(shape)),)
            layers.append(Layer(r.name, "fc", flat, r.out_shape[0]))
            shape = (r.out_shape[0],)
            continue
        fc_part = len(shape) == 1
        layers.append(Layer(r.name, r.kind, shape, r.out_shape[0] if r.kind == "conv" else 0,
                            r.kernel, r.stride, r.padding, first=not layers, spec=r.spec))
        shape = shape if fc_part else tuple(r.out_shape)
    layers.append(Layer("loss", "xent", shape))
    return layers


def distinct_layers(nets):
    """Each distinct layer of the nets once, in first-seen order."""
    seen = {}
    for net in nets:
        for layer in net_layers(net):
            seen.setdefault(layer.key(), layer)
    return list(seen.values())


def out_shape(layer, N):
    """The shape of the layer's output at batch N (the loss: one element)."""
    C, *HW = layer.in_shape
    if layer.kind == "conv":
        return (N, layer.out) + tuple((h + 2 * layer.pad - layer.kernel) // layer.stride + 1
                                      for h in HW)
    if layer.kind == "pool":
        return (N, C) + tuple((h - layer.kernel) // layer.stride + 1 for h in HW)
    if layer.kind == "fc":
        return (N, layer.out)
    return (1,) if layer.kind == "xent" else (N,) + layer.in_shape


def inputs(layer, N, seed=0):
    """The NumPy arrays both sides start from: x, the parameters, dy, the labels."""
    rng = np.random.default_rng(seed)
    shapes = _param_shapes(layer)
    return dict(x=rng.standard_normal((N,) + layer.in_shape, dtype=np.float32),
                params=[0.1 * rng.standard_normal(s, dtype=np.float32) for s in shapes],
                dy=(rng.standard_normal(out_shape(layer, N), dtype=np.float32)
                    if layer.kind != "xent" else np.ones(1, np.float32)),
                labels=(np.arange(N) % layer.in_shape[0]).astype(np.int32))


def _param_shapes(layer):
    if layer.kind == "conv":
        C = layer.in_shape[0]
        return [(layer.out, C, layer.kernel, layer.kernel), (layer.out,)]
    if layer.kind == "fc":
        return [(layer.out, layer.in_shape[0]), (layer.out,)]
    return []


def ours(layer, a, p_drop):
    """(forward, backward) no-argument calls of minivgg.ops on the cpu device, on the
    arrays `a` of inputs(); backward returns the gradients [dx (unless first), params...]."""
    from minivgg import ops
    from minivgg.tape import Tensor
    x = Tensor(a["x"].copy(), requires_grad=not layer.first)
    params = [Tensor(p.copy(), requires_grad=True) for p in a["params"]]
    sp = layer.spec
    fwd = {"conv": lambda: ops.conv2d(x, *params, layer.stride, layer.pad),
           "relu": lambda: ops.relu(x),
           "pool": lambda: ops.max_pool2d(x, layer.kernel, layer.stride),
           "lrn": lambda: ops.lrn(x, sp.size, sp.k, sp.alpha, sp.beta),
           "fc": lambda: ops.linear(x, *params),
           "dropout": lambda: ops.dropout(x, p_drop, 1234),
           "xent": lambda: ops.softmax_cross_entropy(x, a["labels"])}[layer.kind]
    out = fwd()
    out.grad = a["dy"]
    wrt = ([x] if not layer.first else []) + params

    def forward():
        t = fwd()
        # An op's output and its backward closure refer to each other: drop the closure
        # (and what it keeps, conv's unrolled input) now, as a step's backward does,
        # rather than leave each call's memory to the cycle collector.
        t._backward = None
        return t.data

    def bwd():
        for t in wrt:
            t.grad = None  # each call starts from no gradient, as in a step
        out._backward()
        return [t.grad for t in wrt]
    return forward, bwd


def theirs(torch, layer, a, p_drop):
    """(forward, backward) of PyTorch's op on the CPU on the same arrays; backward through
    autograd, returning the same gradients as ours()."""
    F = torch.nn.functional
    x = torch.from_numpy(a["x"].copy()).requires_grad_(not layer.first)
    params = [torch.from_numpy(p.copy()).requires_grad_() for p in a["params"]]
    labels, sp = torch.from_numpy(a["labels"].astype(np.int64)), layer.spec
    fwd = {"conv": lambda: F.conv2d(x, *params, layer.stride, layer.pad),
           "relu": lambda: F.relu(x),
           "pool": lambda: F.max_pool2d(x, layer.kernel, layer.stride),
           # PyTorch's alpha multiplies the window's mean, ours (AlexNet's) its sum
           "lrn": lambda: F.local_response_norm(x, sp.size, sp.alpha * sp.size, sp.beta, sp.k),
           "fc": lambda: F.linear(x, *params),
           "dropout": lambda: F.dropout(x, p_drop, True),
           "xent": lambda: F.cross_entropy(x, labels)}[layer.kind]
    out = fwd()
    dy = torch.from_numpy(a["dy"]).reshape(out.shape)
    wrt = ([x] if not layer.first else []) + params
    return fwd, lambda: torch.autograd.grad(out, wrt, dy, retain_graph=True)
