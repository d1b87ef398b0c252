"""Dropout: the mask's statistics and reproducibility, the reference's gradient, and the
kernel against the reference bit for bit."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import assert_close, dev, directional_check, empty, host
from kernels import dropout

# <= 216 elements: one 256-thread block (the grid-stride test below covers several)
shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)
seeds = st.integers(0, 2**32 - 1)
ps = st.sampled_from([0.0, 0.1, 0.5, 0.9])


@given(shapes, ps, seeds)
def test_reference_gradient(shape, p, seed):
    rng = np.random.default_rng(seed)
    directional_check(lambda x: dropout.forward_ref(x, p, seed),
                      lambda x, dy: (dropout.backward_ref(dy, p, seed),),
                      [rng.standard_normal(shape)], wrt=[0], rng=rng)


def test_mask_is_reproducible_and_differs_across_seeds():
    a = dropout.mask_ref((1000,), 0.5, 7)
    np.testing.assert_array_equal(a, dropout.mask_ref((1000,), 0.5, 7))
    assert (a != dropout.mask_ref((1000,), 0.5, 8)).mean() > 0.4  # ~0.5 for independent masks
    assert (a != dropout.mask_ref((1000,), 0.5, 2**32 - 1)).mean() > 0.4


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 123456789])
def test_mask_keeps_one_minus_p(p, seed):
    # 100k Bernoulli(1-p) draws: the standard deviation of the fraction is <= 0.0016, so
    # 0.01 is over six of them (deterministic for a fixed seed anyway).
    keep = dropout.mask_ref((100_000,), p, seed)
    assert abs(keep.mean() - (1 - p)) < 0.01
    # Neighbours are independent: runs of kept elements are not correlated with the index.
    assert abs((keep[1:] & keep[:-1]).mean() - (1 - p) ** 2) < 0.01


def test_expectation_is_preserved():
    x = np.full(100_000, 3.0, dtype=np.float32)
    assert abs(dropout.forward_ref(x, 0.5, 42).mean() - 3.0) < 0.05


def test_p_zero_is_identity():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(dropout.forward_ref(x, 0.0, 9), x)
    y = empty(x.shape)
    dropout.forward(dev(x), y, 0.0, 9)
    np.testing.assert_array_equal(host(y), x)


@given(shapes, ps, seeds)
def test_kernel_matches_reference(shape, p, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    y = empty(shape)
    dropout.forward(dev(x), y, p, seed)
    np.testing.assert_array_equal(host(y) != 0, dropout.mask_ref(shape, p, seed))
    assert_close(y, dropout.forward_ref(x, p, seed), "forward")
    dx = empty(shape)
    dropout.backward(dev(x), dx, p, seed)
    assert_close(dx, dropout.backward_ref(x, p, seed), "backward")


def test_kernel_grid_stride_covers_every_element():
    """A grid far smaller than the array (64 threads, 3000 elements): every element is
    visited by the stride loop, and every hash matches the reference bit for bit."""
    T, p, seed = 3000, 0.3, 2**31 + 5
    y = empty((T,))
    dropout.dropout_v1[2, 32](dev(np.ones(T)), y, np.uint32(dropout._threshold(p)),
                              np.float32(1.0), np.uint32(dropout.key_ref(seed)))
    np.testing.assert_array_equal(host(y) != 0, dropout.mask_ref((T,), p, seed))


def test_launchers_reject_bad_arguments():
    x = dev(np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout.forward(x, empty((4,)), 1.0, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout.backward(x, empty((4,)), -0.1, 0)
    with pytest.raises(ValueError, match="seed"):
        dropout.forward(x, empty((4,)), 0.5, 2**32)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        dropout.forward(x, empty((5,)), 0.5, 0)
    with pytest.raises(ValueError, match="float32"):
        dropout.forward(dev(np.zeros(4), np.float64), empty((4,)), 0.5, 0)
