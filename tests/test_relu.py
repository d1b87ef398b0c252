"""ReLU: reference against finite differences; kernels against the reference, over several
blocks and several grid-stride passes; the launchers' argument checks."""
from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import (assert_close, dev, directional_check, empty, kernel_settings,
                     split_on_every_axis)
from kernels import relu

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


def signed(rng, shape, gap=1e-2):
    """Values of both signs (about half negative) with |x| >= gap, so +-eps steps never
    cross the kink at 0."""
    x = rng.standard_normal(shape)
    return np.where(x < 0, np.minimum(x, -gap), np.maximum(x, gap))


@given(shapes, st.integers(0, 2**32 - 1))
def test_reference_gradient(shape, seed):
    rng = np.random.default_rng(seed)
    x = signed(rng, shape)
    directional_check(relu.forward_ref,
                      lambda x, dy: (relu.backward_ref(relu.forward_ref(x), dy),),
                      [x], wrt=[0], rng=rng)


def test_reference_gradient_sees_both_signs():
    """The draw above must give negative inputs too, or a backward that passes every
    gradient through (dx = dy) would pass the check."""
    x = signed(np.random.default_rng(0), (1000,))
    assert 0.4 < (x < 0).mean() < 0.6
    dy = np.ones_like(x)
    np.testing.assert_array_equal(relu.backward_ref(relu.forward_ref(x), dy), x > 0)


def test_gradient_at_zero_is_zero():
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(relu.backward_ref(relu.forward_ref(x), np.ones(3)),
                                  [0.0, 0.0, 1.0])


def check_kernels(x, dy, **launch):
    y = empty(x.shape)
    relu.forward(dev(x), y, **launch)
    assert_close(y, relu.forward_ref(x), "forward")
    dx = empty(x.shape)
    relu.backward(y, dev(dy), dx, **launch)
    assert_close(dx, relu.backward_ref(relu.forward_ref(x), dy), "backward")


@kernel_settings
@given(shapes, st.integers(0, 2**32 - 1))
def test_kernels_match_reference(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[0] = 0.0  # the kink, deliberately
    check_kernels(x, rng.standard_normal(shape).astype(np.float32))


# 100 elements: blocks of 32 -> 4 blocks, the last one partial; capped at 2 blocks -> a
# stride of 64 and two passes, the second partial; capped at 1 -> four passes.
@pytest.mark.parametrize("max_blocks", [relu.MAX_BLOCKS, 2, 1])
def test_kernels_over_blocks_and_passes(max_blocks):
    rng = np.random.default_rng(1)
    x, dy = (rng.standard_normal((4, 25)).astype(np.float32) for _ in range(2))
    with split_on_every_axis() if max_blocks > 1 else nullcontext():
        check_kernels(x, dy, threads=32, max_blocks=max_blocks)


def test_launchers_reject_bad_arguments():
    with pytest.raises(ValueError, match="float32"):
        relu.forward(dev(np.zeros(3), np.float64), empty((3,)))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        relu.forward(dev(np.zeros(3)), empty((4,)))
    with pytest.raises(ValueError, match="threads per block"):
        relu.forward(dev(np.zeros(3)), empty((3,)), threads=2048)
    with pytest.raises(ValueError, match="max_blocks"):
        relu.backward(dev(np.zeros(3)), dev(np.zeros(3)), empty((3,)), max_blocks=0)
