"""Max-pool: sizes by hand, a loop oracle, reference against finite differences (away from
ties; ties on their own), kernels against the reference, with and without padding
(GoogLeNet's 3x3/1 pad 1 branch), PyTorch forward and backward."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from helpers import (assert_close, dev, directional_check, empty, host, kernel_settings,
                     split_on_every_axis)
from kernels import pool

# (window, stride): VGG's 2x2/2, AlexNet's overlapping 3x3/2, and a dense 3x3/1.
configs = st.sampled_from([(2, 2), (3, 2), (3, 1)])


@st.composite
def cases(draw):
    """(x shape, window, stride, ceil_mode, pad), pad in [0, window), sizes from the padded
    window (one pixel with 3x3 pad 1) up to 9, odd included."""
    window, stride = draw(configs)
    pad = draw(st.integers(0, window - 1))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    low = max(1, window - 2 * pad)
    H, W = draw(st.integers(low, 9)), draw(st.integers(low, 9))
    return (N, C, H, W), window, stride, draw(st.booleans()), pad


# Edges drawn every run: clipped last windows in ceil mode (7 = 3 + 2*2, +1 row over for
# 2x2/2 on 7), an input exactly one window, the dense 3x3/1; with padding: GoogLeNet's
# 3x3/1 pad 1 on odd sizes, 3x3/2 pad 1 in ceil mode on 8 (the last window holds one row
# and two padding rows), 2x2/2 pad 1 on 5 (ceil's extra window would start in the right
# padding: dropped), one pixel under a 3x3 pad 1 window, pad 2 = window - 1.
EDGES = [((1, 1, 7, 8), 2, 2, True, 0), ((1, 1, 6, 7), 3, 2, True, 0),
         ((2, 3, 2, 2), 2, 2, False, 0), ((1, 2, 9, 5), 3, 1, True, 0),
         ((1, 2, 5, 7), 3, 1, False, 1), ((1, 1, 8, 7), 3, 2, True, 1),
         ((1, 1, 5, 5), 2, 2, True, 1), ((2, 1, 1, 1), 3, 1, False, 1),
         ((1, 2, 2, 3), 3, 2, True, 2)]


def edges(test):
    for case in EDGES:
        test = example(case, 0)(test)
    return test


def distinct(rng, shape):
    """A random permutation of 0, 1/n, 2/n, ...: no ties, eps-steps never reorder values,
    and magnitudes below 1 (so the finite differences' rounding stays below tolerance)."""
    n = int(np.prod(shape))
    return rng.permutation(n).reshape(shape).astype(np.float64) / n


def loop_max_pool(x, window, stride, P, Q, pad=0):
    """The oracle: Python loops over every offset (i, j) of every window, skipping the
    offsets that fall in the padding or past the border (ceil mode's clipped windows)."""
    N, C, H, W = x.shape
    y = np.empty((N, C, P, Q))
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    inside = [x[n, c, h, w]
                              for i in range(window) for j in range(window)
                              for h, w in [(p * stride - pad + i, q * stride - pad + j)]
                              if 0 <= h < H and 0 <= w < W]
                    y[n, c, p, q] = max(inside)  # an empty window would raise here
    return y


@pytest.mark.parametrize("H, window, stride, floor, ceil", [
    (7, 2, 2, 3, 4),    # ceil keeps the last row alone in a clipped window
    (6, 3, 2, 2, 3),    # windows at 0, 2 (floor); ceil adds one at 4 holding rows 4, 5
    (8, 2, 2, 4, 4),    # exact fit: the modes agree
    (224, 2, 2, 112, 112),
    (55, 3, 2, 27, 27),  # AlexNet's first pool
    (5, 1, 3, 2, 2),    # ceil would start a window at 6 >= 5: dropped
])
def test_output_size_by_hand(H, window, stride, floor, ceil):
    assert pool.output_size(H, H, window, stride) == (floor, floor)
    assert pool.output_size(H, H, window, stride, ceil_mode=True) == (ceil, ceil)


@pytest.mark.parametrize("H, window, stride, pad, floor, ceil", [
    (112, 3, 2, 0, 55, 56),  # GoogLeNet's pools, all 3x3/2 in ceil mode (Caffe)
    (56, 3, 2, 0, 27, 28),
    (28, 3, 2, 0, 13, 14),
    (14, 3, 2, 0, 6, 7),
    (28, 3, 1, 1, 28, 28),   # GoogLeNet's Inception branch: 3x3/1 pad 1 keeps the size
    (7, 3, 1, 1, 7, 7),
    (1, 3, 1, 1, 1, 1),      # one pixel, padded to 3x3
    (8, 3, 2, 1, 4, 5),      # ceil adds a window at 7 (rows 7, 8, 9: one row of x)
    (5, 2, 2, 1, 3, 3),      # ceil's window 3 would start at 6 - 1 = 5 = H: in the padding
    (4, 3, 2, 2, 3, 3),      # pad = window - 1: windows at -2, 0, 2; ceil's at 4 = H dropped
])
def test_output_size_with_padding_by_hand(H, window, stride, pad, floor, ceil):
    assert pool.output_size(H, H, window, stride, pad=pad) == (floor, floor)
    assert pool.output_size(H, H, window, stride, ceil_mode=True, pad=pad) == (ceil, ceil)


def test_output_size_rejects_input_smaller_than_window():
    with pytest.raises(ValueError, match="2x5"):
        pool.output_size(2, 5, 3, 2)
    with pytest.raises(ValueError, match="input 1x5 padded by 1 is smaller than the 4x4"):
        pool.output_size(1, 5, 4, 1, pad=1)
    assert pool.output_size(1, 5, 3, 1, pad=1) == (1, 5)  # padded to 3x7: fits


@pytest.mark.parametrize("pad", [3, 4, -1])
def test_output_size_rejects_padding_outside_zero_to_window(pad):
    """pad >= window would make windows of padding alone, whose max is -inf."""
    with pytest.raises(ValueError, match=rf"padding {pad} must be in \[0, 3\)"):
        pool.output_size(7, 7, 3, 2, pad=pad)


@pytest.mark.parametrize("window, stride, pad", [(3, 2, 0), (3, 2, 1), (3, 2, 2), (3, 1, 1),
                                                 (2, 2, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_forward_matches_loop_oracle(window, stride, pad, ceil_mode):
    x = distinct(np.random.default_rng(0), (2, 2, 7, 6))
    P, Q = pool.output_size(7, 6, window, stride, ceil_mode, pad)
    np.testing.assert_array_equal(pool.forward_ref(x, window, stride, ceil_mode, pad),
                                  loop_max_pool(x, window, stride, P, Q, pad))


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_padding_never_wins(ceil_mode):
    """All of x below 0: zero padding would win every border window; -inf never does."""
    rng = np.random.default_rng(4)
    x = distinct(rng, (1, 2, 5, 6)) - 2  # in [-2, -1)
    P, Q = pool.output_size(5, 6, 3, 2, ceil_mode, pad=1)
    want = loop_max_pool(x, 3, 2, P, Q, pad=1)
    assert (want < -1).all()
    np.testing.assert_array_equal(pool.forward_ref(x, 3, 2, ceil_mode, pad=1), want)
    y = empty((1, 2, P, Q))
    pool.forward(dev(x), y, 3, 2, pad=1)
    assert_close(y, want, "kernel")


@edges
@given(cases(), st.integers(0, 2**32 - 1))
def test_reference_gradient(case, seed):
    shape, window, stride, ceil_mode, pad = case
    rng = np.random.default_rng(seed)
    directional_check(lambda x: pool.forward_ref(x, window, stride, ceil_mode, pad),
                      lambda x, dy: (pool.backward_ref(x, dy, window, stride, ceil_mode,
                                                       pad=pad),),
                      [distinct(rng, shape)], wrt=[0], rng=rng)


def test_reference_backward_takes_forward_argmax():
    """backward_ref(arg=forward_ref_arg's) equals backward_ref recomputing it, padded."""
    rng = np.random.default_rng(6)
    x = rng.integers(-2, 3, (2, 2, 5, 6)).astype(np.float64)  # ties on purpose
    y, arg = pool.forward_ref_arg(x, 3, 2, True, pad=1)
    np.testing.assert_array_equal(y, pool.forward_ref(x, 3, 2, True, pad=1))
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(pool.backward_ref(x, dy, 3, 2, True, arg=arg, pad=1),
                                  pool.backward_ref(x, dy, 3, 2, True, pad=1))


# Ties: the whole gradient goes to the first maximum in row-major order (of the pixels
# inside x, when the window is padded).
TIES = [
    # 2x2/2: two 3s in the first window (the top-right one is first), all 0s in the second
    (np.array([[1, 3, 0, 0], [3, 0, 0, 0]]), 2, 2, 0,
     np.array([[0, 1, 1, 0], [0, 0, 0, 0]])),
    # 3x3/1 on a constant 4x4: every window's first maximum is its top-left pixel
    (np.ones((4, 4)), 3, 1, 0,
     np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])),
    # 3x3/1 pad 1 on a constant 3x3: window (p, q) covers rows p-1..p+1; its first pixel
    # inside x is (max(p-1, 0), max(q-1, 0)): (0, 0) is first in 4 windows, (0, 1) and
    # (1, 0) in 2, (1, 1) in 1; the last row and column are never first
    (np.ones((3, 3)), 3, 1, 1,
     np.array([[4, 2, 0], [2, 1, 0], [0, 0, 0]])),
    # 2x2/2 pad 1 on 0s: each window's first pixel inside x, every pixel once
    (np.zeros((2, 2)), 2, 2, 1,
     np.array([[1, 1], [1, 1]])),
]


@pytest.mark.parametrize("x, window, stride, pad, want", TIES)
def test_tie_gradient_goes_to_first_maximum(x, window, stride, pad, want):
    x = x[None, None].astype(np.float64)
    P, Q = pool.output_size(*x.shape[2:], window, stride, pad=pad)
    dx = pool.backward_ref(x, np.ones((1, 1, P, Q)), window, stride, pad=pad)
    np.testing.assert_array_equal(dx[0, 0], want)
    got = empty(x.shape)
    pool.backward(dev(x), dev(np.ones((1, 1, P, Q))), got, window, stride, pad=pad)
    np.testing.assert_array_equal(host(got)[0, 0], want)


def test_tie_among_minus_infinities_in_a_padded_window_goes_to_first_pixel_inside():
    """A window of -inf pixels whose top-left offset is padding: its gradient goes to its
    first pixel inside x (kernel and PyTorch), not to the padding (the reference once
    started each window's maximum at offset (0, 0) and lost these gradients)."""
    x = np.full((1, 1, 3, 3), -np.inf)
    want = np.array([[4, 2, 0], [2, 1, 0], [0, 0, 0]])  # as for the constant 3x3 in TIES
    got = empty(x.shape)
    pool.backward(dev(x), dev(np.ones((1, 1, 3, 3))), got, 3, 1, pad=1)
    np.testing.assert_array_equal(host(got)[0, 0], want)  # the kernel: right
    dx = pool.backward_ref(x, np.ones((1, 1, 3, 3)), 3, 1, pad=1)
    np.testing.assert_array_equal(dx[0, 0], want)  # the reference, as the kernel


def check_kernels(shape, window, stride, ceil_mode, pad, seed, **launch):
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, shape).astype(np.float32)  # few values: ties on purpose
    P, Q = pool.output_size(*shape[2:], window, stride, ceil_mode, pad)
    dy = rng.standard_normal(shape[:2] + (P, Q)).astype(np.float32)
    y = empty(shape[:2] + (P, Q))
    pool.forward(dev(x), y, window, stride, pad=pad, **launch)
    assert_close(y, pool.forward_ref(x, window, stride, ceil_mode, pad), "forward")
    dx = empty(shape)
    pool.backward(dev(x), dev(dy), dx, window, stride, pad=pad, **launch)
    assert_close(dx, pool.backward_ref(x, dy, window, stride, ceil_mode, pad=pad), "backward")


@kernel_settings
@edges
@given(cases(), st.integers(0, 2**32 - 1))
def test_kernels_match_reference(case, seed):
    check_kernels(*case, seed)


@pytest.mark.parametrize("window, stride, ceil_mode, pad", [
    (2, 2, False, 0), (3, 2, True, 0), (3, 1, False, 1), (3, 2, True, 1)])
def test_kernels_over_several_blocks(window, stride, ceil_mode, pad):
    """Blocks of 32 threads: y (2, 3, 4, 3) is 72 outputs, 3 blocks, the last partial
    (3x3/1 pad 1: y (2, 3, 9, 7), 12 blocks; 3x3/2 pad 1 ceil: y (2, 3, 5, 4), 4 blocks);
    dx 378 inputs, 12 blocks. A kernel that took its index from threadIdx alone would
    leave the outputs of every block but the first unwritten (NaN)."""
    with split_on_every_axis():
        check_kernels((2, 3, 9, 7), window, stride, ceil_mode, pad, 7, threads=32)


def test_launchers_reject_bad_arguments():
    x = dev(np.zeros((1, 2, 7, 7)))
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 3\) or \(1, 2, 4, 4\)"):
        pool.forward(x, empty((1, 2, 5, 5)), 2, 2)
    with pytest.raises(ValueError, match="float32"):
        pool.forward(dev(np.zeros((1, 2, 7, 7)), np.float64), empty((1, 2, 3, 3)), 2, 2)
    with pytest.raises(ValueError, match="dimensions"):
        pool.forward(dev(np.zeros((2, 7, 7))), empty((2, 3, 3)), 2, 2)
    with pytest.raises(ValueError, match=r"dx has shape \(1, 2, 7, 6\)"):
        pool.backward(x, dev(np.zeros((1, 2, 3, 3))), empty((1, 2, 7, 6)), 2, 2)
    # padding: y must be the padded size, and pad must stay below the window
    with pytest.raises(ValueError, match=r"y has shape \(1, 2, 5, 5\).*pad 1: expected "
                                         r"\(1, 2, 7, 7\)"):
        pool.forward(x, empty((1, 2, 5, 5)), 3, 1, pad=1)
    with pytest.raises(ValueError, match=r"dy has shape \(1, 2, 3, 3\).*pad 1: expected "
                                         r"\(1, 2, 4, 4\)"):
        pool.backward(x, dev(np.zeros((1, 2, 3, 3))), empty((1, 2, 7, 7)), 3, 2, pad=1)
    with pytest.raises(ValueError, match=r"padding 3 must be in \[0, 3\)"):
        pool.forward(x, empty((1, 2, 9, 9)), 3, 1, pad=3)
    with pytest.raises(ValueError, match="input 1x1 padded by 1 is smaller than the 4x4"):
        pool.forward(dev(np.zeros((1, 2, 1, 1))), empty((1, 2, 1, 1)), 4, 1, pad=1)


