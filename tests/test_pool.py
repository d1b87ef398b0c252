"""Max-pool: sizes by hand, a loop oracle, reference against finite differences (away from
ties; ties on their own), kernels against the reference."""
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
    """(x shape, window, stride, ceil_mode), sizes from the window up to 9, odd included."""
    window, stride = draw(configs)
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(window, 9)), draw(st.integers(window, 9))
    return (N, C, H, W), window, stride, draw(st.booleans())


# Edges drawn every run: clipped last windows in ceil mode (7 = 3 + 2*2, +1 row over for
# 2x2/2 on 7), an input exactly one window, the dense 3x3/1.
EDGES = [((1, 1, 7, 8), 2, 2, True), ((1, 1, 6, 7), 3, 2, True), ((2, 3, 2, 2), 2, 2, False),
         ((1, 2, 9, 5), 3, 1, True)]


def edges(test):
    for case in EDGES:
        test = example(case, 0)(test)
    return test


def distinct(rng, shape):
    """A random permutation of 0, 1/n, 2/n, ...: no ties, eps-steps never reorder values,
    and magnitudes below 1 (so the finite differences' rounding stays below tolerance)."""
    n = int(np.prod(shape))
    return rng.permutation(n).reshape(shape).astype(np.float64) / n


def loop_max_pool(x, window, stride, P, Q):
    """The oracle: Python loops over the (clipped) windows."""
    N, C, H, W = x.shape
    y = np.empty((N, C, P, Q))
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    y[n, c, p, q] = max(x[n, c, h, w]
                                        for h in range(p * stride, min(p * stride + window, H))
                                        for w in range(q * stride, min(q * stride + window, W)))
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


def test_output_size_rejects_input_smaller_than_window():
    with pytest.raises(ValueError, match="2x5"):
        pool.output_size(2, 5, 3, 2)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_forward_matches_loop_oracle(ceil_mode):
    x = distinct(np.random.default_rng(0), (2, 2, 7, 6))
    P, Q = pool.output_size(7, 6, 3, 2, ceil_mode)
    np.testing.assert_array_equal(pool.forward_ref(x, 3, 2, ceil_mode),
                                  loop_max_pool(x, 3, 2, P, Q))


@edges
@given(cases(), st.integers(0, 2**32 - 1))
def test_reference_gradient(case, seed):
    shape, window, stride, ceil_mode = case
    rng = np.random.default_rng(seed)
    directional_check(lambda x: pool.forward_ref(x, window, stride, ceil_mode),
                      lambda x, dy: (pool.backward_ref(x, dy, window, stride, ceil_mode),),
                      [distinct(rng, shape)], wrt=[0], rng=rng)


# Ties: the whole gradient goes to the first maximum in row-major order.
TIES = [
    # 2x2/2: two 3s in the first window (the top-right one is first), all 0s in the second
    (np.array([[1, 3, 0, 0], [3, 0, 0, 0]]), 2, 2,
     np.array([[0, 1, 1, 0], [0, 0, 0, 0]])),
    # 3x3/1 on a constant 4x4: every window's first maximum is its top-left pixel
    (np.ones((4, 4)), 3, 1,
     np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])),
]


@pytest.mark.parametrize("x, window, stride, want", TIES)
def test_tie_gradient_goes_to_first_maximum(x, window, stride, want):
    x = x[None, None].astype(np.float64)
    P, Q = pool.output_size(*x.shape[2:], window, stride)
    dx = pool.backward_ref(x, np.ones((1, 1, P, Q)), window, stride)
    np.testing.assert_array_equal(dx[0, 0], want)
    got = empty(x.shape)
    pool.backward(dev(x), dev(np.ones((1, 1, P, Q))), got, window, stride)
    np.testing.assert_array_equal(host(got)[0, 0], want)


def check_kernels(shape, window, stride, ceil_mode, seed, **launch):
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, shape).astype(np.float32)  # few values: ties on purpose
    P, Q = pool.output_size(*shape[2:], window, stride, ceil_mode)
    dy = rng.standard_normal(shape[:2] + (P, Q)).astype(np.float32)
    y = empty(shape[:2] + (P, Q))
    pool.forward(dev(x), y, window, stride, **launch)
    assert_close(y, pool.forward_ref(x, window, stride, ceil_mode), "forward")
    dx = empty(shape)
    pool.backward(dev(x), dev(dy), dx, window, stride, **launch)
    assert_close(dx, pool.backward_ref(x, dy, window, stride, ceil_mode), "backward")


@kernel_settings
@edges
@given(cases(), st.integers(0, 2**32 - 1))
def test_kernels_match_reference(case, seed):
    check_kernels(*case, seed)


@pytest.mark.parametrize("window, stride, ceil_mode", [(2, 2, False), (3, 2, True)])
def test_kernels_over_several_blocks(window, stride, ceil_mode):
    """Blocks of 32 threads: y (2, 3, 4, 3) is 72 outputs, 3 blocks, the last partial; dx
    378 inputs, 12 blocks. A kernel that took its index from threadIdx alone would leave
    the outputs of every block but the first unwritten (NaN)."""
    with split_on_every_axis():
        check_kernels((2, 3, 9, 7), window, stride, ceil_mode, 7, threads=32)


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


def test_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 8))
    for window, stride, ceil_mode in [(2, 2, False), (3, 2, True), (2, 2, True)]:
        want = torch.nn.functional.max_pool2d(torch.from_numpy(x), window, stride,
                                              ceil_mode=ceil_mode).numpy()
        np.testing.assert_allclose(pool.forward_ref(x, window, stride, ceil_mode), want)


def test_a_one_by_one_window_is_allowed_and_zero_is_not():
    x = np.random.default_rng(3).standard_normal((1, 2, 3, 3)).astype(np.float32)
    y = empty(x.shape)
    pool.forward(dev(x), y, 1, 1)  # the identity
    assert_close(y, x, "1x1 pool")
    for window, stride in [(0, 1), (2, 0)]:
        with pytest.raises(ValueError, match="must be >= 1"):
            pool.forward(dev(x), empty((1, 2, 1, 1)), window, stride)
