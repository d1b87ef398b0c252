"""ReLU: reference against finite differences; kernels against the reference."""
import numpy as np
from hypothesis import given, strategies as st

from helpers import assert_close, dev, directional_check, empty
from kernels import relu

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


def away_from_zero(rng, shape, gap=1e-2):
    """Values with |x| >= gap, so +-eps steps never cross the kink at 0."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < gap, gap, x) * np.sign(x + 1e-12)


@given(shapes, st.integers(0, 2**32 - 1))
def test_reference_gradient(shape, seed):
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng, shape)
    directional_check(relu.forward_ref,
                      lambda x, dy: (relu.backward_ref(relu.forward_ref(x), dy),),
                      [x], wrt=[0], rng=rng)


def test_gradient_at_zero_is_zero():
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(relu.backward_ref(relu.forward_ref(x), np.ones(3)),
                                  [0.0, 0.0, 1.0])


@given(shapes, st.integers(0, 2**32 - 1))
def test_kernels_match_reference(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[0] = 0.0  # the kink, deliberately
    dy = rng.standard_normal(shape).astype(np.float32)
    y = empty(shape)
    relu.forward(dev(x), y)
    assert_close(y, relu.forward_ref(x), "forward")
    dx = empty(shape)
    relu.backward(y, dev(dy), dx)
    assert_close(dx, relu.backward_ref(relu.forward_ref(x), dy), "backward")


def test_launcher_rejects_bad_arguments():
    import pytest
    with pytest.raises(ValueError, match="float32"):
        relu.forward(dev(np.zeros(3), np.float64), empty((3,)))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        relu.forward(dev(np.zeros(3)), empty((4,)))
