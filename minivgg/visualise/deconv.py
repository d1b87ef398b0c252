"""ZFNet's deconvnet (Zeiler & Fergus 2013, sect. 2.1), built from minivgg's own backward
kernels: nothing here computes a convolution or a pooling itself.

To see what a unit of layer L responds to, ZFNet sets every other activation of layer L to
zero and sends the one that is left back down to the pixels, undoing each layer in turn:

    max-pool  -> unpooling: each value goes to the position its window's maximum came from
                 (the "switches"), every other position gets 0. That is exactly what the
                 max-pool's backward kernel computes (kernels/pool.py: dx gets dy at the
                 first maximum of each window), from the input recorded in the forward
                 pass: the switches are not stored, the backward finds them again.
    ReLU      -> rectification: the reconstruction itself goes through a ReLU (the ReLU's
                 forward kernel, on the signal). Not the ReLU's backward, which would mask
                 by where the *forward* activation was positive: that would be the
                 gradient, which ZFNet's projection is not.
    conv      -> filtering with the transposed filters: the conv's backward-data kernel
                 (kernels/conv/: dx = the transposed convolution of dy with the layer's own
                 weights; groups kept, so AlexNet's towers project through their own
                 filters). The bias is not used, as in ZFNet.

So the projection is the backward pass with one change, at the ReLUs, and it shows what the
backward kernels compute: unpooling and transposed filtering are the max-pool's and the
conv's backward-data passes. The pool and conv steps call the backward closure each op
recorded on the tape in the forward pass (ops.py), so every device runs its own kernels
(cuda, sim) or references (cpu).

Layers ZFNet's net did not have: LRN, tanh and sigmoid pass the signal on unchanged (ZFNet
does not invert its contrast normalisation either); LeNet-5's sub-sampling and the grey
level of a 1-channel net are linear and go back through their own backward (transposed)
passes, like the conv.
"""
from dataclasses import dataclass

import numpy as np

from minivgg import backend, nn, ops
from minivgg.errors import UserError
from minivgg.tape import Tensor, no_grad

PASS_THROUGH = (nn.LRN, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout)
TRANSPOSED = (nn.Conv2d, nn.MaxPool2d, nn.Subsample2d, nn.ChannelMean)  # MaskedConv2d too


@dataclass
class Step:
    """One layer of the recorded forward pass: the module, its input and its output."""
    module: object
    x: Tensor
    y: Tensor


def record(layers, x, prepare=None):
    """Run the device batch x through `layers` (Modules, in order), keeping every layer's
    input and output Tensor. x requires a gradient, so every op records its backward
    closure (and the max-pools keep the inputs their switches are read from). prepare:
    the model's input_channels (a 1-channel net's grey level), undone like a layer."""
    x = Tensor(x, requires_grad=True)
    h = prepare(x) if prepare is not None else x
    steps = [Step(nn.ChannelMean(), x, h)] if h is not x else []
    for layer in layers:
        out = layer(h)
        steps.append(Step(layer, h, out))
        h = out
    return steps


def transposed(step, signal):
    """The op's own recorded backward closure applied to `signal`, as the gradient of its
    output: for the conv the transposed convolution (backward-data), for the max-pool the
    unpooling to the switches. (The conv's closure also computes a weight gradient, which
    is thrown away: the projection changes no parameter.)"""
    x, y = step.x, step.y
    x.grad, y.grad = None, signal
    y._backward()
    out = x.grad
    x.grad = y.grad = None
    return out


def rectify(signal):
    """ZFNet's rectification: the reconstruction through the ReLU's forward kernel."""
    with no_grad():
        return ops.relu(Tensor(signal)).data


def undo(step, signal):
    """One deconvnet layer: the signal at step.y's shape -> the signal at step.x's."""
    m = step.module
    if isinstance(m, nn.ReLU):
        return rectify(signal)
    if isinstance(m, PASS_THROUGH):
        return signal
    if isinstance(m, TRANSPOSED):
        return transposed(step, signal)
    raise UserError(f"the deconvnet has no inverse for a {type(m).__name__} layer")


def project(steps, signal):
    """The deconvnet projection of `signal` (the last step's output shape, on the device)
    down to the input pixels: (N, C, H, W) on the device."""
    for step in reversed(steps):
        signal = undo(step, signal)
    return signal


def strongest(y, k):
    """Per image, the largest activation of map k and where: (values (N,), p (N,), q (N,))
    as host arrays (first position in row-major order at a tie)."""
    a = backend.to_host(y[:, k]).reshape(len(y), -1)
    flat = a.argmax(axis=1)
    Q = y.shape[3]
    return a[np.arange(len(a)), flat], flat // Q, flat % Q


def project_strongest(model, x, upto, k):
    """ZFNet's Fig. 2 for one map: for each image of the device batch x, the strongest
    activation of map k of layer `upto`, alone (every other activation of the layer set
    to 0), projected to pixel space. -> (projections (N, C, H, W) host float32, values,
    p, q)."""
    steps = record(list(model.features)[:upto + 1], x, model.input_channels)
    y = steps[-1].y.data
    values, p, q = strongest(y, k)
    seed = np.zeros(y.shape, dtype=np.float32)
    seed[np.arange(len(values)), k, p, q] = values
    pixels = project(steps, backend.to_device(seed))
    model.zero_grad()  # the conv closures left weight gradients behind
    return backend.to_host(pixels), values, p, q


def activations(model, x, upto):
    """The output of feature layer `upto` for the device batch x, without recording."""
    with no_grad():
        h = model.input_channels(Tensor(x))
        for layer in list(model.features)[:upto + 1]:
            h = layer(h)
    return h.data
