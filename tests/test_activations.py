"""tanh and sigmoid (LeNet-5's squashing functions): references against closed forms and
finite differences; kernels against the references over several blocks and grid-stride
passes; the launchers' checks; PyTorch if present."""
from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import (assert_close, dev, directional_check, empty, kernel_settings,
                     split_on_every_axis)
from kernels import activations

KINDS = pytest.mark.parametrize("kind", activations.KINDS)
shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


@KINDS
def test_reference_against_closed_forms(kind):
    """Values where each is known: tanh(0) = 0, sigmoid(0) = 1/2, odd/complementary
    symmetry, saturation without overflow at +-1000."""
    x = np.array([-1000.0, -2.0, 0.0, 0.5, 2.0, 1000.0])
    with np.errstate(over="raise"):
        y = activations.forward_ref(kind, x)
    if kind == "tanh":
        want = [-1.0, -0.9640275800758169, 0.0, 0.46211715726000974, 0.9640275800758169, 1.0]
    else:
        want = [0.0, 0.11920292202211755, 0.5, 0.6224593312018546, 0.8807970779778823, 1.0]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-300)


@KINDS
@given(shapes, st.integers(0, 2**32 - 1))
def test_reference_gradient(kind, shape, seed):
    rng = np.random.default_rng(seed)
    directional_check(lambda x: activations.forward_ref(kind, x),
                      lambda x, dy: (activations.backward_ref(
                          kind, activations.forward_ref(kind, x), dy),),
                      [2 * rng.standard_normal(shape)], wrt=[0], rng=rng)


def check_kernels(kind, x, dy, **launch):
    y = empty(x.shape)
    activations.forward(kind, dev(x), y, **launch)
    assert_close(y, activations.forward_ref(kind, x), f"{kind} forward")
    dx = empty(x.shape)
    activations.backward(kind, y, dev(dy), dx, **launch)
    assert_close(dx, activations.backward_ref(kind, activations.forward_ref(kind, x), dy),
                 f"{kind} backward")


@KINDS
@kernel_settings
@given(shapes, st.integers(0, 2**32 - 1))
def test_kernels_match_reference(kind, shape, seed):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    x.flat[0] = -100.0  # deep in saturation: no overflow in the simulator either
    check_kernels(kind, x, rng.standard_normal(shape).astype(np.float32))


# 100 elements in blocks of 32: 4 blocks, the last partial; capped at 2 blocks: two passes.
@KINDS
@pytest.mark.parametrize("max_blocks", [activations.MAX_BLOCKS, 2, 1])
def test_kernels_over_blocks_and_passes(kind, max_blocks):
    rng = np.random.default_rng(1)
    x, dy = (rng.standard_normal((4, 25)).astype(np.float32) for _ in range(2))
    with split_on_every_axis() if max_blocks > 1 else nullcontext():
        check_kernels(kind, x, dy, threads=32, max_blocks=max_blocks)


def test_launchers_reject_bad_arguments():
    with pytest.raises(ValueError, match="activation must be one of tanh, sigmoid"):
        activations.forward("relu", dev(np.zeros(3)), empty((3,)))
    with pytest.raises(ValueError, match="float32"):
        activations.forward("tanh", dev(np.zeros(3), np.float64), empty((3,)))
    with pytest.raises(ValueError, match=r"sigmoid dx has shape \(4,\)"):
        activations.backward("sigmoid", dev(np.zeros(3)), dev(np.zeros(3)), empty((4,)))
    with pytest.raises(ValueError, match="threads per block"):
        activations.forward("tanh", dev(np.zeros(3)), empty((3,)), threads=2048)


@KINDS
def test_matches_torch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, dy = 3 * rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch, kind)(tx)
    ty.backward(torch.tensor(dy))
    y = activations.forward_ref(kind, x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(activations.backward_ref(kind, y, dy), tx.grad.numpy(),
                               rtol=1e-10, atol=1e-15)
