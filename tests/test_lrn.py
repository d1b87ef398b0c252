"""LRN: a loop oracle, reference against finite differences (a large alpha, so the
normalisation term matters, and AlexNet's constants), kernels against the reference."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from helpers import (assert_close, dev, directional_check, empty, kernel_settings,
                     split_on_every_axis)
from kernels import lrn

ALEXNET = dict(size=5, k=2.0, alpha=1e-4, beta=0.75)

shapes = st.tuples(st.integers(1, 2), st.integers(1, 7), st.integers(1, 3),
                   st.integers(1, 3))
# Sizes 1..6 (even ones too, and windows wider than C); alpha large enough to matter.
params = st.fixed_dictionaries(dict(
    size=st.integers(1, 6), k=st.floats(0.5, 2.0), alpha=st.floats(0.1, 1.0),
    beta=st.floats(0.25, 1.0))) | st.just(ALEXNET)


def loop_lrn(x, size, k, alpha, beta):
    """The oracle: Python loops, the AlexNet formula with window [c - size//2, c + (size-1)//2]."""
    N, C, H, W = x.shape
    y = np.empty_like(x)
    for n, c, h, w in np.ndindex(x.shape):
        lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        s = k + alpha * sum(x[n, j, h, w] ** 2 for j in range(lo, hi + 1))
        y[n, c, h, w] = x[n, c, h, w] / s ** beta
    return y


@pytest.mark.parametrize("p", [ALEXNET, dict(size=3, k=1.0, alpha=0.5, beta=0.75),
                               dict(size=4, k=1.0, alpha=0.5, beta=0.75)])
def test_forward_matches_loop_oracle(p):
    x = np.random.default_rng(0).standard_normal((2, 7, 2, 3)) * 3
    np.testing.assert_allclose(lrn.forward_ref(x, **p), loop_lrn(x, **p), rtol=1e-12)


@given(shapes, params, st.integers(0, 2**32 - 1))
def test_reference_gradient(shape, p, seed):
    rng = np.random.default_rng(seed)
    directional_check(lambda x: lrn.forward_ref(x, **p),
                      lambda x, dy: (lrn.backward_ref(x, dy, **p),),
                      [rng.standard_normal(shape) * 3], wrt=[0], rng=rng)


def check_kernels(shape, p, seed, **launch):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = empty(shape)
    lrn.forward(dev(x), y, **p, **launch)
    assert_close(y, lrn.forward_ref(x, **p), "forward")
    dx = empty(shape)
    lrn.backward(dev(x), dev(dy), dx, **p, **launch)
    assert_close(dx, lrn.backward_ref(x, dy, **p), "backward")


@kernel_settings
@example((2, 7, 3, 3), ALEXNET, 0)
@example((1, 1, 1, 1), dict(size=5, k=1.0, alpha=1.0, beta=0.75), 0)
@example((1, 6, 1, 2), dict(size=4, k=1.0, alpha=0.5, beta=0.75), 0)  # even: lopsided window
@given(shapes, params, st.integers(0, 2**32 - 1))
def test_kernels_match_reference(shape, p, seed):
    check_kernels(shape, p, seed)


def test_kernels_over_several_blocks():
    """(2, 5, 3, 3) is 90 elements: 3 blocks of 32, the last partial."""
    with split_on_every_axis():
        check_kernels((2, 5, 3, 3), dict(size=3, k=1.0, alpha=0.5, beta=0.75), 3, threads=32)


def test_launchers_reject_bad_arguments():
    x = dev(np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"y has shape \(1, 3, 2, 3\)"):
        lrn.forward(x, empty((1, 3, 2, 3)), **ALEXNET)
    with pytest.raises(ValueError, match="float32"):
        lrn.backward(x, dev(np.zeros((1, 3, 2, 2)), np.float64), empty((1, 3, 2, 2)), **ALEXNET)
    with pytest.raises(ValueError, match="k > 0"):
        lrn.forward(x, empty((1, 3, 2, 2)), 5, 0.0, 1e-4, 0.75)


def test_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 7, 3, 3)) * 3
    for size in (5, 4):
        p = dict(ALEXNET, size=size, alpha=0.5)
        want = torch.nn.functional.local_response_norm(  # torch's alpha is per channel
            torch.from_numpy(x), size, alpha=p["alpha"] * size, beta=p["beta"], k=p["k"])
        np.testing.assert_allclose(lrn.forward_ref(x, **p), want.numpy(), rtol=1e-10)


@pytest.mark.parametrize("alpha, beta", [(0.0, 0.75), (0.5, 0.0)])
def test_alpha_or_beta_zero_is_allowed(alpha, beta):
    """alpha = 0 or beta = 0 is the scaling x * k^-beta (or the identity): legal limits."""
    x = np.random.default_rng(2).standard_normal((1, 3, 2, 2)).astype(np.float32)
    y = empty(x.shape)
    lrn.forward(dev(x), y, 3, 2.0, alpha, beta)
    assert_close(y, lrn.forward_ref(x, 3, 2.0, alpha, beta), "forward")
