"""Average pool. Global: a loop oracle, reference against finite differences, kernels
against the reference (rows shorter and longer than the block, one pixel, odd sizes).
Windowed: sizes by hand (GoogLeNet's), a loop oracle, reference against finite
differences, kernels against the reference (Caffe's ceil mode, whose clipped last window
is averaged over the pixels it holds), PyTorch forward and backward."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from helpers import (assert_close, dev, directional_check, empty, kernel_settings,
                     split_on_every_axis)
from kernels import avgpool

shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9),
                   st.integers(1, 9))


def test_forward_matches_loop_oracle():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    want = [[sum(x[n, c, h, w] for h in range(4) for w in range(5)) / 20 for c in range(3)]
            for n in range(2)]
    np.testing.assert_allclose(avgpool.forward_ref(x), want, rtol=1e-12)


@given(shapes, st.integers(0, 2**32 - 1))
def test_reference_gradient(shape, seed):
    rng = np.random.default_rng(seed)
    directional_check(avgpool.forward_ref,
                      lambda x, dy: (avgpool.backward_ref(dy, *x.shape[2:]),),
                      [rng.standard_normal(shape)], wrt=[0], rng=rng)


def check_kernels(shape, seed, **launch):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape[:2]).astype(np.float32)
    y = empty(shape[:2])
    avgpool.forward(dev(x), y)
    assert_close(y, avgpool.forward_ref(x), "forward")
    dx = empty(shape)
    avgpool.backward(dev(dy), dx, **launch)
    assert_close(dx, avgpool.backward_ref(dy, *shape[2:]), "backward")


# 9x9 = 81 > BLOCK = 64 pixels: some threads sum two; 1x1: all but one thread sum nothing.
@kernel_settings
@example((2, 3, 9, 9), 0)
@example((1, 1, 1, 1), 0)
@given(shapes, st.integers(0, 2**32 - 1))
def test_kernels_match_reference(shape, seed):
    check_kernels(shape, seed)


def test_kernels_over_several_blocks():
    """Forward: one block per (n, c), 6 blocks, rows of 81 > BLOCK pixels. Backward: 486
    elements in blocks of 32, 16 blocks, the last partial."""
    with split_on_every_axis():
        check_kernels((2, 3, 9, 9), 1, threads=32)


def test_launchers_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"y has shape \(2, 4\), expected \(2, 3\)"):
        avgpool.forward(dev(np.zeros((2, 3, 4, 4))), empty((2, 4)))
    with pytest.raises(ValueError, match="float32"):
        avgpool.forward(dev(np.zeros((2, 3, 4, 4)), np.float64), empty((2, 3)))
    with pytest.raises(ValueError, match="dimensions"):
        avgpool.backward(dev(np.zeros((2, 3))), empty((2, 3, 4)))
    with pytest.raises(ValueError, match="no pixels"):
        avgpool.forward(dev(np.zeros((2, 3, 0, 4))), empty((2, 3)))


def test_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 7))
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), 1).numpy()[..., 0, 0]
    np.testing.assert_allclose(avgpool.forward_ref(x), want)


@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (2, 3, 4, 0)])
def test_launchers_refuse_an_empty_map_in_one_line(shape):
    with pytest.raises(ValueError, match="no pixels to average"):
        avgpool.forward(dev(np.zeros(shape)), empty(shape[:2]))


# ----------------------------------------------------------------------------------------
# Windowed average pooling

# (window, stride): GoogLeNet's 5x5/3 (auxiliary classifiers) and 7x7/1 (before its last
# layer), overlapping 3x3/2, side-by-side 2x2/2, a dense 3x3/1.
window_configs = st.sampled_from([(2, 2), (3, 2), (3, 1), (5, 3), (7, 1)])


@st.composite
def window_cases(draw):
    """(x shape, window, stride, ceil_mode), sizes from the window up to 9, odd included."""
    window, stride = draw(window_configs)
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(window, 9)), draw(st.integers(window, 9))
    return (N, C, H, W), window, stride, draw(st.booleans())


# Edges drawn every run: ceil mode's clipped last windows (2x2/2 on 7 keeps one row,
# 3x3/2 on 6 two, 5x5/3 on 9: 5x5, 5x5 and a 3-row window), a map exactly one window
# (GoogLeNet's 7x7/1 on 7), an odd map under the dense 3x3/1, floor mode leaving rows no
# window reads (their gradient is 0).
WINDOW_EDGES = [((1, 1, 7, 8), 2, 2, True), ((1, 2, 6, 7), 3, 2, True),
                ((1, 1, 9, 8), 5, 3, True), ((2, 3, 7, 7), 7, 1, False),
                ((1, 2, 5, 9), 3, 1, True), ((1, 1, 9, 7), 5, 3, False)]


def window_edges(test):
    for case in WINDOW_EDGES:
        test = example(case, 0)(test)
    return test


def loop_window_mean(x, window, stride, P, Q):
    """The oracle: Python loops over each window's rows and columns, skipping those past
    the border, and the mean of the pixels left."""
    N, C, H, W = x.shape
    y = np.empty((N, C, P, Q))
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    inside = [x[n, c, h, w]
                              for h in range(p * stride, p * stride + window) if h < H
                              for w in range(q * stride, q * stride + window) if w < W]
                    y[n, c, p, q] = sum(inside) / len(inside)
    return y


@pytest.mark.parametrize("H, window, stride, floor, ceil", [
    (14, 5, 3, 4, 4),       # GoogLeNet's auxiliary classifiers: 14x14 -> 4x4
    (7, 7, 1, 1, 1),        # GoogLeNet's last pool: 7x7 -> 1x1
    (112, 3, 2, 55, 56),    # GoogLeNet's 3x3/2 ceil sizes (as max-pool)
    (56, 3, 2, 27, 28),
    (28, 3, 2, 13, 14),
    (14, 3, 2, 6, 7),
    (6, 3, 2, 2, 3),        # ceil adds a window at 4 holding rows 4, 5
    (7, 2, 2, 3, 4),        # ceil adds a window holding row 6 alone
    (5, 1, 3, 2, 2),        # ceil would start a window at 6 >= 5: dropped
])
def test_window_output_size_by_hand(H, window, stride, floor, ceil):
    assert avgpool.window_output_size(H, H, window, stride) == (floor, floor)
    assert avgpool.window_output_size(H, H, window, stride, ceil_mode=True) == (ceil, ceil)


def test_window_output_size_rejects_bad_arguments():
    with pytest.raises(ValueError, match="input 4x7 is smaller than the 5x5 window"):
        avgpool.window_output_size(4, 7, 5, 3)
    with pytest.raises(ValueError, match="input 7x6 is smaller than the 7x7 window"):
        avgpool.window_output_size(7, 6, 7, 1)
    for window, stride in [(0, 1), (3, 0)]:
        with pytest.raises(ValueError, match=f"window {window} and stride {stride} must be"):
            avgpool.window_output_size(7, 7, window, stride)


@pytest.mark.parametrize("window, stride", [(3, 2), (5, 3), (2, 2), (3, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_window_forward_matches_loop_oracle(window, stride, ceil_mode):
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 9))
    P, Q = avgpool.window_output_size(7, 9, window, stride, ceil_mode)
    np.testing.assert_allclose(avgpool.window_forward_ref(x, window, stride, ceil_mode),
                               loop_window_mean(x, window, stride, P, Q), rtol=1e-12)


def test_clipped_window_is_averaged_over_the_pixels_it_holds():
    """Caffe's rule by hand: 2x2/2 ceil on a 3x3 map of 1..9. The last row and column of
    windows hold 2, 2 and 1 pixels; dividing by 4 would give 4.25, 3.75, 2.25."""
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    want = [[(1 + 2 + 4 + 5) / 4, (3 + 6) / 2], [(7 + 8) / 2, 9]]
    np.testing.assert_array_equal(avgpool.window_forward_ref(x, 2, 2, True)[0, 0], want)
    y = empty((1, 1, 2, 2))
    avgpool.window_forward(dev(x), y, 2, 2)
    assert_close(y[0, 0], want, "kernel")
    # backward: each window's dy shared equally among its pixels
    dx = avgpool.window_backward_ref(np.ones((1, 1, 2, 2)), 3, 3, 2, 2)
    np.testing.assert_array_equal(dx[0, 0], [[0.25, 0.25, 0.5], [0.25, 0.25, 0.5],
                                             [0.5, 0.5, 1.0]])


@window_edges
@given(window_cases(), st.integers(0, 2**32 - 1))
def test_window_reference_gradient(case, seed):
    shape, window, stride, ceil_mode = case
    rng = np.random.default_rng(seed)
    directional_check(
        lambda x: avgpool.window_forward_ref(x, window, stride, ceil_mode),
        lambda x, dy: (avgpool.window_backward_ref(dy, *x.shape[2:], window, stride),),
        [rng.standard_normal(shape)], wrt=[0], rng=rng)


def check_window_kernels(shape, window, stride, ceil_mode, seed, **launch):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    P, Q = avgpool.window_output_size(*shape[2:], window, stride, ceil_mode)
    y = empty(shape[:2] + (P, Q))
    avgpool.window_forward(dev(x), y, window, stride, **launch)
    assert_close(y, avgpool.window_forward_ref(x, window, stride, ceil_mode), "forward")
    dy = rng.standard_normal(shape[:2] + (P, Q)).astype(np.float32)
    dx = empty(shape)
    avgpool.window_backward(dev(dy), dx, window, stride, **launch)
    assert_close(dx, avgpool.window_backward_ref(dy, *shape[2:], window, stride), "backward")


@kernel_settings
@window_edges
@given(window_cases(), st.integers(0, 2**32 - 1))
def test_window_kernels_match_reference(case, seed):
    check_window_kernels(*case, seed)


@pytest.mark.parametrize("window, stride, ceil_mode", [(3, 2, True), (5, 3, True)])
def test_window_kernels_over_several_blocks(window, stride, ceil_mode):
    """Blocks of 32 threads: y (2, 3, 4, 4) is 96 outputs, 3 blocks (5x5/3: y (2, 3, 3, 2),
    36 outputs, 2 blocks, the last partial); dx (2, 3, 9, 8) 432 inputs, 14 blocks. A
    kernel that took its index from threadIdx alone would leave the outputs of every block
    but the first unwritten (NaN)."""
    with split_on_every_axis():
        check_window_kernels((2, 3, 9, 8), window, stride, ceil_mode, 2, threads=32)


def test_window_launchers_reject_bad_arguments():
    x = dev(np.zeros((1, 2, 14, 14)))
    with pytest.raises(ValueError, match=r"average-pool y has shape \(1, 2, 5, 5\) for x "
                                         r"\(1, 2, 14, 14\), window 5, stride 3: expected "
                                         r"\(1, 2, 4, 4\)"):
        avgpool.window_forward(x, empty((1, 2, 5, 5)), 5, 3)
    with pytest.raises(ValueError, match=r"average-pool y has shape \(1, 3, 4, 4\)"):
        avgpool.window_forward(x, empty((1, 3, 4, 4)), 5, 3)  # channels disagree
    with pytest.raises(ValueError, match=r"average-pool dy has shape \(1, 2, 5, 5\) for dx "
                                         r"\(1, 2, 7, 7\), window 2, stride 2: expected "
                                         r"\(1, 2, 3, 3\) or \(1, 2, 4, 4\)"):
        avgpool.window_backward(dev(np.zeros((1, 2, 5, 5))), empty((1, 2, 7, 7)), 2, 2)
    with pytest.raises(ValueError, match="input 4x4 is smaller than the 5x5 window"):
        avgpool.window_forward(dev(np.zeros((1, 2, 4, 4))), empty((1, 2, 1, 1)), 5, 3)
    with pytest.raises(ValueError, match="average-pool x must be float32"):
        avgpool.window_forward(dev(np.zeros((1, 2, 7, 7)), np.float64), empty((1, 2, 1, 1)),
                               7, 1)
    with pytest.raises(ValueError, match="average-pool dy must have 4 dimensions"):
        avgpool.window_backward(dev(np.zeros((1, 2))), empty((1, 2, 7, 7)), 7, 1)
    with pytest.raises(ValueError, match="window 0 and stride 1 must be >= 1"):
        avgpool.window_forward(x, empty((1, 2, 14, 14)), 0, 1)


@pytest.mark.parametrize("window, stride, ceil_mode", [(5, 3, False), (3, 2, True),
                                                       (2, 2, True), (7, 1, False)])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_window_matches_torch_forward_and_backward(window, stride, ceil_mode,
                                                   count_include_pad):
    """Without padding PyTorch divides a clipped ceil-mode window by the pixels it holds
    whichever count_include_pad: Caffe's rule, as the module docstring says."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8))
    t = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.avg_pool2d(t, window, stride, ceil_mode=ceil_mode,
                                       count_include_pad=count_include_pad)
    assert y.shape[2:] == avgpool.window_output_size(9, 8, window, stride, ceil_mode)
    dy = rng.standard_normal(tuple(y.shape))
    y.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(avgpool.window_forward_ref(x, window, stride, ceil_mode),
                               y.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(avgpool.window_backward_ref(dy, 9, 8, window, stride),
                               t.grad.numpy(), rtol=1e-12, atol=1e-12)
