"""Global average pool: a loop oracle, reference against finite differences, kernels
against the reference (rows shorter and longer than the block, one pixel, odd sizes)."""
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
