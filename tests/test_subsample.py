"""LeNet-5's trainable sub-sampling: the reference against loops and finite differences;
the kernels against the reference (odd sizes whose last rows no window reaches,
overlapping and gapped windows, several blocks on every grid axis); the launchers' checks;
PyTorch's average pooling (coef 1, bias 0) if present."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from helpers import (assert_close, dev, directional_check, empty, kernel_settings,
                     split_on_every_axis)
from kernels import subsample


@st.composite
def cases(draw, max_side=7):
    """(N, C, H, W, window, stride): window 1..3 and stride 1..3, so windows overlap
    (stride < window), tile (equal) or leave gaps (stride > window)."""
    window, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(window, max_side)), draw(st.integers(window, max_side))
    return draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W, window, stride


def arrays(case, seed, dtype=np.float64):
    N, C, H, W, window, stride = case
    P, Q = subsample.output_size(H, W, window, stride)
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype)
            for s in [(N, C, H, W), (C,), (C,), (N, C, P, Q)]]


def test_forward_matches_loops():
    """LeNet's S2 on a 5x5 map: four 2x2 windows; the last row and column are left out."""
    x, coef, bias, _ = arrays((2, 3, 5, 5, 2, 2), seed=0)
    want = np.zeros((2, 3, 2, 2))
    for n, c, p, q in np.ndindex(2, 3, 2, 2):
        want[n, c, p, q] = coef[c] * x[n, c, 2 * p:2 * p + 2, 2 * q:2 * q + 2].mean() + bias[c]
    np.testing.assert_allclose(subsample.forward_ref(x, coef, bias), want, rtol=1e-12)


@given(cases(), st.integers(0, 2**32 - 1))
def test_reference_gradient(case, seed):
    *_, window, stride = case
    directional_check(lambda x, c, b: subsample.forward_ref(x, c, b, window, stride),
                      lambda x, c, b, dy: subsample.backward_ref(x, c, dy, window, stride),
                      arrays(case, seed)[:3], wrt=[0, 1, 2], rng=np.random.default_rng(seed))


def run_kernels(case, seed, threads=subsample.THREADS):
    N, C, H, W, window, stride = case
    x, coef, bias, dy = arrays(case, seed, np.float32)
    dx_want, dcoef_want, dbias_want = subsample.backward_ref(x, coef, dy, window, stride)
    y, dx, dcoef, dbias = empty(dy.shape), empty(x.shape), empty((C,)), empty((C,))
    subsample.forward(dev(x), dev(coef), dev(bias), y, window, stride, threads)
    assert_close(y, subsample.forward_ref(x, coef, bias, window, stride), "forward")
    subsample.backward_data(dev(dy), dev(coef), dx, window, stride, threads)
    assert_close(dx, dx_want, "backward_data")
    subsample.backward_params(dev(x), dev(dy), dcoef, dbias, window, stride)
    assert_close(dcoef, dcoef_want, "dcoef")
    assert_close(dbias, dbias_want, "dbias")


@kernel_settings
@given(cases(), st.integers(0, 2**32 - 1))
@example((2, 1, 18, 16, 2, 2), 0)  # 144 outputs per map: more than a parameter block's 128
def test_kernels_match_reference(case, seed):
    run_kernels(case, seed)


def test_kernels_over_several_blocks():
    """Blocks of 8 threads: forward 2*2*2*3 = 24 outputs in 3 blocks, backward_data 2*2*5*7
    = 140 pixels in 18; backward_params one block per channel, 2."""
    with split_on_every_axis():
        run_kernels((2, 2, 5, 7, 2, 2), seed=1, threads=8)


def test_launchers_reject_bad_arguments():
    x, c, y = dev(np.zeros((1, 2, 4, 4))), dev(np.zeros(2)), empty((1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"subsample y has shape \(1, 2, 2, 2\), expected "
                                         r"\(1, 2, 3, 3\)"):
        subsample.forward(x, c, c, y, window=2, stride=1)
    with pytest.raises(ValueError, match="subsample coef has shape"):
        subsample.forward(x, dev(np.zeros(3)), c, y)
    with pytest.raises(ValueError, match="does not fit"):
        subsample.backward_data(y, c, dev(np.zeros((1, 2, 1, 4))))
    with pytest.raises(ValueError, match="float32"):
        subsample.backward_params(dev(np.zeros((1, 2, 4, 4)), np.float64), y, c, c)
    with pytest.raises(ValueError, match="window and stride >= 1"):
        subsample.forward(x, c, c, y, window=0)


def test_is_average_pooling_in_torch_with_coef_1_and_bias_0():
    torch = pytest.importorskip("torch")
    x, _, _, dy = arrays((2, 3, 7, 6, 2, 2), seed=3)
    ones, zeros = np.ones(3), np.zeros(3)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, 2, 2)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(subsample.forward_ref(x, ones, zeros), ty.detach().numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(subsample.backward_ref(x, ones, dy)[0], tx.grad.numpy(),
                               rtol=1e-12)
