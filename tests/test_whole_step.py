"""One whole training step of a tiny VGG-shaped net through the CUDA kernels (sim, or cuda
when MINIVGG_DEVICE=cuda) equals the same step through the NumPy references (cpu):
logits, loss, every parameter gradient, every updated parameter.

conv-relu-conv-relu-pool-conv-relu-pool-linear-relu-dropout-linear-softmax xent, then SGD.
"""
import numpy as np
import pytest

from helpers import KERNEL_DEVICE
from kernels.conv import fast as conv_fast
from minivgg import backend, ops
from minivgg.optim import SGD
from minivgg.tape import Tensor

SHAPES = {  # name -> shape; 8x8 input, channels 3 -> 4 -> 4 -> 6, 6*2*2 -> 10 -> 5
    "c1.weight": (4, 3, 3, 3), "c1.bias": (4,),
    "c2.weight": (4, 4, 3, 3), "c2.bias": (4,),
    "c3.weight": (6, 4, 3, 3), "c3.bias": (6,),
    "f1.weight": (10, 24), "f1.bias": (10,),
    "f2.weight": (5, 10), "f2.bias": (5,),
}


def tiny_vgg_step(device, host_params, x, labels, seed=1234):
    backend.set_device(device)
    params = {n: Tensor(backend.to_device(a), requires_grad=True)
              for n, a in host_params.items()}
    p = params
    h = ops.relu(ops.conv2d(Tensor(backend.to_device(x)), p["c1.weight"], p["c1.bias"], 1, 1))
    h = ops.relu(ops.conv2d(h, p["c2.weight"], p["c2.bias"], 1, 1))
    h = ops.max_pool2d(h, 2, 2)
    h = ops.relu(ops.conv2d(h, p["c3.weight"], p["c3.bias"], 1, 1))
    h = ops.flatten(ops.max_pool2d(h, 2, 2))
    h = ops.dropout(ops.relu(ops.linear(h, p["f1.weight"], p["f1.bias"])), 0.5, seed)
    logits = ops.linear(h, p["f2.weight"], p["f2.bias"])
    loss = ops.softmax_cross_entropy(logits, backend.to_device(labels, dtype=np.int32))
    loss.backward()
    grads = {n: backend.to_host(t.grad) for n, t in params.items()}
    SGD(params.items(), lr=0.1, momentum=0.9, weight_decay=5e-4).step()
    return {"logits": backend.to_host(logits.data), "loss": backend.to_host(loss.data),
            "grads": grads, "params": {n: backend.to_host(t.data) for n, t in params.items()}}


@pytest.fixture(scope="module")
def both():
    rng = np.random.default_rng(0)
    host_params = {n: (0.3 * rng.standard_normal(s)).astype(np.float32)
                   for n, s in SHAPES.items()}
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    labels = np.array([1, 4], dtype=np.int32)
    ref = tiny_vgg_step("cpu", host_params, x, labels)
    got = tiny_vgg_step(KERNEL_DEVICE, host_params, x, labels)
    backend.set_device("cpu")
    return ref, got


def close(a, b, name):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=name)


def test_logits_and_loss(both):
    ref, got = both
    close(got["logits"], ref["logits"], "logits")
    close(got["loss"], ref["loss"], "loss")


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_gradient_and_update(both, name):
    ref, got = both
    assert np.abs(ref["grads"][name]).max() > 0, "a zero gradient would make this vacuous"
    close(got["grads"][name], ref["grads"][name], f"grad {name}")
    close(got["params"][name], ref["params"][name], f"updated {name}")


def test_cpu_step_is_the_same_whole_batch_or_an_image_at_a_time(monkeypatch):
    """The cpu path unrolls a few images at a time and keeps a batch unrolled in one chunk
    from forward for backward (kernels/conv/fast.py, ops.py); a step that unrolls one
    image at a time, and so rebuilds every unrolling in backward, gives the same numbers
    (up to the order of float32 sums over the chunks)."""
    rng = np.random.default_rng(1)
    host_params = {n: (0.3 * rng.standard_normal(s)).astype(np.float32)
                   for n, s in SHAPES.items()}
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 2, 4], dtype=np.int32)
    kept = tiny_vgg_step("cpu", host_params, x, labels)
    monkeypatch.setattr(conv_fast, "CHUNK_BYTES", 1)
    rebuilt = tiny_vgg_step("cpu", host_params, x, labels)
    for name in SHAPES:
        np.testing.assert_allclose(kept["grads"][name], rebuilt["grads"][name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)