def test_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 8))
    for window, stride, ceil_mode in [(2, 2, False), (3, 2, True), (2, 2, True)]:
        want = torch.nn.functional.max_pool2d(torch.from_numpy(x), window, stride,
                                              ceil_mode=ceil_mode).numpy()
        np.testing.assert_allclose(pool.forward_ref(x, window, stride, ceil_mode), want)


@pytest.mark.parametrize("window, stride, pad, ceil_mode", [
    (3, 1, 1, False),  # GoogLeNet's branch
    (3, 2, 1, True),   # 8 -> 5: the last window holds one row
    (2, 2, 1, True),   # 5 -> 3: ceil's window in the right padding dropped
    (3, 2, 0, True),   # no padding, clipped last window
])
def test_matches_torch_with_padding_forward_and_backward(window, stride, pad, ceil_mode):
    """PyTorch pads max-pooling with -inf too. Continuous random x: no ties, so the
    gradient's routing cannot depend on a tie rule."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 8, 5))
    t = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.max_pool2d(t, window, stride, padding=pad, ceil_mode=ceil_mode)
    assert y.shape[2:] == pool.output_size(8, 5, window, stride, ceil_mode, pad)
    dy = rng.standard_normal(tuple(y.shape))
    y.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(pool.forward_ref(x, window, stride, ceil_mode, pad),
                                  y.detach().numpy())
    np.testing.assert_allclose(pool.backward_ref(x, dy, window, stride, ceil_mode, pad=pad),
                               t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_a_one_by_one_window_is_allowed_and_zero_is_not():
    x = np.random.default_rng(3).standard_normal((1, 2, 3, 3)).astype(np.float32)
    y = empty(x.shape)
    pool.forward(dev(x), y, 1, 1)  # the identity
    assert_close(y, x, "1x1 pool")
    for window, stride in [(0, 1), (2, 0)]:
        with pytest.raises(ValueError, match="must be >= 1"):
            pool.forward(dev(x), empty((1, 2, 1, 1)), window, stride)
